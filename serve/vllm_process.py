"""vLLM's OpenAI server as a process of an engine replica: its command line,
and what runs in the process before vLLM (die with the replica, take the
engine's niceness)."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

from serve.tool_parsers import resolve_tool_call_parser


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Kill the engine if the replica process dies, even by SIGKILL (Linux prctl)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def take_niceness(niceness: int) -> None:
    """Run the calling thread (and what it starts from now on) at `niceness`; where
    lowering it is not allowed, keep the current one (the replica warns)."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, niceness)
    except OSError:
        pass


def engine_preexec(niceness: int):
    """What runs in the engine's process before vLLM: die with the replica, and
    take the engine's own scheduling priority (its children inherit it)."""

    def setup() -> None:  # pragma: no cover - runs in the child
        _die_with_parent()
        take_niceness(niceness)

    return setup


SERVER_MODULE = "vllm.entrypoints.openai.api_server"
# EngineSettings fields passed to vLLM as `--flag value` when set (None: vLLM's default).
OPTIONAL_FLAGS = {
    "gpu_memory_utilization": "--gpu-memory-utilization",
    "quantization": "--quantization",
    "kv_cache_dtype": "--kv-cache-dtype",
    "max_num_batched_tokens": "--max-num-batched-tokens",
}
GENERATION_CONFIG = {"model": "auto", "vllm": "vllm"}  # EngineSettings.generation_config -> vLLM's


def vllm_command(
    model_dir: str,
    served_name: str,
    adapters: dict[str, str],
    engine: dict,
    host: str,
    port: int,
    embedded_gateway: bool = False,
) -> list[str]:
    """The command line of vLLM's OpenAI server for one model and its adapters; a
    tool-call parser of "auto" is picked from the model folder here (and logged)."""
    _log_to_stderr()
    parser = resolve_tool_call_parser(
        engine.get("tool_call_parser"), model_dir, engine.get("task", "generate")
    )
    args = engine_flags(
        engine,
        model_dir=model_dir,
        served_name=served_name,
        adapters=adapters,
        host=host,
        port=port,
        embedded_gateway=embedded_gateway,
        tool_call_parser=parser,
    )
    return [sys.executable, "-m", SERVER_MODULE, *args, *engine.get("extra_args", [])]


def engine_flags(
    engine: dict,
    *,
    model_dir: str,
    served_name: str,
    adapters: dict[str, str],
    host: str,
    port: int,
    embedded_gateway: bool,
    tool_call_parser: str | None,
) -> list[str]:
    """vLLM's flags for the engine settings (all but `extra_args`), the tool-call
    parser already resolved."""
    cmd = [
        "--model",
        model_dir,
        "--served-model-name",
        served_name,
        "--host",
        host,
        "--port",
        str(port),
        "--max-model-len",
        str(engine["max_model_len"]),
        "--max-num-seqs",
        str(engine["max_num_seqs"]),
        "--tensor-parallel-size",
        str(engine["tensor_parallel_size"]),
        "--dtype",
        engine["dtype"],
        "--generation-config",
        GENERATION_CONFIG[engine.get("generation_config", "model")],
        "--uvicorn-log-level",
        "warning",
        "--disable-uvicorn-access-log",
    ]
    if engine.get("pipeline_parallel_size", 1) > 1:
        cmd += ["--pipeline-parallel-size", str(engine["pipeline_parallel_size"])]
    for field, flag in OPTIONAL_FLAGS.items():
        if engine.get(field) is not None:
            cmd += [flag, str(engine[field])]
    if engine.get("enable_prefix_caching") is not None:
        cmd += [
            "--enable-prefix-caching" if engine["enable_prefix_caching"] else "--no-enable-prefix-caching"
        ]
    if embedded_gateway:
        cmd += ["--middleware", "serve.gateway.embedded.EmbeddedGateway"]
    if engine.get("autoscaling"):
        cmd += ["--middleware", "serve.autoscaling.EngineLoadEndpoint"]  # the load Serve scales by
    # Added last, so it runs first: every route but /health needs the engine key
    # (serve.engine_guard); vLLM's own key guards only /v1, /v2, /inference, /cohere.
    cmd += ["--middleware", "serve.engine_guard.EngineGuard"]
    if engine.get("enforce_eager"):
        cmd += ["--enforce-eager"]
    if engine.get("task") == "embed":
        cmd += ["--runner", "pooling", "--convert", "embed"]
    if tool_call_parser:
        cmd += ["--enable-auto-tool-choice", "--tool-call-parser", tool_call_parser]
    if adapters:
        cmd += [
            "--enable-lora",
            "--max-loras",
            str(engine["max_loras"]),
            "--max-lora-rank",
            str(engine["max_lora_rank"]),
            "--lora-modules",
        ]
        cmd += [f"{name}={path}" for name, path in adapters.items()]
    return cmd


def _log_to_stderr() -> None:
    """Sekisho's lines in the replica (the tool-call parser picked, warnings) go to
    the replica's log: Ray configures only its own loggers there."""
    root = logging.getLogger("sekisho")
    if not root.handlers and root.level == logging.NOTSET:
        handler = logging.StreamHandler()
        handler.setFormatter(
            logging.Formatter(
                "(sekisho pid=%(process)d) %(levelname)s %(asctime)s %(name)s: %(message)s", "%m-%d %H:%M:%S"
            )
        )
        root.addHandler(handler)
        root.setLevel(logging.INFO)
