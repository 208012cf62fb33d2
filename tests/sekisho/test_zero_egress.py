"""Zero egress, proven on the main job: every Python process of the run (the
driver, Ray workers, Serve replicas, vLLM engines) recorded its outbound
connection and DNS attempts, and none went beyond loopback. A connection the
test plants on purpose shows up, so the recorder is known to work."""

import os
from pathlib import Path

import pytest

from cluster.egress import HOOK_DIR, LOG_ENV, report

pytestmark = pytest.mark.e2e


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(kv.decode(errors="replace").split("=", 1) for kv in raw if b"=" in kv)


def test_every_engine_process_records_egress(main_job):
    engines = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"serve.vllm_main" in cmd:  # vLLM's OpenAI server (serve.vllm_process)
                engines.append(int(proc.name))
    assert engines, "the vLLM engine process should be running"
    for pid in engines:
        env = _environ(pid)
        assert env.get(LOG_ENV) and str(HOOK_DIR) in env.get("PYTHONPATH", "")


def test_nothing_left_the_host_and_the_recorder_sees_a_planted_attempt(main_job, sekisho_home):
    import ray

    log = sekisho_home / "egress.jsonl"
    assert report(log) == [], f"outbound attempts during the main job: {report(log)}"

    @ray.remote
    def plant() -> int:
        import socket

        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.connect(("10.255.255.1", 9))  # never reachable here: loopback-only namespace
        except OSError:
            pass
        return os.getpid()

    worker_pid = ray.get(plant.remote())
    entries = report(log)
    assert [(e["host"], e["port"], e["pid"]) for e in entries] == [("10.255.255.1", 9, worker_pid)]
    log.unlink()  # later tests start from a clean log again
