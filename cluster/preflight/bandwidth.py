"""All-reduce bus bandwidth between nodes: one torch.distributed rank per node
(two on a single-node cluster), NCCL where every node has CUDA, else Gloo."""

from __future__ import annotations

import socket
import time

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from cluster.inventory import Inventory
from cluster.preflight.result import CheckResult, failed, passed, skipped

NDR_GB_S = 50.0  # one 400 Gb/s InfiniBand NDR port, in GB/s
TARGET_FRACTION = 0.6  # NCCL bus bandwidth over IB reaches 80-90% of the links


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
        device = "cuda" if backend == "nccl" else "cpu"
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


def all_reduce_bandwidth(
    inventory: Inventory, alive: dict[str, str], nbytes: int = 64 << 20, iters: int = 5
) -> CheckResult:
    """Bus bandwidth as nccl-tests defines it: size x 2(n-1)/n / time."""
    name = "all-reduce bus bandwidth"
    node_ids = [alive[n.address] for n in inventory.nodes if n.address in alive]
    if not node_ids:
        return skipped(name, "no inventory node is alive")
    if len(node_ids) == 1:
        node_ids = node_ids * 2
    ranks = [
        Rank.options(scheduling_strategy=NodeAffinitySchedulingStrategy(nid, soft=False)).remote()
        for nid in node_ids
    ]
    try:
        meet = ray.get([r.rendezvous.remote() for r in ranks], timeout=300)
        backend = "nccl" if all(cuda for _, _, cuda in meet) else "gloo"
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
            name,
            f"the all-reduce did not complete: {str(exc).splitlines()[0]}",
            "check NCCL_SOCKET_IFNAME/GLOO_SOCKET_IFNAME and that the nodes reach each other on all ports",
        )
    finally:
        for r in ranks:
            ray.kill(r)
    busbw = nbytes * 2 * (world - 1) / world / took / 1e9
    hosts = len(set(node_ids))
    detail = (
        f"{busbw:.2f} GB/s ({backend}, {world} ranks on {hosts} node"
        f"{'s' if hosts > 1 else ''}, {nbytes >> 20} MiB)"
    )
    hcas = min((len(n.ib_hcas) for n in inventory.nodes if n.address in alive), default=0)
    if backend != "nccl" or hosts < 2 or not hcas:
        why = (
            "Gloo on CPU"
            if backend != "nccl"
            else "one node"
            if hosts < 2
            else "no InfiniBand HCAs in the inventory"
        )
        return passed(name, detail + f"; no link target ({why})")
    target = TARGET_FRACTION * hcas * NDR_GB_S
    if busbw < target:
        return failed(
            name,
            detail + f", under {target:.0f} GB/s ({TARGET_FRACTION:.0%} of {hcas} x 400 Gb/s)",
            "check that NCCL uses InfiniBand (NCCL_DEBUG=INFO "
            "shows NET/IB), NCCL_IB_HCA, GPUDirect RDMA (nvidia-peermem)",
        )
    return passed(name, detail + f"; target {target:.0f} GB/s")
