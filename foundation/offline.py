"""Zero egress: the switches that stop every component from phoning home.

Each value is the exact one its component accepts (vLLM wants "1", MLflow wants
"true"; docs/design-notes.md lists what each switch stops). `apply()` must run before Ray, vLLM, MLflow, transformers or
huggingface_hub are imported, because several of them read these at import time.
It overrides whatever the user's environment says: in a closed network there is
no opting back in.
"""

from __future__ import annotations

import os

OFFLINE_ENV: dict[str, str] = {
    # Ray
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_USAGE_STATS_PROMPT_ENABLED": "0",
    # A `ray start` cluster reports "usage stats disabled" to this URL even when
    # disabled; point it at a closed loopback port so nothing leaves the host.
    "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:9/usage",
    # vLLM (exactly "1")
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_DO_NOT_TRACK": "1",
    "DO_NOT_TRACK": "1",
    # vLLM's get_ip() connects a UDP socket to 8.8.8.8 unless this is set.
    "VLLM_HOST_IP": "127.0.0.1",
    # MLflow >= 3.2 telemetry (exactly "true")
    "MLFLOW_DISABLE_TELEMETRY": "true",
    # Hugging Face hub, transformers, datasets
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    # LangChain/LangSmith tracing (clients of the endpoint, and the tests)
    "LANGCHAIN_TRACING_V2": "false",
    "LANGSMITH_TRACING": "false",
    # Experiment trackers some libraries enable when they find them installed.
    "WANDB_MODE": "disabled",
    "GRADIO_ANALYTICS_ENABLED": "False",
}


def apply(host_ip: str | None = None) -> dict[str, str]:
    """Set every switch in this process's environment (inherited by Ray workers,
    vLLM engine processes and MLflow servers started from it).

    Args:
        host_ip: the address vLLM should report for this node (the node's
            cluster-internal address on a multi-node cluster); loopback by default.

    Returns:
        The variables that were set.
    """
    env = dict(OFFLINE_ENV)
    if host_ip:
        env["VLLM_HOST_IP"] = host_ip
    elif os.environ.get("VLLM_HOST_IP"):
        env["VLLM_HOST_IP"] = os.environ["VLLM_HOST_IP"]
    os.environ.update(env)
    return env


def missing() -> dict[str, str]:
    """The switches that are not in force in this process: name -> expected value."""
    return {k: v for k, v in OFFLINE_ENV.items() if k != "VLLM_HOST_IP" and os.environ.get(k) != v}
