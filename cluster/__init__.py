"""The Ray cluster: the inventory, GPU placement planning, `ray up` and KubeRay
rendering, and local bring-up with secure defaults (token auth, zero egress);
also the strict config base every package uses. Imports no other Sekisho package."""

from cluster import offline
from cluster.config_base import ConfigError, StrictConfig, UserError, describe_validation_error
from cluster.gpu_requests import GpuRequest, GpuRequests, MemoryEstimate
from cluster.inventory import Inventory, Node
from cluster.kuberay import render_kuberay, write_kuberay
from cluster.node_env import node_env
from cluster.placement import PlacementError, plan_placement
from cluster.plan import GpuGroup, PlacementGroupSpec, Plan
from cluster.ray_up import render_ray_up, write_ray_up

__all__ = ["ConfigError", "GpuGroup", "GpuRequest", "GpuRequests", "Inventory", "MemoryEstimate",
           "Node", "PlacementError", "PlacementGroupSpec", "Plan", "StrictConfig", "UserError",
           "describe_validation_error", "node_env", "offline", "plan_placement", "render_kuberay",
           "render_ray_up", "write_kuberay", "write_ray_up"]
