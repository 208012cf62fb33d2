"""`sekisho cluster`: Plan GPU placement and render cluster configs."""

from __future__ import annotations

import json
from pathlib import Path

from cluster.config_base import UserError


def _plan(args):
    from cluster import GpuRequests, Inventory, plan_placement

    inventory = Inventory.from_yaml(args.inventory)
    return plan_placement(inventory, GpuRequests.from_yaml(args.requests).requests)


def _part(plan, group) -> str:
    req = plan.request(group.request)
    if req.kind == "train":
        first = sum(len(g.gpus) for g in plan.groups[:plan.groups.index(group)]
                    if g.request == group.request) // req.gpus_per_worker
        last = first + len(group.gpus) // req.gpus_per_worker - 1
        return f"workers {first}-{last}" if last > first else f"worker {first}"
    stage = f" stage {group.stage}" if req.pipeline_parallel > 1 else ""
    return f"replica {group.replica}{stage} (TP {req.tensor_parallel})"


def _gpus(ids) -> str:
    ids = list(ids)
    return f"{ids[0]}-{ids[-1]}" if len(ids) > 1 else str(ids[0])


def cmd_cluster_plan(args) -> int:
    """Assign GPUs to the requests and print a table per node (or --json: the
    placement groups and Ray Train scaling configs)."""
    from rich.console import Console
    from rich.table import Table

    plan = _plan(args)
    if args.json:
        print(json.dumps(plan.ray_objects(), indent=2))
        return 0
    console = Console(width=100)
    for name, groups in plan.by_node().items():
        node = plan.inventory.node(name)
        used = plan.used_gpus(name)
        table = Table(title=f"{name} ({node.address}, {node.role}): {used}/{node.gpus} GPUs "
                            f"used, {node.gpu_memory_gib:g} GiB each", title_justify="left")
        for col in ("GPUs", "request", "kind", "part", "GiB per GPU"):
            table.add_column(col, justify="right" if col.startswith("GiB") else "left")
        for g in groups:
            req = plan.request(g.request)
            table.add_row(_gpus(g.gpus), g.request, req.kind, _part(plan, g),
                          f"{g.memory.total:.1f}")
        if used < node.gpus:
            table.add_row(_gpus(range(used, node.gpus)), "(free)", "", "", "")
        console.print(table)
    total = plan.inventory.total_gpus
    used = sum(plan.used_gpus(n.name) for n in plan.inventory.nodes)
    console.print(f"{used} of {total} GPUs assigned, {total - used} free.")
    return 0


def cmd_cluster_render(args) -> int:
    """Write a `ray up` config (--ray-up FILE) and/or KubeRay manifests (--kuberay DIR)."""
    from cluster import Inventory, write_kuberay, write_ray_up

    if not (args.ray_up or args.kuberay):
        raise UserError("cluster render: say what to write: --ray-up FILE and/or --kuberay DIR.")
    inventory = Inventory.from_yaml(args.inventory)
    if args.ray_up:
        print(f"wrote {write_ray_up(inventory, Path(args.ray_up))}")
    if args.kuberay:
        for path in write_kuberay(inventory, Path(args.kuberay)):
            print(f"wrote {path}")
    return 0


def register(groups) -> None:
    cluster = groups.add_parser("cluster", help="GPU placement and cluster bring-up configs"
                                ).add_subparsers(dest="command", required=True, metavar="COMMAND")
    c = cluster.add_parser("plan", help=cmd_cluster_plan.__doc__)
    c.add_argument("inventory", help="inventory YAML, e.g. configs/cluster/reference.yaml")
    c.add_argument("requests", help="GPU requests YAML (configs/cluster/gpu_requests/)")
    c.add_argument("--json", action="store_true", help="print Ray objects as JSON")
    c.set_defaults(fn=cmd_cluster_plan)
    c = cluster.add_parser("render", help=cmd_cluster_render.__doc__)
    c.add_argument("inventory", help="inventory YAML, e.g. configs/cluster/reference.yaml")
    c.add_argument("--ray-up", metavar="FILE", help="write a `ray up` config (local provider)")
    c.add_argument("--kuberay", metavar="DIR", help="write RayCluster/RayService manifests")
    c.set_defaults(fn=cmd_cluster_render)
