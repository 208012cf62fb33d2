"""The Ray cluster: the inventory, GPU placement planning, `ray up` and KubeRay
rendering, preflight checks, and local bring-up with secure defaults (token auth,
zero egress). Imports only `foundation`."""

from cluster.gpu_requests import GpuRequest, GpuRequests, MemoryEstimate
from cluster.inventory import Inventory, Node
from cluster.kuberay import render_kuberay, write_kuberay
from cluster.node_env import node_env
from cluster.placement import PlacementError, plan_placement
from cluster.plan import GpuGroup, PlacementGroupSpec, Plan, replica_placement_group
from cluster.ray_up import render_ray_up, write_ray_up

__all__ = [
    "GpuGroup",
    "GpuRequest",
    "GpuRequests",
    "Inventory",
    "MemoryEstimate",
    "Node",
    "PlacementError",
    "PlacementGroupSpec",
    "Plan",
    "node_env",
    "plan_placement",
    "replica_placement_group",
    "render_kuberay",
    "render_ray_up",
    "write_kuberay",
    "write_ray_up",
]
