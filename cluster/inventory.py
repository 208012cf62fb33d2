"""The inventory: which machines form the cluster, their GPUs, network and storage.

One YAML file (configs/cluster/reference.yaml) describes the installation; the
placement planner and the `ray up` / KubeRay renderers read only this model.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from foundation import StrictConfig

# Node names become Ray labels, custom resource names and Kubernetes group names:
# keep them DNS labels so one name works in all three.
NODE_NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
NODE_LABEL_KEY = "sekisho/node"
NODE_RESOURCE_PREFIX = "sekisho_node_"


class Node(StrictConfig):
    """One machine of the cluster."""

    name: str = Field(
        pattern=NODE_NAME,
        description="Short host name (a DNS label); "
        "also the node's Ray label value and Kubernetes node name by default.",
    )
    address: str = Field(
        description="The node's address on the internal network "
        "(Ray and NCCL bind here; never a public address)."
    )
    role: Literal["head", "worker"] = Field(
        description="`head` runs the Ray head (GCS, dashboard); exactly one node is the head."
    )
    gpus: int = Field(ge=0, le=16, description="Number of GPUs in the node.")
    gpu_model: str = Field(default="H100", description="GPU model, for display and checks.")
    gpu_memory_gib: float = Field(gt=0, description="Memory of one GPU in GiB (H100 SXM: 80).")
    cpus: int = Field(ge=1, description="Logical CPUs Ray may schedule on this node.")
    memory_gb: float | None = Field(
        default=None,
        gt=0,
        description="Host RAM of the node in GB (DGX H100: 2000); training jobs' host-memory "
        "estimates are checked against it (none: the job's plan.cpu_memory_gb).",
    )
    ib_hcas: list[str] = Field(
        default_factory=list,
        description="InfiniBand HCAs NCCL may use (NCCL_IB_HCA), e.g. mlx5_0; empty: no InfiniBand.",
    )
    nccl_socket_ifname: str = Field(
        description="Network interface for NCCL bootstrap "
        "and Gloo (NCCL_SOCKET_IFNAME), e.g. the internal "
        "Ethernet or IPoIB interface."
    )
    kubernetes_node: str | None = Field(
        default=None, description="Kubernetes node name, if it differs from `name`."
    )

    @field_validator("address")
    @classmethod
    def _private_address(cls, v: str) -> str:
        ip = ipaddress.ip_address(v)
        if not (ip.is_private or ip.is_loopback):
            raise ValueError(
                f"{v} is not a private address; a closed network's nodes "
                f"use internal addresses (10/8, 172.16/12, 192.168/16)"
            )
        return v

    @property
    def ray_resource(self) -> str:
        """The custom resource this node declares (1 unit) so bundles can pin to it."""
        return f"{NODE_RESOURCE_PREFIX}{self.name}"


class RaySettings(StrictConfig):
    """How Ray runs on the cluster."""

    gcs_port: int = Field(default=6379, ge=1, le=65535, description="Port of the GCS on the head.")
    dashboard_port: int = Field(
        default=8265,
        ge=1,
        le=65535,
        description="Dashboard and Jobs API port; bound to the head's internal address only.",
    )
    auth_token_file: Path = Field(
        description="File holding the Ray auth token on the "
        "machine that runs `ray up` (mode 0600; see `cluster.local`"
        ".ensure_token). Copied to every node, never inlined."
    )
    python_env: Path | None = Field(
        default=None,
        description="Virtual environment on "
        "every node (usually on shared storage) whose `ray` "
        "to run; none: `ray` on PATH.",
    )
    ssh_user: str = Field(default="sekisho", description="SSH user `ray up` logs in as.")
    ssh_private_key: Path = Field(
        default=Path("~/.ssh/id_ed25519"), description="SSH key `ray up` uses to reach the nodes."
    )


class KubernetesSettings(StrictConfig):
    """How the cluster is rendered for KubeRay on an offline Kubernetes."""

    namespace: str = Field(
        default="sekisho", pattern=NODE_NAME, description="Namespace of the RayCluster and RayService."
    )
    image: str = Field(
        description="Container image with Sekisho and Ray, from the "
        "internal registry (nothing is pulled from the internet)."
    )
    auth_secret: str = Field(
        default="sekisho-ray-auth",
        pattern=NODE_NAME,
        description="Secret holding the Ray token under key "
        "`auth_token` (created from auth_token_file; never rendered).",
    )


class SharedStorage(StrictConfig):
    """The shared file server, mounted at the same path on every node. Sekisho's
    state lives on it (`home`), so every node resolves the same paths: the
    registry, the model store, the serve cache of downloaded versions, checkpoints."""

    path: Path = Field(
        description="Mount point of the shared file server, the same absolute path on every node "
        "(models, data, checkpoints)."
    )
    home: str = Field(
        default="sekisho-home",
        description="The Sekisho home on it, relative to path: $SEKISHO_HOME of every node's Ray "
        "processes (MLflow store, model store, serve cache).",
    )
    persistent_volume_claim: str | None = Field(
        default=None,
        pattern=NODE_NAME,
        description="KubeRay: a ReadWriteMany PersistentVolumeClaim mounted at path in every pod; "
        "none: the node's own mount of path (hostPath).",
    )

    @field_validator("path")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        if not v.is_absolute():
            raise ValueError(f"{v} is not an absolute path; every node mounts the share at the same one")
        return v

    @field_validator("home")
    @classmethod
    def _inside(cls, v: str) -> str:
        if not v or Path(v).is_absolute() or ".." in Path(v).parts:
            raise ValueError(f"{v}: give the home relative to path, inside the shared storage")
        return v

    @property
    def home_dir(self) -> Path:
        """The Sekisho home every node uses."""
        return self.path / self.home

    def env(self) -> dict[str, str]:
        """The variables that put Sekisho's state on the shared storage: the home
        (its serve-cache/ holds the versions a driver downloads for engines on other
        nodes) and the model store in it."""
        return {
            "SEKISHO_HOME": str(self.home_dir),
            "SEKISHO_MODEL_STORE": str(self.home_dir / "model-store"),
        }


class Inventory(StrictConfig):
    """The machines of one installation, and how Ray runs on them."""

    name: str = Field(pattern=NODE_NAME, description="Cluster name (ray up cluster_name, RayCluster name).")
    nodes: list[Node] = Field(min_length=1, description="Every machine, head included.")
    shared_storage: SharedStorage | None = Field(
        default=None,
        description="The shared file server every node mounts (Sekisho's home on it). Required "
        "for more than one node; none: one node keeps its state in its own home.",
    )
    nccl_env: dict[str, str] = Field(
        default_factory=dict, description="Extra NCCL variables for every node (e.g. NCCL_IB_GID_INDEX)."
    )
    ray: RaySettings = Field(description="Ray ports, token and SSH access.")
    kubernetes: KubernetesSettings | None = Field(
        default=None, description="Settings for `cluster render --kuberay`."
    )

    @field_validator("shared_storage")
    @classmethod
    def _shared_for_several_nodes(cls, v: SharedStorage | None, info) -> SharedStorage | None:
        nodes = info.data.get("nodes") or []
        if v is None and len(nodes) > 1:
            raise ValueError(
                f"required for a cluster of {len(nodes)} nodes: every node must find the same "
                f"registry, model store and serve cache; add `shared_storage: {{path: /shared/sekisho}}` "
                f"(the file server's mount point, the same on every node)"
            )
        return v

    @model_validator(mode="after")
    def _one_head_unique_nodes(self) -> Inventory:
        heads = [n.name for n in self.nodes if n.role == "head"]
        if len(heads) != 1:
            raise ValueError(
                f"exactly one node must have role: head, found {len(heads)} ({', '.join(heads) or 'none'})"
            )
        for attr, plural in (("name", "names"), ("address", "addresses")):
            values = [getattr(n, attr) for n in self.nodes]
            dupes = sorted({v for v in values if values.count(v) > 1})
            if dupes:
                raise ValueError(f"node {plural} must be unique; repeated: {', '.join(dupes)}")
        for key in self.nccl_env:
            if not key.startswith("NCCL_"):
                raise ValueError(f"nccl_env: {key} is not an NCCL variable")
        return self

    @property
    def head(self) -> Node:
        """The head node."""
        return next(n for n in self.nodes if n.role == "head")

    @property
    def workers(self) -> list[Node]:
        """Every node but the head, in inventory order."""
        return [n for n in self.nodes if n.role == "worker"]

    @property
    def total_gpus(self) -> int:
        return sum(n.gpus for n in self.nodes)

    @property
    def gpu_node_memory_gb(self) -> float | None:
        """Host memory of the smallest GPU node (where training ranks run), in GB;
        None when a GPU node does not declare memory_gb."""
        sizes = [n.memory_gb for n in self.nodes if n.gpus]
        if not sizes or None in sizes:
            return None
        return min(sizes)

    def node(self, name: str) -> Node:
        """The node called `name`.

        Raises:
            KeyError: no such node.
        """
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)
