"""Checks on what each node reported (`probe.probe`): nodes joined, driver and
CUDA versions, GPUs against the inventory, InfiniBand ports, shared storage,
clock skew, free disk."""

from __future__ import annotations

from cluster.inventory import Inventory
from cluster.preflight.result import CheckResult, failed, passed, skipped


def nodes_joined(inventory: Inventory, alive: dict[str, str]) -> CheckResult:
    """`alive`: address -> Ray node id of the live nodes."""
    missing = [f"{n.name} ({n.address})" for n in inventory.nodes if n.address not in alive]
    extra = sorted(set(alive) - {n.address for n in inventory.nodes})
    if missing:
        return failed(
            "nodes",
            f"not in the cluster: {', '.join(missing)}",
            "start Ray there (`sekisho cluster up`) or fix its address in the inventory",
        )
    return passed(
        "nodes",
        f"{len(inventory.nodes)}/{len(inventory.nodes)} inventory nodes alive"
        + (f"; also {', '.join(extra)} (not in the inventory)" if extra else ""),
    )


def driver_versions(probes: dict[str, dict]) -> CheckResult:
    name = "driver and CUDA versions"
    with_driver = {ip: p["nvidia"] for ip, p in probes.items() if p["nvidia"]["driver"]}
    if not with_driver:
        return skipped(name, "no NVIDIA driver (nvidia-smi) on any node: a CPU machine")
    versions = {ip: (",".join(nv["driver"]), nv.get("cuda")) for ip, nv in probes_or_none(probes).items()}
    distinct = set(versions.values())
    if len(distinct) > 1:
        listing = "; ".join(
            f"{ip}: driver {d or 'none'}, CUDA {c or 'none'}" for ip, (d, c) in sorted(versions.items())
        )
        return failed(
            name, f"differ across nodes: {listing}", "install the same NVIDIA driver (and CUDA) on every node"
        )
    driver, cuda = distinct.pop()
    return passed(name, f"driver {driver}, CUDA {cuda} on all {len(versions)} nodes")


def probes_or_none(probes: dict[str, dict]) -> dict[str, dict]:
    return {
        ip: (p["nvidia"] if p["nvidia"]["driver"] else {"driver": [], "cuda": None})
        for ip, p in probes.items()
    }


def gpus_vs_inventory(inventory: Inventory, probes: dict[str, dict]) -> CheckResult:
    name = "GPUs vs inventory"
    if not any(p["nvidia"]["driver"] for p in probes.values()):
        declared = inventory.total_gpus
        return skipped(
            name,
            "no NVIDIA driver on any node, so no GPU to count"
            + (f" ({declared} GPUs declared to Ray only)" if declared else ""),
        )
    wrong = []
    for node in inventory.nodes:
        gpus = probes.get(node.address, {}).get("nvidia", {}).get("gpus") or []
        small = [g for g in gpus if g["memory_mib"] / 1024 < node.gpu_memory_gib * 0.95]
        if len(gpus) != node.gpus:
            wrong.append(f"{node.name}: {len(gpus)} GPUs, inventory says {node.gpus}")
        elif small:
            wrong.append(
                f"{node.name}: {small[0]['name']} has {small[0]['memory_mib'] / 1024:.0f}"
                f" GiB, inventory says {node.gpu_memory_gib:g}"
            )
    if wrong:
        return failed(
            name,
            "; ".join(wrong),
            "fix the inventory, or the node (a GPU fallen off the bus shows in `nvidia-smi -L` and dmesg)",
        )
    return passed(name, f"{inventory.total_gpus} GPUs on {len(inventory.nodes)} nodes as declared")


def infiniband(inventory: Inventory, probes: dict[str, dict]) -> CheckResult:
    name = "InfiniBand ports"
    if all(p["ib"] is None for p in probes.values()):
        return skipped(name, "no /sys/class/infiniband on any node")
    bad = []
    for node in inventory.nodes:
        states = probes.get(node.address, {}).get("ib") or {}
        for hca in node.ib_hcas:
            ports = {k: v for k, v in states.items() if k.split("/")[0] == hca}
            if not ports:
                bad.append(f"{node.name}: {hca} missing")
            bad += [
                f"{node.name}: {port} {state}"
                for port, state in sorted(ports.items())
                if "ACTIVE" not in state
            ]
    if bad:
        return failed(
            name,
            "; ".join(bad),
            "check cables and the subnet manager (`ibstat`), or remove the HCA from the node's ib_hcas",
        )
    count = sum(len(n.ib_hcas) for n in inventory.nodes)
    return passed(name, f"all ports of {count} HCAs ACTIVE")


def shared_storage(
    inventory: Inventory, probes: dict[str, dict], seen: dict[str, dict[str, str | None]]
) -> CheckResult:
    """`seen`: node address -> (mark file -> content as that node read it)."""
    name = "shared storage"
    if inventory.shared_storage is None:
        return skipped(name, "none in the inventory (a single node keeps its state in its own home)")
    path = str(inventory.shared_storage.path)
    bad = [f"{ip}: {p['storage_error']}" for ip, p in probes.items() if p["storage_error"]]
    for ip, marks in seen.items():
        bad += [
            f"{ip} does not see {f.rsplit('/', 1)[-1]}"
            for f, v in marks.items()
            if v is None and not probes[ip]["storage_error"]
        ]
    if bad:
        return failed(
            name,
            f"{path}: " + "; ".join(bad),
            f"mount the shared file server at {path} on every node, writable by the user Ray runs as",
        )
    return passed(name, f"{path} writable on {len(probes)} nodes, each sees the others' files")


def clock_skew(offsets: dict[str, tuple[float, float]], limit_s: float = 0.5) -> CheckResult:
    """`offsets`: address -> (node clock minus driver clock, uncertainty), seconds."""
    name = "clock skew"
    ip, (worst, error) = max(offsets.items(), key=lambda kv: abs(kv[1][0]))
    detail = f"largest {abs(worst) * 1000:.1f} ms ({ip}, +/- {error * 1000:.1f} ms)"
    if abs(worst) - error > limit_s:
        return failed(
            name,
            detail + f", over {limit_s * 1000:.0f} ms",
            "run chrony (or ntpd) on every node against the internal time server",
        )
    return passed(name, detail)


def free_disk(probes: dict[str, dict], min_free_gib: float) -> CheckResult:
    name = "free disk"
    low, least = [], None
    for ip, p in probes.items():
        for path, free in p["free_gib"].items():
            if free is None:
                continue
            if least is None or free < least[2]:
                least = (ip, path, free)
            if free < min_free_gib:
                low.append(f"{ip}:{path} {free:.1f} GiB")
    if low:
        return failed(
            name,
            f"under {min_free_gib:g} GiB free: {', '.join(low)}",
            "free space (old checkpoints, /tmp/ray session logs) or grow the volume",
        )
    if least is None:
        return skipped(name, "no node could read its disk usage")
    return passed(
        name, f"least free: {least[2]:.1f} GiB ({least[0]}:{least[1]}); minimum {min_free_gib:g} GiB"
    )
