"""Zero egress on the running cluster: a small workload on every node, in
workers that record their outbound connection and DNS attempts
(cluster/egress.py), and a planted attempt per node that must show up, so the
recorder is known to work there."""

from __future__ import annotations

import uuid

import ray

from cluster.egress import HOOK_DIR, LOG_ENV
from cluster.preflight.probe import on_node
from cluster.preflight.result import CheckResult, failed, passed

PLANTED = ("10.255.255.1", 9)  # a UDP "connect" sends nothing; only the recorder sees it


def workload() -> str:
    """What a node's workers do at start of a job: the platform's libraries, a
    tokenizer, the MLflow client; then the planted attempt."""
    import socket

    import huggingface_hub  # noqa: F401
    import mlflow  # noqa: F401
    import transformers  # noqa: F401

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(PLANTED)
    except OSError:
        pass  # unreachable in a loopback-only namespace: the attempt is what counts
    finally:
        s.close()
    return ray.util.get_node_ip_address()


def read_log(path: str) -> list[dict]:
    import json
    import os

    if not os.path.exists(path):
        return []
    with open(path) as f:
        entries = [json.loads(line) for line in f if line.strip()]
    os.unlink(path)
    return entries


def egress(alive: dict[str, str]) -> CheckResult:
    """`alive`: address -> node id of the nodes to check."""
    name = "zero egress"
    log = f"/tmp/sekisho-egress-{uuid.uuid4().hex}.jsonl"
    env = {"env_vars": {LOG_ENV: log, "PYTHONPATH": f"{HOOK_DIR}:${{PYTHONPATH}}"}}
    ray.get([on_node(workload, nid, runtime_env=env).remote() for nid in alive.values()], timeout=600)
    logs = dict(
        zip(
            alive,
            ray.get(
                [on_node(read_log, nid, runtime_env=env).remote(log) for nid in alive.values()], timeout=120
            ),
        )
    )
    unplanted, blind = [], []
    for ip, entries in logs.items():
        planted = [e for e in entries if (e["host"], e["port"]) == PLANTED]
        unplanted += [
            f"{ip}: {e['event']} {e['host']}:{e['port']} from {e['where']}"
            for e in entries
            if (e["host"], e["port"]) != PLANTED
        ]
        if not planted:
            blind.append(ip)
    if unplanted:
        return failed(
            name,
            f"{len(unplanted)} outbound attempts: " + "; ".join(unplanted[:5]),
            "switch the library off (cluster/offline.py) or report it",
        )
    if blind:
        return failed(
            name,
            f"the planted control did not show on {', '.join(blind)}: the recorder is not active there",
            f"make {HOOK_DIR} exist on every node (install Sekisho in the shared environment)",
        )
    return passed(
        name, f"0 outbound attempts on {len(logs)} nodes; planted control seen on {len(logs)}/{len(logs)}"
    )
