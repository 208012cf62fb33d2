"""`sekisho cluster`: plan GPU placement, render cluster configs, bring the cluster
up and down, show its state and check it (doctor)."""

from __future__ import annotations

import json
from pathlib import Path

from foundation import UserError
from sekisho.cli_common import add_command, command_group


def _plan(args):
    from cluster import GpuRequests, Inventory, plan_placement

    inventory = Inventory.from_yaml(args.inventory)
    return plan_placement(inventory, GpuRequests.from_yaml(args.requests).requests)


def _part(plan, group) -> str:
    req = plan.request(group.request)
    if req.kind == "train":
        first = (
            sum(len(g.gpus) for g in plan.groups[: plan.groups.index(group)] if g.request == group.request)
            // req.gpus_per_worker
        )
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
        table = Table(
            title=f"{name} ({node.address}, {node.role}): {used}/{node.gpus} GPUs "
            f"used, {node.gpu_memory_gib:g} GiB each",
            title_justify="left",
        )
        for col in ("GPUs", "request", "kind", "part", "GiB per GPU"):
            table.add_column(col, justify="right" if col.startswith("GiB") else "left")
        for g in groups:
            req = plan.request(g.request)
            table.add_row(_gpus(g.gpus), g.request, req.kind, _part(plan, g), f"{g.memory.total:.1f}")
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


def _inventory(path):
    from cluster import Inventory

    return Inventory.from_yaml(path) if path else None


def _bringup(args, action) -> int:
    import subprocess

    from cluster.bringup import prepare, ray_command
    from sekisho.cli_common import home_from_args

    inventory = _inventory(args.inventory)
    home = home_from_args(args)
    config = prepare(inventory, home)
    command = ray_command(action, config)
    print(f"config: {config}")
    if action == "up":
        from cluster.scrape_config import write_scrape_config

        print(f"prometheus scrape config: {write_scrape_config(inventory, home)}")
    print(f"command: {' '.join(command)}")
    if args.dry_run:
        return 0
    return subprocess.run(command).returncode


def cmd_cluster_up(args) -> int:
    """Start the cluster on the inventory's machines (`ray up`, local node
    provider); creates the Ray token (0600) that every node receives."""
    return _bringup(args, "up")


def cmd_cluster_down(args) -> int:
    """Stop Ray on every machine of the inventory (`ray down`)."""
    return _bringup(args, "down")


def _connect(args):
    from cluster.connect import connect, target
    from sekisho.cli_common import home_from_args

    t = target(
        _inventory(args.inventory),
        args.address,
        Path(args.token_file) if args.token_file else None,
        home_from_args(args),
    )
    return t, connect(t)


def _count(x: float) -> str:
    return f"{x:g}"


def cmd_cluster_status(args) -> int:
    """Show a running cluster: nodes (GPUs and CPUs total/used), Serve apps and
    their replicas, running jobs."""
    from rich.console import Console
    from rich.table import Table

    from cluster.status import collect

    t, info = _connect(args)
    st = collect(info["dashboard_url"])
    console = Console(width=110)
    alive = sum(n.alive for n in st.nodes)
    table = Table(
        title=f"Ray cluster at {t.address}: {alive}/{len(st.nodes)} nodes alive, "
        f"dashboard {info['dashboard_url'] or '(none)'}",
        title_justify="left",
    )
    for col in ("node", "address", "alive", "GPUs used/total", "CPUs used/total"):
        table.add_column(col)
    for n in st.nodes:
        table.add_row(
            n.name + (" (head)" if n.head else ""),
            n.address,
            "yes" if n.alive else "NO",
            f"{_count(n.gpus_used)}/{_count(n.gpus_total)}",
            f"{_count(n.cpus_used)}/{_count(n.cpus_total)}",
        )
    console.print(table)
    table = Table(title=f"Serve: {len(st.apps)} apps", title_justify="left")
    for col in ("app", "app status", "deployment", "status", "replicas"):
        table.add_column(col)
    for d in st.deployments:
        replicas = ", ".join(f"{v} {k}" for k, v in sorted(d.replicas.items())) or "0"
        table.add_row(d.app, st.apps[d.app], d.name, d.status, replicas)
    console.print(table)
    table = Table(title=f"Running jobs: {len(st.jobs)}", title_justify="left")
    for col in ("job", "type", "status", "entrypoint"):
        table.add_column(col)
    for j in st.jobs:
        table.add_row(j.job, j.kind.lower(), j.status, j.entrypoint)
    console.print(table)
    return 0


def cmd_cluster_doctor(args) -> int:
    """Check a running cluster against its inventory: drivers, GPUs, InfiniBand,
    all-reduce bandwidth, shared storage, clock skew, disk, token auth (and with
    --egress: zero egress). Exit 1 when a check fails."""
    from rich.console import Console
    from rich.table import Table

    from cluster.preflight import run_doctor

    if not args.inventory:
        raise UserError("cluster doctor: give the inventory YAML: the checks compare the cluster with it.")
    t, info = _connect(args)
    results = run_doctor(
        t.inventory, t.address, info["dashboard_url"], egress=args.egress, min_free_gib=args.min_free_gib
    )
    console = Console(width=120)
    table = Table(title=f"sekisho cluster doctor: {t.inventory.name} at {t.address}", title_justify="left")
    for col in ("check", "result", "details"):
        table.add_column(col)
    for r in results:
        detail = r.detail + (f"\nremedy: {r.remedy}" if r.remedy else "")
        table.add_row(r.check, r.outcome.upper() if r.outcome == "fail" else r.outcome, detail)
    console.print(table)
    counts = {o: sum(r.outcome == o for r in results) for o in ("pass", "fail", "skip")}
    console.print(f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped.")
    return 1 if counts["fail"] else 0


def _connection_args(c) -> None:
    c.add_argument(
        "inventory", nargs="?", help="inventory YAML (the head's address and the token file come from it)"
    )
    c.add_argument("--address", help="GCS address HOST:PORT instead of the inventory's head")
    c.add_argument(
        "--token-file",
        help="Ray token file (default: the inventory's "
        "ray.auth_token_file, else $RAY_AUTH_TOKEN_PATH, else the Sekisho home's)",
    )


def register(groups) -> None:
    cluster = command_group(groups, "cluster", "GPU placement and cluster bring-up configs")
    c = add_command(cluster, "plan", cmd_cluster_plan)
    c.add_argument("inventory", help="inventory YAML, e.g. configs/cluster/reference.yaml")
    c.add_argument("requests", help="GPU requests YAML (configs/cluster/gpu_requests/)")
    c.add_argument("--json", action="store_true", help="print Ray objects as JSON")
    c = add_command(cluster, "render", cmd_cluster_render)
    c.add_argument("inventory", help="inventory YAML, e.g. configs/cluster/reference.yaml")
    c.add_argument("--ray-up", metavar="FILE", help="write a `ray up` config (local provider)")
    c.add_argument("--kuberay", metavar="DIR", help="write RayCluster/RayService manifests")
    for name, fn in (("up", cmd_cluster_up), ("down", cmd_cluster_down)):
        c = add_command(cluster, name, fn)
        c.add_argument("inventory", help="inventory YAML, e.g. configs/cluster/reference.yaml")
        c.add_argument(
            "--dry-run",
            action="store_true",
            help="write the `ray up` config and print it and the command, without running it",
        )
    c = add_command(cluster, "status", cmd_cluster_status)
    _connection_args(c)
    c = add_command(cluster, "doctor", cmd_cluster_doctor)
    _connection_args(c)
    c.add_argument(
        "--egress",
        action="store_true",
        help="also prove zero egress: a small workload on every node with the egress recorder on",
    )
    c.add_argument(
        "--min-free-gib",
        type=float,
        default=50.0,
        help="free disk each node needs on the shared storage and its temp dir (default 50)",
    )
