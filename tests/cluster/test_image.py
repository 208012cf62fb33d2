"""The container image of the KubeRay manifests (Dockerfile, repository root):
it installs from the offline bundle only; its install steps, run for real on a
small bundle in a network namespace with only loopback, install it; its paths
are where Sekisho's install puts things; the rendered manifests and their README
point at it; and the pods' health probe needs nothing the image lacks."""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest
import yaml

from cluster import Inventory, render_kuberay, write_kuberay
from cluster.egress import HOOK_DIR
from cluster.kuberay import IMAGE_ANNOTATION, health_command

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
BUNDLE_IN_IMAGE = "/opt/sekisho-bundle"
VENV_IN_IMAGE = "/opt/sekisho/venv"
CACHE = REPO / ".venv" / "bundle-cache"  # `make install` fills it (see tests/airlock/test_bundle.py)
NETWORK = re.compile(r"\b(apt|apt-get|apk|dnf|yum|curl|wget|git|conda|uv|pipx|easy_install)\b|https?://")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), " ".join(rest.split())))
        pending = ""
    return out


@pytest.fixture(scope="module")
def steps() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE)


@pytest.fixture(scope="module")
def inventory() -> Inventory:
    return Inventory.from_yaml(REPO / "configs" / "cluster" / "reference.yaml")


def test_the_image_installs_from_the_bundle_and_nothing_else(steps):
    runs = [args for op, args in steps if op == "RUN"]
    assert runs and not [r for r in runs if NETWORK.search(r)], runs
    assert not [a for op, a in steps if op == "ADD"], "ADD may fetch URLs; the image COPYs the bundle"
    installs = [r for r in runs if re.search(r"\bpip\b.*\binstall\b", r)]
    assert len(installs) == 1 and "pip download" not in " ".join(runs)
    (install,) = installs
    for flag in ("--no-index", f"--find-links {BUNDLE_IN_IMAGE}/wheels", "--no-deps", "--require-hashes"):
        assert flag in install, install
    assert f"-r {BUNDLE_IN_IMAGE}/requirements.lock" in install
    env = " ".join(a for op, a in steps if op == "ENV")
    assert "PIP_CONFIG_FILE=/dev/null" in env and "PIP_NO_INDEX=1" in env  # no pip.conf index either
    # The bundle is the build context; it is checked before anything is installed from it.
    assert ("COPY", f". {BUNDLE_IN_IMAGE}") in steps
    assert runs.index("sha256sum --check --quiet SHA256SUMS") < runs.index(install)
    # Every FROM is the internal registry's base (an ARG), never a public image name.
    base = next(a for op, a in steps if op == "ARG" and a.startswith("BASE="))
    assert base.startswith("BASE=registry.internal")
    assert all(a.startswith("${BASE}") for op, a in steps if op == "FROM")


def test_the_images_paths_are_where_sekisho_installs(steps):
    """Python 3.11 (pyproject's), the egress hook on PYTHONPATH where the wheel puts it."""
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.11,<3.12"
    env = " ".join(a for op, a in steps if op == "ENV")
    site = f"{VENV_IN_IMAGE}/lib/python3.11/site-packages"
    hook = Path(site) / HOOK_DIR.relative_to(REPO)
    assert f"PYTHONPATH={hook}" in env and (HOOK_DIR / "sitecustomize.py").is_file()
    assert f"PATH={VENV_IN_IMAGE}/bin:$PATH" in env
    assert any(f"test -f {hook}/sitecustomize.py" in a for op, a in steps if op == "RUN")


def sekisho(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sekisho.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )


def test_the_install_steps_install_a_bundle_with_only_loopback(steps, tmp_path):
    """The build stage's RUN steps (bundle check, venv, pip install), as the image
    build runs them, on a bundle of three small wheels, in a network namespace with
    only loopback: they install it, and the installed packages import."""
    if not (shutil.which("unshare") and shutil.which("ip") and shutil.which("sha256sum")):
        pytest.skip("unshare, ip and sha256sum are needed")
    pins = re.findall(r"(?mi)^((?:six|idna|packaging)==\S+)$", (REPO / "constraints.txt").read_text())
    (tmp_path / "reqs.txt").write_text("".join(f"{p}\n" for p in pins))
    bundle, venv = tmp_path / "bundle", tmp_path / "venv"
    done = sekisho(
        "bundle", "build", "--cpu", "--out", bundle, "--find-links", CACHE,
        "--requirements", tmp_path / "reqs.txt", "--no-project",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    constraints = json.loads((bundle / "manifest.json").read_text())["constraints"]
    assert constraints["file"] == "constraints.txt"  # --cpu: the CPU build's pins
    build_stage = steps[: next(i for i, (op, _) in enumerate(steps) if op == "FROM" and i > 1)]
    env = {
        k: v for op, a in build_stage if op == "ENV" for k, v in (kv.split("=", 1) for kv in shlex.split(a))
    }
    assert env["PIP_NO_INDEX"] == "1"
    script = [a for op, a in build_stage if op == "RUN" and "bundle verify" not in a]
    # The venv without its own pip (ensurepip costs seconds): this pip installs into it.
    script = [
        r.replace(f"{VENV_IN_IMAGE}/bin/pip ", f"{sys.executable} -m pip --python {venv}/bin/python ")
        .replace("python3.11 -m venv ", f"{sys.executable} -m venv --without-pip ")
        .replace(BUNDLE_IN_IMAGE, str(bundle)).replace(VENV_IN_IMAGE, str(venv))
        for r in script
    ]  # fmt: skip
    flags = "-n" if os.getuid() == 0 else "-rn"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k != "PYTHONPATH"}
    for run in script:
        done = subprocess.run(
            ["unshare", flags, "--", "sh", "-c", f"ip link set lo up && {run}"],
            cwd=bundle,
            env={**base_env, **env},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, run + "\n" + done.stdout + done.stderr
    probe = "import json, idna, packaging, six; print(json.dumps([six.__file__, idna.__file__]))"
    done = subprocess.run([venv / "bin" / "python", "-c", probe], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert all(Path(f).is_relative_to(venv) for f in json.loads(done.stdout))


def test_the_kuberay_render_points_at_the_dockerfile(inventory, tmp_path):
    image = inventory.kubernetes.image
    header = DOCKERFILE.read_text().split("\nARG ")[0]
    assert f"-t {image} " in header  # the reference inventory's image is what it builds
    for manifest in render_kuberay(inventory).values():
        assert "Dockerfile" in manifest["metadata"]["annotations"][IMAGE_ANNOTATION]
        spec = manifest["spec"].get("rayClusterConfig", manifest["spec"])
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            assert group["template"]["spec"]["containers"][0]["image"] == image
    write_kuberay(inventory, tmp_path)
    readme = (tmp_path / "README.txt").read_text()
    assert f"docker build --network=none -f Dockerfile -t {image} BUNDLE" in readme
    assert "cluster/egress_hook folder first on PYTHONPATH" in readme
    written = yaml.safe_load((tmp_path / "raycluster.yaml").read_text())
    assert written["metadata"]["annotations"][IMAGE_ANNOTATION].startswith(image)


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(200 if self.path.endswith("/ok") else 503)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_the_pods_health_probe_needs_only_python(inventory):
    """The probe (exec, no shell, no wget or curl) passes when every URL answers 2xx
    and fails when one does not, run as the kubelet would run it."""
    pod = render_kuberay(inventory)["raycluster.yaml"]["spec"]["headGroupSpec"]["template"]["spec"]
    command = pod["containers"][0]["readinessProbe"]["exec"]["command"]
    assert command[0] == "python3" and len(command) == 5  # the raylet's and the GCS's health URLs
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        ok = subprocess.run(health_command([f"{base}/ok", f"{base}/ok"]), capture_output=True, timeout=30)
        bad = subprocess.run(health_command([f"{base}/ok", f"{base}/down"]), capture_output=True, timeout=30)
    finally:
        server.shutdown()
    assert ok.returncode == 0, ok.stderr
    assert bad.returncode != 0 and b"503" in bad.stderr
