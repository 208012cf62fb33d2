"""The pipeline stages of one engine replica, on as many nodes as it has stages.

A replica of tensor_parallel_size x pipeline_parallel_size GPUs runs vLLM's
multi-node mode (the `mp` executor with --nnodes/--node-rank/--master-addr): stage 0
(vLLM's OpenAI server and the first stage's ranks) is the replica's own vLLM
process; stage k is a headless vLLM (`python -m serve.pipeline_stages`, what
`vllm serve --headless` runs) started by a small Ray actor in bundle k of the
replica's placement group, so Ray gives it that bundle's GPUs
(CUDA_VISIBLE_DEVICES) and the plan's label selectors decide its node
(serve.builder.replica_placement).

Why not vLLM's Ray executor (`--distributed-executor-backend ray`): it places its
workers in `ray.util.get_current_placement_group()`, which only a Ray actor has,
and the replica runs vLLM's server as a subprocess (no API passes a placement
group to one); vLLM's CPU build has no Ray device key either (ray_utils.
initialize_ray_cluster: "current platform cpu does not support ray"), so nothing
of that path could run in CI. The mp multi-node mode is what vLLM itself picks
for CUDA across nodes (ParallelConfig: nnodes > 1 -> mp) and it runs on the CPU
build, across hosts, as tests/cluster/test_multinode.py shows.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from serve.vllm_process import LAUNCHER

STAGE_MODULE = "serve.pipeline_stages"


def multi_node_args(stages: int, rank: int, master_addr: str, master_port: int) -> list[str]:
    """vLLM's flags for node `rank` of a replica spread over `stages` nodes."""
    return [
        "--distributed-executor-backend",
        "mp",
        "--nnodes",
        str(stages),
        "--node-rank",
        str(rank),
        "--master-addr",
        master_addr,
        "--master-port",
        str(master_port),
    ]


def stage_commands(cmd: list[str], stages: int, master_addr: str, master_port: int) -> list[list[str]]:
    """The command of every stage from the replica's single-node vLLM command:
    [0] the OpenAI server (stage 0), [k] the headless stage k. Every stage gets the
    same engine flags, so their engine configs agree."""
    cmd = list(cmd)
    if "--pipeline-parallel-size" not in cmd:
        cmd += ["--pipeline-parallel-size", str(stages)]
    out = [cmd + multi_node_args(stages, 0, master_addr, master_port)]
    module = cmd.index(LAUNCHER)
    for rank in range(1, stages):
        headless = cmd[:module] + [STAGE_MODULE] + cmd[module + 1 :]
        out.append(headless + multi_node_args(stages, rank, master_addr, master_port) + ["--headless"])
    return out


class PipelineStage:
    """A Ray actor that runs one headless vLLM stage on its node and stops it with
    itself (the process dies with the actor, even on SIGKILL)."""

    def __init__(self, cmd: list[str], env: dict[str, str]):
        import ray.util

        from foundation import offline
        from serve.vllm_process import engine_child_env

        self.node_ip = ray.util.get_node_ip_address()
        offline.apply(self.node_ip)  # vLLM on this node reports this node's address
        self.log_path = Path(tempfile.mkstemp(prefix="sekisho-vllm-stage-", suffix=".log")[1])
        self.proc = subprocess.Popen(
            cmd,
            env={**os.environ, **env, **engine_child_env(int(env.get("SEKISHO_STAGE_NICENESS", "0")))},
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
        )

    def where(self) -> dict:
        """The node address and process id of this stage."""
        return {"ip": self.node_ip, "pid": self.proc.pid, "exit": self.proc.poll()}

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start_stages(cmd: list[str], engine: dict, master_addr: str) -> tuple[list[str], list]:
    """Start stages 1..P-1 of this replica in bundles 1..P-1 of its placement group.

    Args:
        cmd: the replica's single-node vLLM command (serve.vllm_process.vllm_command).
        engine: the engine settings serve.builder passed (pipeline_parallel_size,
            kv_cache_gb, niceness, stage_gpus, stage_cpus).
        master_addr: this replica's node address (stage 0 listens there).

    Returns:
        Stage 0's command, and the stage actors (handles).
    """
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from foundation.net import free_port

    stages = engine["pipeline_parallel_size"]
    commands = stage_commands(cmd, stages, master_addr, free_port(master_addr))
    pg = ray.util.get_current_placement_group()
    env = {
        "VLLM_CPU_KVCACHE_SPACE": str(engine["kv_cache_gb"]),
        "SEKISHO_STAGE_NICENESS": str(engine["niceness"]),
    }
    actor = ray.remote(PipelineStage)
    handles = [
        actor.options(
            num_cpus=engine["stage_cpus"],
            num_gpus=engine["stage_gpus"],
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=rank),
        ).remote(commands[rank], env)
        for rank in range(1, stages)
    ]
    return commands[0], handles


def stop_stages(handles: list) -> None:
    """Stop the stages' vLLM processes, then their actors."""
    import ray

    for h in handles:
        try:
            ray.get(h.stop.remote(), timeout=30)
        except Exception:  # already gone with its node
            pass
        ray.kill(h)


def main() -> None:  # pragma: no cover - runs as the stage's process
    """Run one headless stage: vLLM's own `serve --headless` path on this node."""
    from serve.vllm_main import adopt_engine_settings

    adopt_engine_settings()
    from vllm.entrypoints.cli.serve import run_headless
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    cli_env_setup()
    args = make_arg_parser(FlexibleArgumentParser(description="A headless vLLM pipeline stage.")).parse_args(
        sys.argv[1:]
    )
    args.api_server_count = 0  # what `vllm serve --headless` sets: no API server here
    validate_parsed_serve_args(args)
    run_headless(args)


if __name__ == "__main__":
    main()
