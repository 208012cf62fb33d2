"""All-reduce bus bandwidth between nodes, measured the way the cluster's jobs run:
one torch.distributed rank per GPU (each holding its GPU), NCCL where every rank
has CUDA, else Gloo (one rank per GPU-less node, two on a single-node cluster).

The target is per NIC. With a rank per GPU, NCCL drives every GPU's nearest
InfiniBand port, so the bus bandwidth grows with the ports a node brings; the
ring is as fast as the node with the fewest in use (min of its HCAs and its
ranks). A DGX H100 (8 GPUs, 8 x 400 Gb/s) measures about 8 x 45 GB/s; one rank
per node would use one port and could never reach the sum of eight.
"""

from __future__ import annotations

import socket
import time
from collections import Counter
from dataclasses import dataclass

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from cluster.inventory import Inventory
from cluster.preflight.result import CheckResult, failed, passed, skipped

NAME = "all-reduce bus bandwidth"
NDR_GB_S = 50.0  # one 400 Gb/s InfiniBand NDR port, in GB/s
TARGET_FRACTION = 0.6  # NCCL bus bandwidth over IB reaches 80-90% of the links
PER_NIC_TARGET_GB_S = TARGET_FRACTION * NDR_GB_S
# NCCL needs large messages to fill eight ports (nccl-tests peak past 1 GiB); Gloo
# on CPU is only checked to work.
NCCL_BYTES, GLOO_BYTES = 1 << 30, 64 << 20


@dataclass(frozen=True)
class RankPlan:
    """Where the all-reduce's ranks run, and the links it crosses."""

    node_ids: list[str]  # one entry per rank, a node's ranks together
    gpu_per_rank: bool  # each rank holds one GPU of its node (Ray's num_gpus=1)
    hosts: int
    nics: int  # InfiniBand ports per node the ring runs over: the fewest any node uses (0: none)

    def describe(self) -> str:
        per_node = sorted(Counter(self.node_ids).values(), reverse=True)
        shape = f"{per_node[0]}" if len(set(per_node)) == 1 else "/".join(map(str, per_node))
        return f"{len(self.node_ids)} ranks on {self.hosts} node{'s' if self.hosts > 1 else ''} ({shape} per node)"


def plan_ranks(inventory: Inventory, alive: dict[str, str]) -> RankPlan:
    """As many ranks on each live inventory node as it has GPUs (one on a node
    without); two CPU ranks (Gloo) on a single node of one GPU or none, so there is
    something to reduce.

    Args:
        alive: node address -> Ray node ID, for the live nodes.
    """
    nodes = [n for n in inventory.nodes if n.address in alive]
    node_ids = [alive[n.address] for n in nodes for _ in range(max(n.gpus, 1))]
    gpu = len(node_ids) > 1 and all(n.gpus for n in nodes)
    if len(node_ids) == 1:
        node_ids *= 2
    nics = min((min(len(n.ib_hcas), max(n.gpus, 1)) for n in nodes), default=0)
    return RankPlan(node_ids, gpu, len(nodes), nics)


def judge(busbw_gb_s: float, backend: str, plan: RankPlan, nbytes: int) -> CheckResult:
    """Pass or fail a measured bus bandwidth against the per-NIC target."""
    detail = f"{busbw_gb_s:.2f} GB/s ({backend}, {plan.describe()}, {nbytes >> 20} MiB)"
    why = (
        "Gloo on CPU"
        if backend != "nccl"
        else "one node"
        if plan.hosts < 2
        else "no InfiniBand HCAs in the inventory"
        if not plan.nics
        else None
    )
    if why:
        return passed(NAME, detail + f"; no link target ({why})")
    per_nic = busbw_gb_s / plan.nics
    ports = f"{plan.nics} NIC{'s' if plan.nics > 1 else ''} per node"
    measured = f"{detail}: {per_nic:.1f} GB/s per NIC over {ports}"
    if per_nic < PER_NIC_TARGET_GB_S:
        return failed(
            NAME,
            measured + f", under {PER_NIC_TARGET_GB_S:.0f} GB/s ({TARGET_FRACTION:.0%} of 400 Gb/s)",
            "check that NCCL uses InfiniBand (NCCL_DEBUG=INFO shows NET/IB on every port), "
            "NCCL_IB_HCA, GPUDirect RDMA (nvidia-peermem), and the ports' rate (`ibstat`)",
        )
    return passed(NAME, measured + f"; target {PER_NIC_TARGET_GB_S:.0f} GB/s per NIC")


@ray.remote(num_cpus=0, max_restarts=0)
class Rank:
    def rendezvous(self) -> tuple[str, int, bool]:
        import torch

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port, torch.cuda.is_available()

    def all_reduce(self, master: str, rank: int, world: int, backend: str, nbytes: int, iters: int) -> float:
        """Seconds per all-reduce of `nbytes` (after one warm-up)."""
        import torch
        import torch.distributed as dist

        dist.init_process_group(backend, init_method=f"tcp://{master}", rank=rank, world_size=world)
        device = "cuda" if backend == "nccl" else "cpu"  # the one GPU Ray gave this rank
        x = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
        dist.all_reduce(x)
        if device == "cuda":
            torch.cuda.synchronize()
        dist.barrier()
        start = time.perf_counter()
        for _ in range(iters):
            dist.all_reduce(x)
        if device == "cuda":
            torch.cuda.synchronize()
        took = (time.perf_counter() - start) / iters
        dist.destroy_process_group()
        return took


def all_reduce_bandwidth(inventory: Inventory, alive: dict[str, str], iters: int = 10) -> CheckResult:
    """Bus bandwidth as nccl-tests defines it: size x 2(n-1)/n / time."""
    plan = plan_ranks(inventory, alive)
    if not plan.node_ids:
        return skipped(NAME, "no inventory node is alive")
    ranks = [
        Rank.options(
            num_gpus=1 if plan.gpu_per_rank else 0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(nid, soft=False),
        ).remote()
        for nid in plan.node_ids
    ]
    try:
        meet = ray.get([r.rendezvous.remote() for r in ranks], timeout=300)
        backend = "nccl" if plan.gpu_per_rank and all(cuda for _, _, cuda in meet) else "gloo"
        nbytes = NCCL_BYTES if backend == "nccl" else GLOO_BYTES
        master = f"{meet[0][0]}:{meet[0][1]}"
        world = len(ranks)
        took = max(
            ray.get(
                [r.all_reduce.remote(master, i, world, backend, nbytes, iters) for i, r in enumerate(ranks)],
                timeout=600,
            )
        )
    except Exception as exc:  # noqa: BLE001  (reported, not raised: the other checks go on)
        return failed(
            NAME,
            f"the all-reduce of {plan.describe()} did not complete: {str(exc).splitlines()[0]}",
            "every GPU must be free (stop serve apps and training jobs first); check "
            "NCCL_SOCKET_IFNAME/GLOO_SOCKET_IFNAME and that the nodes reach each other on all ports",
        )
    finally:
        for r in ranks:
            ray.kill(r)
    return judge(nbytes * 2 * (world - 1) / world / took / 1e9, backend, plan, nbytes)
