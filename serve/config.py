"""The serve app config (`configs/serve/*.yaml`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from foundation import StrictConfig
from serve.gateway.limits import RequestLimits

NAME = r"^[A-Za-z0-9_.:-]+$"


def _check_source(value: str) -> str:
    if value.startswith("registry:"):
        ref = value.removeprefix("registry:")
        if "@" not in ref and "/" not in ref:
            raise ValueError(f"{value!r}: expected registry:NAME@ALIAS or registry:NAME/VERSION")
    return value


class AdapterSpec(StrictConfig):
    """A LoRA adapter served on top of its base model under its own model name."""

    name: str = Field(description="Model name clients send to use this adapter.", pattern=NAME)
    source: str = Field(description="registry:NAME@ALIAS, registry:NAME/VERSION, or a local/shared folder.")

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        return _check_source(value)


# vLLM 0.32's quantization methods (vllm.model_executor.layers.quantization
# QUANTIZATION_METHODS, less the deprecated ones) and KV cache dtypes
# (vllm.config.cache.CacheDType); tests/serve checks they match vLLM's.
QUANTIZATIONS = (
    "awq",
    "auto_awq",
    "awq_marlin",
    "gptq",
    "auto_gptq",
    "gptq_marlin",
    "compressed-tensors",
    "fp8",
    "fp8_per_tensor",
    "fp8_per_block",
    "fp8_per_channel",
    "mxfp8",
    "mxfp4",
    "gpt_oss_mxfp4",
    "modelopt",
    "modelopt_fp4",
    "modelopt_mxfp8",
    "modelopt_mixed",
    "nvfp4_per_token",
    "int8_per_channel_weight_only",
    "experts_int8",
    "moe_wna16",
    "humming",
    "quark",
    "torchao",
    "inc",
    "deepseek_v4_fp8",
    "online",
)
KV_CACHE_DTYPES = (
    "auto",
    "float16",
    "bfloat16",
    "fp8",
    "fp8_e4m3",
    "fp8_e5m2",
    "fp8_inc",
    "fp8_ds_mla",
    "nvfp4_ds_mla",
    "turboquant_k8v4",
    "turboquant_4bit_nc",
    "turboquant_k3v4_nc",
    "turboquant_3bit_nc",
    "ultraquant_4bit",
    "int4_per_token_head",
    "int8_per_token_head",
    "fp8_per_token_head",
    "nvfp4",
    "nvfp4_4over6",
)
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # what vLLM's --max-lora-rank accepts


# Engine field -> (vLLM's flag for a parser plugin, serve.engine_args' list of the parser
# names, what they are called, what `none` means).
PARSER_KINDS = {
    "tool_call_parser": ("--tool-parser-plugin", "tool_parser_names", "tool-call parsers", "for no tools"),
    "reasoning_parser": (
        "--reasoning-parser-plugin",
        "reasoning_parser_names",
        "reasoning parsers",
        "to leave thinking in `content`",
    ),
}


class EngineSettings(StrictConfig):
    """vLLM engine settings for one model. Unset (none) settings keep vLLM's default.

    The engine's command line is built by `serve.vllm_process.vllm_command`; a config
    with `extra_args` is checked against vLLM's own parser when it is loaded
    (`serve.engine_args`). `tool_call_parser: auto` is resolved at engine start from the
    model folder (`serve.tool_parsers`).
    """

    max_model_len: int = Field(512, ge=16, description="Longest prompt + completion in tokens.")
    max_num_seqs: int = Field(32, ge=1, description="Sequences batched at once.")
    tensor_parallel_size: int = Field(
        1, ge=1, le=8, description="GPUs per pipeline stage of a replica (stays inside a node)."
    )
    pipeline_parallel_size: int = Field(
        1,
        ge=1,
        description="Pipeline stages per replica, each on its own node with tensor_parallel_size "
        "GPUs: for a model larger than one node (replica = tensor x pipeline GPUs).",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights and activations dtype; auto: the dtype the model's config.json names."
    )
    quantization: str | None = Field(
        None,
        description="Weight quantization (vLLM's --quantization): awq, gptq, fp8, compressed-tensors, "
        "... Default: what the model's config.json says, so a quantized checkpoint needs nothing here.",
    )
    kv_cache_dtype: str | None = Field(
        None,
        description="KV cache element type: fp8 (= fp8_e4m3) or fp8_e5m2 holds about twice the tokens "
        "in the same memory at a small accuracy cost (GPUs). Default: the model's dtype.",
    )
    gpu_memory_utilization: float | None = Field(
        None,
        gt=0,
        le=1,
        description="GPU engines: the share of each GPU's memory vLLM takes (weights, activations, KV "
        "cache). Lower it where other processes share the GPU. Default: vLLM's 0.9.",
    )
    max_num_batched_tokens: int | None = Field(
        None,
        ge=1,
        description="Tokens one scheduler step processes (prompt chunks + decodes): higher speeds up "
        "long prompts, lower keeps decoding smooth. Default: vLLM's, chosen by hardware.",
    )
    enable_prefix_caching: bool | None = Field(
        None,
        description="Reuse the KV cache of a prompt prefix already computed (shared system prompts, "
        "multi-turn chats). Default: vLLM's (on for generate models).",
    )
    generation_config: Literal["model", "vllm"] = Field(
        "model",
        description="Default sampling: model: the model's generation_config.json (temperature, top_p, "
        "...); vllm: vLLM's neutral ones; requests override them. Either way its eos_token_id list "
        "(turn ends) stops.",
    )
    max_loras: int = Field(4, ge=1, description="Adapters active in one batch.")
    max_cpu_loras: int | None = Field(
        None,
        ge=1,
        description="Adapters kept loaded in host memory (least recently used out); more adapters "
        "than this load from disk on use. Default: max_loras.",
    )
    max_lora_rank: int = Field(
        16, description=f"Largest adapter rank accepted; one of {', '.join(map(str, LORA_RANKS))}."
    )
    kv_cache_gb: int = Field(1, ge=1, description="CPU engine only: KV cache size (VLLM_CPU_KVCACHE_SPACE).")
    enforce_eager: bool = Field(
        False,
        description="Run the model eagerly (no torch.compile warm-up, no CUDA "
        "graphs): the engine starts sooner but decodes slower. For bring-up, debugging, "
        "or engines whose speed does not matter.",
    )
    niceness: int = Field(
        0,
        ge=-20,
        le=19,
        description="Scheduling priority of the engine's processes "
        "(vLLM's server, engine core, workers) instead of Ray's worker niceness 15. "
        "Lowering it needs root or CAP_SYS_NICE, else the replica logs a warning.",
    )
    startup_timeout_s: int = Field(600, ge=10, description="How long an engine may take to become healthy.")
    extra_args: list[str] = Field(
        default_factory=list,
        description="More vLLM server flags, e.g. ['--max-logprobs', '5']. Checked against vLLM's own "
        "parser at config load: unknown flags, bad values and flags the fields above set are refused.",
    )
    tool_call_parser: str | None = Field(
        "auto",
        description="vLLM's parser for the model's tool calls (enables tool_choice 'auto'). auto: "
        "picked from the model's chat template at engine start; or a vLLM parser name; none: tools refused.",
    )

    reasoning_parser: str | None = Field(
        "auto",
        description="vLLM's parser that returns a model's thinking as `reasoning`, apart from `content`. "
        "auto: picked from the chat template at engine start; or a vLLM parser name; none: no parser.",
    )

    @field_validator("quantization", "kv_cache_dtype")
    @classmethod
    def _vllm_choice(cls, value: str | None, info):
        choices = QUANTIZATIONS if info.field_name == "quantization" else KV_CACHE_DTYPES
        if value is not None and value not in choices:
            raise ValueError(f"{value!r} is not one of vLLM's: {', '.join(choices)}")
        return value

    @field_validator("max_lora_rank")
    @classmethod
    def _lora_rank(cls, value: int) -> int:
        if value not in LORA_RANKS:
            raise ValueError(
                f"vLLM accepts a max_lora_rank of {', '.join(map(str, LORA_RANKS))}; got {value}"
            )
        return value

    @field_validator("extra_args")
    @classmethod
    def _vllm_accepts(cls, value: list[str], info):
        """The engine's whole command line, these flags at its end, as vLLM's parser reads it
        (imports vLLM, about 10 s, only for a config that has extra_args)."""
        if not value or any(f not in info.data for f in ("max_model_len", "dtype", "max_lora_rank")):
            return value  # nothing to check, or an earlier field is already refused
        from serve.engine_args import check_extra_args
        from serve.vllm_process import engine_flags

        command = engine_flags(
            dict(info.data),
            model_dir="/model",
            served_name="model",
            adapters={},
            host="127.0.0.1",
            port=8000,
            embedded_gateway=False,
            tool_call_parser=None,
            reasoning_parser=None,
        )
        try:
            check_extra_args(command, value)
        except ImportError as exc:
            raise ValueError(f"cannot check extra_args: vLLM does not import here ({exc})") from None
        return value

    @field_validator("tool_call_parser", "reasoning_parser")
    @classmethod
    def _known_parser(cls, value: str | None, info):
        plugin_flag, list_names, kind, off = PARSER_KINDS[info.field_name]
        if value in (None, "auto", "none") or plugin_flag in info.data.get("extra_args", []):
            return value
        from serve import engine_args

        names = getattr(engine_args, list_names)()
        if value not in names:
            raise ValueError(
                f"{value!r} is not one of vLLM's {kind} ({', '.join(names)}); or 'auto' to "
                f"pick it from the model's chat template, 'none' {off}"
            )
        return value


class AutoscalingSettings(StrictConfig):
    """Engine replicas that follow the load (Ray Serve autoscaling, sized by the
    engines' own count of running + waiting requests: clients reach the replicas
    directly, so Serve's request counting never sees them)."""

    min_replicas: int = Field(
        1,
        ge=1,
        description="Fewest engine replicas. At least 1: the gateway runs "
        "inside the engines, so with none nothing would accept a connection.",
    )
    max_replicas: int = Field(ge=1, description="Most engine replicas (GPU plans reserve this many).")
    target_ongoing_requests: float | None = Field(
        None,
        gt=0,
        description="Load each replica should carry: vLLM's running + waiting requests, "
        "averaged over look_back_s; replicas = ceil(total load / this). Default: engine.max_num_seqs.",
    )
    upscale_delay_s: float = Field(
        30.0, ge=0, description="How long the load must call for more replicas before one is added."
    )
    downscale_delay_s: float = Field(
        300.0,
        ge=0,
        description="How long the load must call for fewer replicas before one is removed (it drains first).",
    )
    look_back_s: float = Field(30.0, ge=2, le=600, description="Window the load is averaged over.")

    @model_validator(mode="after")
    def _bounds(self):
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) is below min_replicas ({self.min_replicas})"
            )
        return self


class ModelSpec(StrictConfig):
    """A base model and the adapters served with it."""

    name: str = Field(description="Model name clients send to use the base model.", pattern=NAME)
    source: str = Field(description="registry:NAME@ALIAS, registry:NAME/VERSION, or a local/shared folder.")
    task: Literal["generate", "embed"] = Field(
        "generate",
        description="generate: chat and completions; embed: /v1/embeddings (vLLM's pooling "
        "runner, converting a decoder model to an embedding model where needed).",
    )
    adapters: list[AdapterSpec] = Field(default_factory=list, description="LoRA adapters on this base.")
    adapter_alias: str | None = Field(
        None,
        pattern=NAME,
        description="Also serve each registered adapter of this base whose alias of this name is set, "
        "under its registered name; one aliased later is served without a redeploy.",
    )
    engine: EngineSettings = Field(default_factory=EngineSettings, description="vLLM engine settings.")
    num_replicas: int | None = Field(
        None,
        ge=1,
        description="A fixed number of engine replicas (Ray Serve "
        "owns them); default 1. Or set autoscaling instead.",
    )
    autoscaling: AutoscalingSettings | None = Field(
        None, description="Replica bounds that follow the load (instead of num_replicas)."
    )
    cpus_per_replica: float = Field(1, gt=0, description="Ray CPUs reserved per replica.")

    @field_validator("autoscaling")
    @classmethod
    def _one_way_to_size(cls, value, info):
        if value is not None and info.data.get("num_replicas") is not None:
            raise ValueError(
                "num_replicas and autoscaling are mutually exclusive: keep num_replicas for a "
                "fixed count, or autoscaling (min_replicas/max_replicas) for bounds, not both"
            )
        return value

    @property
    def max_replicas(self) -> int:
        """The most engine replicas this model may run."""
        return self.autoscaling.max_replicas if self.autoscaling else (self.num_replicas or 1)

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        return _check_source(value)

    @model_validator(mode="after")
    def _unique_names(self):
        names = [self.name] + [a.name for a in self.adapters]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"model names must be unique; repeated: {sorted(dupes)}")
        cpu_loras = self.engine.max_cpu_loras
        if cpu_loras is not None and cpu_loras < self.engine.max_loras:
            raise ValueError(
                f"engine.max_cpu_loras ({cpu_loras}) must be at least engine.max_loras ({self.engine.max_loras})"
            )
        if self.adapter_alias and not self.source.startswith("registry:"):
            raise ValueError(
                "adapter_alias needs a registry source (registry:NAME@ALIAS): adapters name their base by its version"
            )
        if self.task == "embed" and (self.adapters or self.adapter_alias):
            raise ValueError("an embedding model (task: embed) takes no adapters")
        if self.task == "embed" and self.engine.tool_call_parser not in (None, "auto", "none"):
            raise ValueError("engine.tool_call_parser: an embedding model (task: embed) has no tool calls")
        if self.task == "embed" and self.engine.reasoning_parser not in (None, "auto", "none"):
            raise ValueError("engine.reasoning_parser: an embedding model (task: embed) does not reason")
        return self


class RoutingSettings(StrictConfig):
    """How each gateway picks the engine replica for a request (serve.gateway.router)."""

    by: Literal["affinity", "connection"] = Field(
        "affinity",
        description="affinity: per request, the replica with the longest cached prompt prefix, then "
        "the adapter, then the least loaded; connection: the replica whose process took the connection.",
    )
    max_imbalance: int = Field(
        4,
        ge=0,
        description="Affinity never sends a request to a replica with more than this many requests "
        "in flight above the least loaded one.",
    )
    block_chars: int = Field(
        64, ge=8, le=4096, description="Prompt characters per block of the gateways' prefix index."
    )


class GatewaySettings(StrictConfig):
    """The gateway in front of the app's engines."""

    placement: Literal["embedded", "separate"] = Field(
        "embedded",
        description="embedded: inside every engine replica's vLLM server, answering its models "
        "in-process (the fastest). separate: its own Serve deployment, relaying to the engines over HTTP.",
    )
    num_replicas: int = Field(
        1,
        ge=1,
        description="Gateway replicas when placement is separate (they share the app's port on a node).",
    )
    cpus_per_replica: float = Field(
        0.5, gt=0, description="Ray CPUs reserved per gateway replica (placement: separate)."
    )
    db_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the keys/quota/audit database; "
        "default: SQLite in the Sekisho home. PostgreSQL for a team.",
    )
    limits: RequestLimits = Field(default_factory=RequestLimits, description="Request limits.")
    routing: RoutingSettings = Field(
        default_factory=RoutingSettings, description="How a request picks its engine replica."
    )
    record_text: bool = Field(
        False, description="Store prompt and response text in the audit log (off: only their SHA-256)."
    )
    audit_anchor_path: str | None = Field(
        None,
        description="Where `sekisho audit anchor` writes the audit chain's head, out of the database "
        "writers' reach: a file, syslog://HOST:PORT (UDP) or syslog+tcp://HOST:PORT.",
    )

    @field_validator("audit_anchor_path")
    @classmethod
    def _anchor_target(cls, value: str | None) -> str | None:
        from serve.gateway.anchors import parse_target

        if value is not None:
            parse_target(value)
        return value


class ServeAppConfig(StrictConfig):
    """A Serve app: models behind one OpenAI-compatible endpoint."""

    name: str = Field(description="Serve application name.", pattern=r"^[A-Za-z0-9_-]+$")
    host: str = Field("127.0.0.1", description="Address the HTTP endpoint binds to.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port of the endpoint.")
    models: list[ModelSpec] = Field(min_length=1, description="Base models (each with adapters) to serve.")
    gateway: GatewaySettings = Field(default_factory=GatewaySettings, description="Gateway settings.")
    follow_aliases_every_s: float = Field(
        5.0,
        ge=0.5,
        le=300,
        description="How often engines re-read the "
        "registry aliases they follow (`sekisho serve reload`: at once). A "
        "moved base-model alias rolls the engines (embedded placement).",
    )

    @model_validator(mode="after")
    def _unique_across_models(self):
        names = [n for m in self.models for n in [m.name] + [a.name for a in m.adapters]]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"model names must be unique across the app; repeated: {sorted(dupes)}")
        return self

    @model_validator(mode="after")
    def _one_database_across_nodes(self):
        """An app whose engines span nodes needs one database every gateway reaches:
        SQLite is a file of one node (and unsafe on a network file system)."""
        url = self.gateway.db_url or os.environ.get("SEKISHO_GATEWAY_DB") or "sqlite:"
        spanning = [i for i, m in enumerate(self.models) if m.engine.pipeline_parallel_size > 1]
        if not spanning or not url.startswith("sqlite"):
            return self
        i, given = spanning[0], "db_url" in self.gateway.model_fields_set
        stages = self.models[i].engine.pipeline_parallel_size
        msg = (
            f"{stages} pipeline stages put each replica of models.{i} on {stages} nodes, and every "
            f"node's gateway must keep keys, quotas and "
            f"the audit chain in one database, but gateway.db_url is "
            f"{'SQLite' if given else 'unset (SQLite in the Sekisho home)'}. PostgreSQL is required: set "
            f"gateway.db_url: postgresql+psycopg://USER@HOST/DB (password in ~/.pgpass)"
        )
        loc = ("gateway", "db_url") if given else ("models", i, "engine", "pipeline_parallel_size")
        error = InitErrorDetails(type=PydanticCustomError("value_error", msg), loc=loc, input=None)
        raise ValidationError.from_exception_data(type(self).__name__, [error])

    @field_validator("models")
    @classmethod
    def _resolve_paths(cls, models, info):
        base = (info.context or {}).get("config_dir")
        if not base:
            return models

        def fix(src: str) -> str:
            if src.startswith("registry:") or Path(src).is_absolute():
                return src
            return str(Path(base, src))

        return [
            m.model_copy(
                update={
                    "source": fix(m.source),
                    "adapters": [a.model_copy(update={"source": fix(a.source)}) for a in m.adapters],
                }
            )
            for m in models
        ]
