"""The environment every Ray process on a node starts with.

Zero egress (`foundation.offline.OFFLINE_ENV`), Ray token authentication (the token
read from a file, never an inline value), NCCL/Gloo settings for InfiniBand, and
the Sekisho home on the shared storage (`SharedStorage.env`), so a replica or
training rank on any node finds the registry, model store and serve cache the
driver wrote.
Both renderers (`ray up`, KubeRay) take their variables from here, so the two
ways of bringing a cluster up cannot drift apart.

The egress hook (cluster/egress_hook) goes on PYTHONPATH where the renderer can
name its folder on the node (`ray up`: looked up there by the node's own Python).
It cures the Ray dashboard's cloud-metadata probe and makes the recorder
available; recording itself stays off (no SEKISHO_EGRESS_LOG here): the recorder
counts every non-loopback address, so on a cluster it would log the nodes' own
traffic. `sekisho cluster doctor --egress` records on demand instead, in tasks
whose runtime_env sets the log and the hook, and needs nothing from this module.
"""

from __future__ import annotations

from cluster.inventory import Inventory, Node
from cluster.local import QUIET_SERVE_ENV
from foundation.offline import OFFLINE_ENV

# Engine replicas and training workers run at the priority Ray gives job drivers,
# not at its worker niceness 15 (docs/design-notes.md, "Scheduling priority").
FULL_PRIORITY_ENV = {"RAY_worker_niceness": "0"}


def nccl_env(inventory: Inventory, node: Node) -> dict[str, str]:
    """NCCL and Gloo settings for one node.

    A leading "=" in NCCL_IB_HCA makes NCCL match the names exactly (otherwise
    `mlx5_1` would also pick `mlx5_10`). A node without HCAs gets
    NCCL_IB_DISABLE=1 whatever `nccl_env` says.
    """
    env = dict(inventory.nccl_env)
    env["NCCL_SOCKET_IFNAME"] = node.nccl_socket_ifname
    env["GLOO_SOCKET_IFNAME"] = node.nccl_socket_ifname
    if node.ib_hcas:
        env["NCCL_IB_HCA"] = "=" + ",".join(node.ib_hcas)
    else:
        env["NCCL_IB_DISABLE"] = "1"
    return env


def node_env(
    inventory: Inventory, node: Node, token_path: str | None, hook_dir: str | None = None
) -> dict[str, str]:
    """Every variable a node's Ray processes need.

    Args:
        inventory: the cluster.
        node: the node the variables are for.
        token_path: where the Ray token file lies on that node; None where the
            token arrives another way (KubeRay injects RAY_AUTH_TOKEN from a Secret).
        hook_dir: the egress hook's folder on that node, put first on PYTHONPATH;
            None where the renderer cannot know it (a KubeRay image's layout).

    Returns:
        Name -> value, zero-egress switches first.
    """
    env = dict(OFFLINE_ENV)
    env.update(QUIET_SERVE_ENV)
    env["VLLM_HOST_IP"] = node.address  # else vLLM asks 8.8.8.8 for its own address
    env["RAY_AUTH_MODE"] = "token"
    if token_path is not None:
        env["RAY_AUTH_TOKEN_PATH"] = token_path
    env.update(nccl_env(inventory, node))
    if inventory.shared_storage is not None:
        env.update(inventory.shared_storage.env())
    if hook_dir is not None:
        env["PYTHONPATH"] = hook_dir
    return env
