"""The placement planner: assign GPUs to requests before Ray ever sees them.

Rules: a TP group stays inside one node (NVLink); pipeline stages and
data-parallel ranks may cross nodes (InfiniBand). Every GPU's memory is checked
(weights + KV cache + training state + headroom). A plan that does not fit is
refused with what does not fit and what would.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from cluster.gpu_requests import GpuRequest
from cluster.inventory import Inventory, Node
from cluster.plan import GpuGroup, Plan
from foundation import UserError


class PlacementError(UserError):
    """The requests do not fit the inventory; the message says what would."""


@dataclass(frozen=True)
class _Slot:
    """A group to place: `size` GPUs of one request on one node."""

    request: GpuRequest
    size: int
    replica: int
    stage: int


def plan_placement(inventory: Inventory, requests: list[GpuRequest]) -> Plan:
    """Assign every request's GPUs to nodes.

    Args:
        inventory: the cluster.
        requests: everything that should run at once.

    Returns:
        The plan, with each GPU group's node and GPU indices.

    Raises:
        PlacementError: a TP group would cross a node, a GPU's memory overflows, or
            there are not enough GPUs (the message names the shortfall and a fix).
    """
    for req in requests:
        _check_request(inventory, req)
    _check_counts(inventory, requests)
    order = sorted(requests, key=lambda r: (r.nodes is None, -r.group_size, -r.total_gpus))
    slots = [s for r in order for s in _slots(r)]
    free = {n.name: n.gpus for n in inventory.nodes}
    chosen = _search(inventory, slots, 0, free, None, set())
    if chosen is None:
        raise PlacementError(_fragmentation_message(inventory, slots))
    plan = Plan(inventory, list(requests))
    next_gpu = {n.name: 0 for n in inventory.nodes}
    for slot, node in zip(slots, chosen):
        first = next_gpu[node]
        next_gpu[node] += slot.size
        gpus = tuple(range(first, first + slot.size))
        last = plan.groups[-1] if plan.groups else None
        if slot.request.kind == "train" and last and (last.request, last.node) == (slot.request.name, node):
            # A training job's workers on one node form one group (ranks in order).
            plan.groups[-1] = replace(last, gpus=last.gpus + gpus)
            continue
        plan.groups.append(
            GpuGroup(slot.request.name, node, gpus, slot.replica, slot.stage, slot.request.memory_per_gpu())
        )
    return plan


def _slots(req: GpuRequest) -> list[_Slot]:
    if req.kind == "serve":
        return [
            _Slot(req, req.tensor_parallel, r, s)
            for r in range(req.data_parallel)
            for s in range(req.pipeline_parallel)
        ]
    return [_Slot(req, req.group_size, i, 0) for i in range(req.total_gpus // req.group_size)]


def _candidates(inventory: Inventory, req: GpuRequest) -> list[Node]:
    if req.nodes is None:
        return list(inventory.nodes)
    unknown = [n for n in req.nodes if n not in {x.name for x in inventory.nodes}]
    if unknown:
        raise PlacementError(
            f"{req.kind} {req.name}: nodes {', '.join(unknown)} are not in "
            f"inventory {inventory.name} (its nodes: "
            f"{', '.join(n.name for n in inventory.nodes)})."
        )
    return [inventory.node(n) for n in req.nodes]


def _check_request(inventory: Inventory, req: GpuRequest) -> None:
    """A TP group must fit in one node, and its memory in one GPU."""
    nodes = _candidates(inventory, req)
    biggest = max(nodes, key=lambda n: n.gpus)
    who = f"{req.kind} {req.name}"
    if req.group_size > biggest.gpus:
        what = (
            f"tensor_parallel={req.tensor_parallel}"
            if req.group_size == req.tensor_parallel
            else f"gpus_per_worker={req.gpus_per_worker}"
        )
        tp = _largest_power_of_two_dividing(req.tensor_parallel, biggest.gpus)
        pp = req.pipeline_parallel * req.tensor_parallel // tp
        raise PlacementError(
            f"{who}: {what} would cross a node: the largest node ({biggest.name}) has "
            f"{biggest.gpus} GPUs, and tensor parallelism stays inside a node (NVLink). "
            f"The same {req.tensor_parallel * req.pipeline_parallel} GPUs per replica fit as "
            f"tensor_parallel={tp}, pipeline_parallel={pp} (stages cross nodes over InfiniBand)."
        )
    need = req.memory_per_gpu()
    fitting = [n for n in nodes if n.gpus >= req.group_size and n.gpu_memory_gib >= need.total]
    if fitting:
        return
    memory = max(n.gpu_memory_gib for n in nodes if n.gpus >= req.group_size)
    raise PlacementError(
        f"{who}: needs {need.describe()} at tensor_parallel={req.tensor_parallel}, "
        f"pipeline_parallel={req.pipeline_parallel}, but the GPUs hold at most "
        f"{memory:g} GiB. {_what_fits(req, nodes)}"
    )


def _what_fits(req: GpuRequest, nodes: list[Node]) -> str:
    """The first split of the request that fits, smallest change first."""
    max_gpus = max(n.gpus for n in nodes)

    def fits(tp: int, pp: int, dp: int) -> bool:
        need = req.memory_per_gpu(tp, pp, dp).total
        return any(n.gpus >= tp and n.gpu_memory_gib >= need for n in nodes)

    tp = req.tensor_parallel * 2
    while tp <= max_gpus:
        if fits(tp, req.pipeline_parallel, req.data_parallel):
            est = req.memory_per_gpu(tp, req.pipeline_parallel, req.data_parallel)
            return f"tensor_parallel={tp} fits ({est.total:.1f} GiB per GPU)."
        tp *= 2
    tp = _largest_power_of_two_dividing(max_gpus, max_gpus)
    for pp in range(req.pipeline_parallel + 1, 9):
        if fits(tp, pp, req.data_parallel):
            est = req.memory_per_gpu(tp, pp, req.data_parallel)
            return f"tensor_parallel={tp}, pipeline_parallel={pp} fits ({est.total:.1f} GiB per GPU)."
    if req.weight_sharding == "all_ranks":
        for dp in range(req.data_parallel + 1, 257):
            if fits(req.tensor_parallel, req.pipeline_parallel, dp):
                return f"data_parallel={dp} fits (weights sharded over more ranks)."
    fixed = req.memory_per_gpu(max_gpus, 8, 256)
    return (
        f"No split fits: KV cache, training state and headroom alone need "
        f"{fixed.kv_cache + fixed.extra + fixed.headroom:.1f} GiB per GPU; lower "
        f"max_model_len or max_num_seqs, or use a smaller dtype."
    )


def _largest_power_of_two_dividing(n: int, limit: int) -> int:
    p = 1
    while p * 2 <= limit and n % (p * 2) == 0:
        p *= 2
    return p


def _check_counts(inventory: Inventory, requests: list[GpuRequest]) -> None:
    """Enough GPUs in all, and on the nodes that pinned requests may use."""
    need = sum(r.total_gpus for r in requests)
    have = inventory.total_gpus
    if need > have:
        parts = ", ".join(f"{r.name} {r.total_gpus}" for r in requests)
        raise PlacementError(
            f"the plan needs {need} GPUs ({parts}) and inventory {inventory.name} has "
            f"{have}: {need - have} GPU{'s' if need - have > 1 else ''} missing. Drop a "
            f"replica or data-parallel rank, or add a node."
        )
    pinned: dict[tuple[str, ...], int] = {}
    for r in requests:
        if r.nodes is not None:
            key = tuple(sorted(r.nodes))
            pinned[key] = pinned.get(key, 0) + r.total_gpus
    for names, n in pinned.items():
        avail = sum(inventory.node(x).gpus for x in names)
        if n > avail:
            raise PlacementError(
                f"requests pinned to {', '.join(names)} need {n} GPUs and those nodes "
                f"have {avail}: {n - avail} missing. Allow more nodes in `nodes`."
            )


def _order(
    inventory: Inventory, slot: _Slot, free: dict[str, int], prev: str | None, remaining: int
) -> list[str]:
    """Nodes to try for a slot: the request's previous node first, then the
    tightest node that holds the rest of the request, then the emptiest."""
    req = slot.request
    names = [
        n.name
        for n in _candidates(inventory, req)
        if free[n.name] >= slot.size and inventory.node(n.name).gpu_memory_gib >= req.memory_per_gpu().total
    ]
    whole = sorted((n for n in names if free[n] >= remaining), key=lambda n: free[n])
    rest = sorted((n for n in names if free[n] < remaining), key=lambda n: -free[n])
    ordered = whole + rest
    if prev in ordered:
        ordered.remove(prev)
        ordered.insert(0, prev)
    return ordered


def _search(
    inventory: Inventory, slots: list[_Slot], i: int, free: dict[str, int], prev: str | None, failed: set
) -> list[str] | None:
    """Depth-first search over nodes, preferred order first; memoises dead ends."""
    if i == len(slots):
        return []
    key = (i, tuple(sorted(free.items())))
    if key in failed:
        return None
    slot = slots[i]
    if i and slots[i - 1].request is not slot.request:
        prev = None
    remaining = sum(s.size for s in slots[i:] if s.request is slot.request)
    for node in _order(inventory, slot, free, prev, remaining):
        free[node] -= slot.size
        rest = _search(inventory, slots, i + 1, free, node, failed)
        free[node] += slot.size
        if rest is not None:
            return [node] + rest
    failed.add(key)
    return None


def _fragmentation_message(inventory: Inventory, slots: list[_Slot]) -> str:
    sizes = sorted((s.size for s in slots), reverse=True)
    free = ", ".join(f"{n.name} {n.gpus}" for n in inventory.nodes)
    return (
        f"the GPUs are enough in number but not in shape: groups of "
        f"{', '.join(map(str, sizes))} GPUs (each inside one node) do not pack into "
        f"the nodes' GPUs ({free}). Lower tensor_parallel, or pin requests with `nodes`."
    )
