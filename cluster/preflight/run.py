"""Run every check against the connected cluster."""

from __future__ import annotations

import time
import uuid

import ray

from cluster.inventory import Inventory
from cluster.preflight import node_checks as nc
from cluster.preflight.auth import token_auth
from cluster.preflight.bandwidth import all_reduce_bandwidth
from cluster.preflight.probe import clock, forget, on_node, probe, read_marks
from cluster.preflight.result import CheckResult


def _alive() -> dict[str, str]:
    return {n["NodeManagerAddress"]: n["NodeID"] for n in ray.nodes() if n["Alive"]}


def _clock_offsets(alive: dict[str, str]) -> dict[str, tuple[float, float]]:
    """Node clock minus this host's, from the midpoint of a round trip; the best
    of three round trips (the one with the least uncertainty)."""
    out = {}
    for ip, nid in alive.items():
        task = on_node(clock, nid)
        samples = []
        for _ in range(3):
            t0 = time.time()
            remote = ray.get(task.remote(), timeout=60)
            t1 = time.time()
            samples.append((remote - (t0 + t1) / 2, (t1 - t0) / 2))
        out[ip] = min(samples, key=lambda s: s[1])
    return out


def run_doctor(
    inventory: Inventory,
    gcs_address: str,
    dashboard_url: str | None,
    egress: bool = False,
    min_free_gib: float = 50.0,
) -> list[CheckResult]:
    """Every check, in the order of the report. Call from a connected driver."""
    alive = _alive()
    ours = {ip: nid for ip, nid in alive.items() if ip in {n.address for n in inventory.nodes}}
    results = [nc.nodes_joined(inventory, alive)]
    mark = uuid.uuid4().hex[:12]
    shared = str(inventory.shared_storage.path) if inventory.shared_storage else None
    probes = dict(
        zip(ours, ray.get([on_node(probe, nid).remote(shared, mark) for nid in ours.values()], timeout=300))
    )
    files = [p["storage_file"] for p in probes.values() if p["storage_file"]]
    seen = dict(
        zip(ours, ray.get([on_node(read_marks, nid).remote(files) for nid in ours.values()], timeout=120))
    )
    ray.get(
        [
            on_node(forget, nid).remote(p["storage_file"])
            for nid, p in zip(ours.values(), probes.values())
            if p["storage_file"]
        ],
        timeout=120,
    )
    results += [
        nc.driver_versions(probes),
        nc.gpus_vs_inventory(inventory, probes),
        nc.infiniband(inventory, probes),
        all_reduce_bandwidth(inventory, ours),
        nc.shared_storage(inventory, probes, seen),
        nc.clock_skew(_clock_offsets(ours)),
        nc.free_disk(probes, min_free_gib),
        token_auth(gcs_address, dashboard_url),
    ]
    if egress:
        from cluster.preflight.egress import egress as egress_check

        results.append(egress_check(ours))
    return results
