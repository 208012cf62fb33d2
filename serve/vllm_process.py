"""vLLM's OpenAI server as a process of an engine replica: its command line,
and what runs in the process before vLLM (die with the replica, take the
engine's niceness)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys


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


def vllm_command(
    model_dir: str,
    served_name: str,
    adapters: dict[str, str],
    engine: dict,
    host: str,
    port: int,
    embedded_gateway: bool = False,
) -> list[str]:
    """The command line of vLLM's OpenAI server for one model and its adapters."""
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
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
        "vllm",
        "--uvicorn-log-level",
        "warning",
        "--disable-uvicorn-access-log",
    ]
    if embedded_gateway:
        cmd += ["--middleware", "serve.gateway.embedded.EmbeddedGateway"]
    if engine.get("autoscaling"):
        cmd += ["--middleware", "serve.autoscaling.EngineLoadEndpoint"]  # the load Serve scales by
    if engine.get("enforce_eager"):
        cmd += ["--enforce-eager"]
    if engine.get("task") == "embed":
        cmd += ["--runner", "pooling", "--convert", "embed"]
    if engine.get("tool_call_parser"):
        cmd += ["--enable-auto-tool-choice", "--tool-call-parser", engine["tool_call_parser"]]
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
