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

import os
import runpy

SERVER_MODULE = "vllm.entrypoints.openai.api_server"
START_ENV = "SEKISHO_ENGINE_CORE_START"


def _fork_the_engine_core() -> None:
    """Keep vLLM's CPU platform settings but start the engine core by fork."""
    from vllm.platforms.cpu import CpuPlatform

    configure = CpuPlatform.check_and_update_config.__func__

    def check_and_update_config(cls, vllm_config) -> None:
        configure(cls, vllm_config)
        os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "fork"

    CpuPlatform.check_and_update_config = classmethod(check_and_update_config)


def main() -> None:
    if os.environ.get(START_ENV) == "fork":
        _fork_the_engine_core()
    runpy.run_module(SERVER_MODULE, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
