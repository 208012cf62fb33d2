"""A placement plan: which GPUs of which node each request gets, and the Ray
objects that make Ray place it there.

Each node declares a custom resource `sekisho_node_<name>` (1 unit) and a label
`sekisho/node=<name>` at `ray start` (see `cluster.ray_up`, `cluster.kuberay`).
Placement-group bundles pin through the resource, which Serve's
`placement_group_bundles` and `ray.util.placement_group` both accept; Ray Train
pins through `ScalingConfig(label_selector=[...])`, its only per-worker knob
(resources_per_worker is the same for every worker).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cluster.gpu_requests import GpuRequest, MemoryEstimate
from cluster.inventory import NODE_LABEL_KEY, Inventory

# Each bundle takes this much of its node's 1-unit resource: up to 1000 bundles a node.
NODE_RESOURCE_PER_BUNDLE = 0.001


@dataclass(frozen=True)
class GpuGroup:
    """GPUs of one request that sit on one node: a TP group (one pipeline stage of
    one replica) or, for training, the GPUs of consecutive workers."""

    request: str
    node: str
    gpus: tuple[int, ...]
    replica: int
    stage: int
    memory: MemoryEstimate


@dataclass(frozen=True)
class PlacementGroupSpec:
    """Arguments for `ray.util.placement_group(**spec.as_kwargs())` or for a Serve
    deployment's `placement_group_bundles` / `placement_group_strategy`."""

    bundles: list[dict[str, float]]
    strategy: str
    bundle_label_selector: list[dict[str, str]]

    def as_kwargs(self) -> dict[str, Any]:
        return {
            "bundles": self.bundles,
            "strategy": self.strategy,
            "bundle_label_selector": self.bundle_label_selector,
        }


@dataclass
class Plan:
    """The result of `plan_placement`: every request's GPU groups, node by node."""

    inventory: Inventory
    requests: list[GpuRequest]
    groups: list[GpuGroup] = field(default_factory=list)

    def request(self, name: str) -> GpuRequest:
        """The request called `name`.

        Raises:
            KeyError: no such request in the plan.
        """
        for r in self.requests:
            if r.name == name:
                return r
        raise KeyError(name)

    def by_node(self) -> dict[str, list[GpuGroup]]:
        """Node name -> its groups, every node present, in inventory order."""
        out: dict[str, list[GpuGroup]] = {n.name: [] for n in self.inventory.nodes}
        for g in self.groups:
            out[g.node].append(g)
        return out

    def used_gpus(self, node: str) -> int:
        return sum(len(g.gpus) for g in self.groups if g.node == node)

    def placement_group(self, request: str, replica: int = 0) -> PlacementGroupSpec:
        """The placement group of one serve replica: one bundle per pipeline stage
        (its tensor-parallel GPUs, which stay on one node), pinned to the node the
        plan chose, stages in order (see `replica_placement_group`).

        Raises:
            KeyError: no such request or replica.
        """
        req = self.request(request)
        groups = sorted(
            (g for g in self.groups if g.request == request and g.replica == replica), key=lambda g: g.stage
        )
        if not groups:
            raise KeyError(f"{request} replica {replica}")
        nodes = [self.inventory.node(g.node) for g in groups]
        spec = replica_placement_group(
            req.tensor_parallel,
            len(groups),
            req.cpus_per_gpu * req.tensor_parallel,
            [[n.name] for n in nodes],
        )
        for bundle, node in zip(spec.bundles, nodes):
            bundle[node.ray_resource] = NODE_RESOURCE_PER_BUNDLE
        return spec

    def placement_groups(self, request: str) -> list[PlacementGroupSpec]:
        """One placement group per replica of a serve request."""
        return [self.placement_group(request, r) for r in range(self.request(request).data_parallel)]

    def scaling_config_kwargs(self, request: str) -> dict[str, Any]:
        """Keyword arguments for `ray.train.ScalingConfig`: one label selector per
        worker, so rank i runs on the node the plan gave it.

        Raises:
            KeyError: no such request.
        """
        req = self.request(request)
        gpw = req.gpus_per_worker
        selectors = []
        for g in (g for g in self.groups if g.request == request):
            selectors += [{NODE_LABEL_KEY: g.node}] * (len(g.gpus) // gpw)
        return {
            "num_workers": len(selectors),
            "use_gpu": True,
            "resources_per_worker": {"GPU": float(gpw), "CPU": float(req.cpus_per_gpu * gpw)},
            "placement_strategy": "PACK",
            "label_selector": selectors,
        }

    def ray_objects(self) -> dict[str, Any]:
        """Request name -> its Ray objects: `placement_groups` (serve, one per
        replica) or `scaling_config` (train), as plain JSON-able data."""
        out: dict[str, Any] = {}
        for r in self.requests:
            if r.kind == "serve":
                out[r.name] = {"placement_groups": [pg.as_kwargs() for pg in self.placement_groups(r.name)]}
            else:
                out[r.name] = {"scaling_config": self.scaling_config_kwargs(r.name)}
        return out


def replica_placement_group(
    tensor_parallel: int,
    pipeline_parallel: int,
    cpus_per_stage: float,
    stage_nodes: list[list[str]] | None = None,
    gpus: bool = True,
) -> PlacementGroupSpec:
    """The placement group of one engine replica of `tensor_parallel` x
    `pipeline_parallel` GPUs: one bundle per pipeline stage holding that stage's
    GPUs (a stage's ranks share a node: NVLink) and the CPUs of the process that
    runs it; bundle 0 is also the replica's own. One stage packs strictly on one
    node; several stages PACK (onto one node if it has room, else across nodes).

    Args:
        tensor_parallel: GPUs per stage.
        pipeline_parallel: stages.
        cpus_per_stage: logical CPUs in each bundle.
        stage_nodes: per stage, the nodes it may run on (the planner's choice;
            label `sekisho/node`); none: anywhere.
        gpus: False on a cluster without GPUs (vLLM's CPU build): CPU-only bundles.

    Returns:
        Bundles, strategy and one label selector per bundle (empty: any node).
    """
    bundle = {"CPU": float(cpus_per_stage)}
    if gpus:
        bundle["GPU"] = float(tensor_parallel)
    selectors = [
        {NODE_LABEL_KEY: names[0] if len(names) == 1 else f"in({','.join(names)})"} if names else {}
        for names in (stage_nodes or [[]] * pipeline_parallel)
    ]
    return PlacementGroupSpec(
        [dict(bundle) for _ in range(pipeline_parallel)],
        "STRICT_PACK" if pipeline_parallel == 1 else "PACK",
        selectors,
    )
