"""`ray up` config for bare metal, through Ray's on-prem `local` node provider.

The local provider runs the same start command on every worker, so each node's
own settings (address, HCAs, GPUs, its Ray label and resource) are chosen inside
that command by the host's own address. The token file is copied by
`file_mounts` and made 0600 before Ray starts; it never appears in the YAML.
Before `ray start`, the node's Python finds the egress hook (cluster/egress_hook,
see `cluster.node_env`) in the node's own Sekisho install; a node without one
refuses to start.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import yaml

from cluster.inventory import NODE_LABEL_KEY, Inventory, Node
from cluster.node_env import node_env

REMOTE_TOKEN = "~/.sekisho/ray/auth_token"
# Exported with double quotes so the node's shell expands them.
REMOTE_ENV = {
    "RAY_AUTH_TOKEN_PATH": '"$HOME/.sekisho/ray/auth_token"',
    "PYTHONPATH": '"$SEKISHO_HOOK${PYTHONPATH:+:$PYTHONPATH}"',
}
REMOTE_HOOK = "$SEKISHO_HOOK"
# Prints the hook folder of the `cluster` package this Python imports (without
# importing it); fails where there is none (or another package named `cluster`).
_FIND_HOOK = (
    'import importlib.util as u, os, sys; s = u.find_spec("cluster"); '
    'd = s and s.submodule_search_locations and '
    'os.path.join(s.submodule_search_locations[0], "egress_hook"); '
    'ok = d and os.path.isfile(os.path.join(d, "sitecustomize.py")); '
    'print(d) if ok else sys.exit(1)'
)


def _ray(inventory: Inventory) -> str:
    env = inventory.ray.python_env
    return shlex.quote(str(env / "bin" / "ray")) if env else "ray"


def _python(inventory: Inventory) -> str:
    env = inventory.ray.python_env
    return shlex.quote(str(env / "bin" / "python")) if env else "python3"


def _find_hook(inventory: Inventory) -> str:
    where = inventory.ray.python_env or "the Python on PATH"
    return (
        f"SEKISHO_HOOK=$({_python(inventory)} -c {shlex.quote(_FIND_HOOK)}) || "
        f"{{ echo \"sekisho: no Sekisho install (cluster/egress_hook) in {where} on "
        f"$(hostname)\" >&2; exit 1; }}"
    )


def _exports(env: dict[str, str]) -> str:
    parts = [f"{k}={REMOTE_ENV[k] if k in REMOTE_ENV else shlex.quote(v)}" for k, v in env.items()]
    return "export " + " ".join(parts)


def _start_flags(inventory: Inventory, node: Node) -> list[str]:
    resources = json.dumps({node.ray_resource: 1})
    return [
        f"--node-ip-address={node.address}",
        f"--num-gpus={node.gpus}",
        f"--num-cpus={node.cpus}",
        f"--resources={shlex.quote(resources)}",
        f"--labels={NODE_LABEL_KEY}={node.name}",
        "--disable-usage-stats",
    ]


def head_start_command(inventory: Inventory) -> str:
    """`ray start --head` with the dashboard bound to the head's internal address."""
    head, r = inventory.head, inventory.ray
    flags = [
        "--head",
        f"--port={r.gcs_port}",
        "--include-dashboard=true",
        f"--dashboard-host={head.address}",
        f"--dashboard-port={r.dashboard_port}",
        *_start_flags(inventory, head),
        "--autoscaling-config=~/ray_bootstrap_config.yaml",
    ]
    return (
        f"{_find_hook(inventory)}\n{_exports(node_env(inventory, head, REMOTE_TOKEN, REMOTE_HOOK))}\n"
        f"ulimit -n 65536; {_ray(inventory)} start {' '.join(flags)}"
    )


def worker_start_command(inventory: Inventory) -> str:
    """One shell command for every worker: a `case` on the host's addresses picks
    the node's environment and `ray start` flags; an unknown host refuses to start."""
    lines = [_find_hook(inventory), 'case " $(hostname -I) " in']
    for node in inventory.workers:
        flags = [f"--address=$RAY_HEAD_IP:{inventory.ray.gcs_port}", *_start_flags(inventory, node)]
        lines += [
            f'  *" {node.address} "*)',
            f"    {_exports(node_env(inventory, node, REMOTE_TOKEN, REMOTE_HOOK))}",
            f"    ulimit -n 65536; {_ray(inventory)} start {' '.join(flags)} ;;",
        ]
    unknown = f"no node of inventory {inventory.name} has an address of this host"
    lines += [f'  *) echo "sekisho: {unknown} ($(hostname -I))" >&2; exit 1 ;;', "esac"]
    return "\n".join(lines)


def render_ray_up(inventory: Inventory) -> dict[str, Any]:
    """The `ray up` cluster config for the inventory.

    Returns:
        A dict that validates against Ray's `ray/autoscaler/ray-schema.json`.
    """
    r = inventory.ray
    token_local = str(r.auth_token_file.expanduser())
    check = (
        f"mkdir -p ~/.sekisho/ray && chmod 700 ~/.sekisho/ray && chmod 600 {REMOTE_TOKEN}"
        f" && test -s {REMOTE_TOKEN}"
    )
    if inventory.shared_storage is not None:
        shared = shlex.quote(str(inventory.shared_storage.path))
        home = shlex.quote(str(inventory.shared_storage.home_dir))
        check += (
            f" && (test -w {shared} || (echo 'sekisho: shared storage {shared} is not "
            f"mounted or not writable on' $(hostname) >&2; exit 1))"
            f" && mkdir -p -m 700 {home}"
        )
    return {
        "cluster_name": inventory.name,
        "provider": {
            "type": "local",
            "head_ip": inventory.head.address,
            "worker_ips": [n.address for n in inventory.workers],
        },
        "auth": {"ssh_user": r.ssh_user, "ssh_private_key": str(r.ssh_private_key)},
        "max_workers": len(inventory.workers),
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        "file_mounts": {REMOTE_TOKEN: token_local},
        "cluster_synced_files": [],
        "initialization_commands": [],
        "setup_commands": [check],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [f"{_ray(inventory)} stop", head_start_command(inventory)],
        "worker_start_ray_commands": [f"{_ray(inventory)} stop", worker_start_command(inventory)],
    }


def write_ray_up(inventory: Inventory, out: Path) -> Path:
    """Write the `ray up` YAML (with a header naming its source) to `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    header = (
        f"# Generated by: sekisho cluster render --ray-up {out}\n"
        f"# From inventory {inventory.name}; start with: ray up {out}\n"
    )
    if inventory.shared_storage is not None:
        home = inventory.shared_storage.home_dir
        header += (
            f"# Every node's Ray processes run with SEKISHO_HOME={home}; run `sekisho` commands\n"
            f"# (serve up, train run, models import) with the same: export SEKISHO_HOME={home}\n"
        )
    out.write_text(
        header + yaml.safe_dump(render_ray_up(inventory), sort_keys=False, width=1000), encoding="utf-8"
    )
    return out
