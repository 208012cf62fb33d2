"""Generic GPU requests: what a serve app or a training job asks of the cluster.

`cluster` knows nothing of serve or train configs; the CLI derives these from
them. A request says how a model is split (tensor, pipeline, data parallel) and
enough about its size for the planner to check each GPU's memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, model_validator

from cluster.inventory import NODE_NAME
from foundation import StrictConfig

GIB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    """Memory one GPU of a request needs, in GiB."""

    weights: float
    kv_cache: float
    extra: float
    headroom: float

    @property
    def total(self) -> float:
        return self.weights + self.kv_cache + self.extra + self.headroom

    def describe(self) -> str:
        """e.g. `61.2 GiB per GPU (weights 32.6 + KV cache 20.0 + ... + headroom 4.0)`."""
        parts = [f"weights {self.weights:.1f}", f"KV cache {self.kv_cache:.1f}"]
        if self.extra:
            parts.append(f"training state {self.extra:.1f}")
        parts.append(f"headroom {self.headroom:.1f}")
        return f"{self.total:.1f} GiB per GPU ({' + '.join(parts)})"


class GpuRequest(StrictConfig):
    """GPUs for one serve deployment or one training job."""

    name: str = Field(pattern=NODE_NAME, description="Name of the app or job (a DNS label).")
    kind: Literal["serve", "train"] = Field(
        description="`serve`: replicas of a vLLM engine; `train`: one Ray Train job."
    )
    params_billions: float = Field(gt=0, description="Model size in billions of parameters.")
    dtype_bytes: float = Field(
        default=2, gt=0, le=4, description="Bytes per weight (bf16: 2, fp8: 1, int4: 0.5)."
    )
    tensor_parallel: int = Field(
        default=1, ge=1, description="GPUs that split each layer; they stay inside one node (NVLink)."
    )
    pipeline_parallel: int = Field(
        default=1, ge=1, description="Stages the layers are split into; stages may sit on different nodes."
    )
    data_parallel: int = Field(
        default=1, ge=1, description="Serve: replicas of the engine. Train: data-parallel ranks (DDP/ZeRO)."
    )
    gpus_per_worker: int = Field(
        default=1,
        ge=1,
        description="Train: GPUs per Ray Train worker (serve engines use one GPU per worker).",
    )
    weight_sharding: Literal["model_parallel", "all_ranks"] = Field(
        default="model_parallel",
        description="`model_parallel`: each GPU holds weights / "
        "(TP x PP) (vLLM, DDP, ZeRO-1/2). `all_ranks`: weights are also sharded across "
        "data-parallel ranks (ZeRO-3, FSDP).",
    )
    max_model_len: int = Field(
        default=0,
        ge=0,
        description="Serve: longest sequence (prompt + output) in tokens; 0 for training jobs.",
    )
    max_num_seqs: int = Field(
        default=0,
        ge=0,
        description="Serve: sequences a replica runs at once; with max_model_len sizes the KV cache.",
    )
    kv_bytes_per_token: int = Field(
        default=0,
        ge=0,
        description="KV cache bytes per token "
        "for the whole model: 2 x layers x KV heads x head_dim "
        "x dtype bytes (Llama-3 70B bf16: 327680).",
    )
    extra_gib_per_gpu: float = Field(
        default=0,
        ge=0,
        description="Train: activations, gradients and optimizer state per GPU, estimated by the caller.",
    )
    headroom_gib: float = Field(
        default=4, ge=0, description="Per GPU for the CUDA context, NCCL buffers and fragmentation."
    )
    cpus_per_gpu: float = Field(default=1, gt=0, description="Logical CPUs reserved beside each GPU.")
    nodes: list[str] | None = Field(
        default=None, description="Only place on these nodes (e.g. small models on the head); none: any node."
    )

    @model_validator(mode="after")
    def _consistent(self) -> GpuRequest:
        if self.kind == "serve" and self.gpus_per_worker != 1:
            raise ValueError(
                "gpus_per_worker applies to train requests; a serve engine uses one GPU per worker"
            )
        tp, gpw = self.tensor_parallel, self.gpus_per_worker
        if tp % gpw and gpw % tp:
            raise ValueError(
                f"gpus_per_worker ({gpw}) and tensor_parallel ({tp}) must "
                f"divide one another, so a worker never splits a TP group"
            )
        if self.total_gpus % self.group_size:
            raise ValueError(
                f"tensor_parallel x pipeline_parallel x data_parallel "
                f"({self.total_gpus}) is not a multiple of gpus_per_worker ({gpw})"
            )
        if (self.max_model_len == 0) != (self.max_num_seqs == 0):
            raise ValueError("max_model_len and max_num_seqs size the KV cache together; set both or neither")
        return self

    @property
    def total_gpus(self) -> int:
        return self.tensor_parallel * self.pipeline_parallel * self.data_parallel

    @property
    def group_size(self) -> int:
        """GPUs that must share one node: a TP group, or a worker's GPUs if more."""
        return max(self.tensor_parallel, self.gpus_per_worker)

    def memory_per_gpu(
        self, tp: int | None = None, pp: int | None = None, dp: int | None = None
    ) -> MemoryEstimate:
        """Memory per GPU at this request's parallel sizes, or at the ones given.

        Args:
            tp, pp, dp: alternative tensor / pipeline / data parallel sizes, to find
                one that fits.

        Returns:
            The estimate, split into its parts.
        """
        tp, pp = tp or self.tensor_parallel, pp or self.pipeline_parallel
        dp = dp or self.data_parallel
        shards = tp * pp * (dp if self.weight_sharding == "all_ranks" else 1)
        weights = self.params_billions * 1e9 * self.dtype_bytes / shards / GIB
        kv = self.kv_bytes_per_token * self.max_model_len * self.max_num_seqs / (tp * pp) / GIB
        return MemoryEstimate(weights, kv, self.extra_gib_per_gpu, self.headroom_gib)


class GpuRequests(StrictConfig):
    """A set of requests to plan together on one inventory."""

    requests: list[GpuRequest] = Field(
        min_length=1, description="Every serve app and training job that should run at once."
    )

    @model_validator(mode="after")
    def _unique_names(self) -> GpuRequests:
        names = [r.name for r in self.requests]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"request names must be unique; repeated: {', '.join(dupes)}")
        return self
