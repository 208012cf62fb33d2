"""The entry point of an engine's process: vLLM's OpenAI server, run as
`python -m serve.vllm_main ARGS` exactly as `python -m vllm.entrypoints.openai.api_server
ARGS` runs it, with one change on vLLM's CPU build for an engine of one worker.

vLLM's CPU platform sets its multiprocessing start method to `spawn`, for every
process it starts. With one worker (serve.vllm_process.engine_env runs it inside
the engine core), the only process the server starts is the engine core, and a
spawned engine core imports vLLM again before it can load a weight: 6-8 s of every
engine start on two cores (the tiny model's engine, ready in 17.6 s spawned, 11-14 s
forked; answers identical). The spawn guards worker processes that would inherit a
parent's OpenMP threads; the server process runs no OpenMP work before it starts the
engine core, so the engine core is forked (`SEKISHO_ENGINE_CORE_START=fork`, which
engine_env sets only for that case). Everything else is vLLM's own code path.
"""

from __future__ import annotations

import ctypes
import os
import runpy
import signal
import sys

SERVER_MODULE = "vllm.entrypoints.openai.api_server"
START_ENV = "SEKISHO_ENGINE_CORE_START"
# Set by serve.vllm_process.engine_child_env: the replica's pid, the engine's niceness.
PARENT_ENV, NICENESS_ENV = "SEKISHO_ENGINE_PARENT", "SEKISHO_ENGINE_NICENESS"


def take_niceness(niceness: int) -> None:
    """Run the calling thread (and what it starts from now on) at `niceness`; where
    lowering it is not allowed, keep the current one (the replica warns)."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, niceness)
    except OSError:
        pass


def adopt_engine_settings() -> None:
    """Die with the replica, even if it is SIGKILLed (Linux prctl PR_SET_PDEATHSIG),
    and take the engine's niceness (its children inherit it), as the replica set
    them in the environment; a process started otherwise keeps its own."""
    parent = os.environ.pop(PARENT_ENV, None)
    if parent is None:
        return
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != int(parent):  # the replica died before the line above
        sys.exit(1)
    take_niceness(int(os.environ.pop(NICENESS_ENV, "0")))


def _fork_the_engine_core() -> None:
    """Keep vLLM's CPU platform settings but start the engine core by fork."""
    from vllm.platforms.cpu import CpuPlatform

    configure = CpuPlatform.check_and_update_config.__func__

    def check_and_update_config(cls, vllm_config) -> None:
        configure(cls, vllm_config)
        os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "fork"

    CpuPlatform.check_and_update_config = classmethod(check_and_update_config)


def main() -> None:
    adopt_engine_settings()
    if os.environ.get(START_ENV) == "fork":
        _fork_the_engine_core()
    runpy.run_module(SERVER_MODULE, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
