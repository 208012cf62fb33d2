"""The serve tests' second app, deployed once per session beside the demo's: a
chat engine with autoscaling bounds (1-2 replicas) and an embedding engine
behind one port. tests/serve/test_autoscaling.py scales the chat engine up and
back down; tests/serve/test_multi_model_app.py routes between the two engines."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

MIGRATE = Path("/proc/sys/net/ipv4/tcp_migrate_req")
MULTI_APP = "multi"
CHAT, EMBED = "tiny-chat", "tiny-embed"
AUTOSCALING = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2,
               "upscale_delay_s": 2, "downscale_delay_s": 10, "look_back_s": 5}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def multi_app(main_job, sekisho_home):
    """(base_url, key for both models) of the app `multi`."""
    from ray import serve

    from serve import ServeAppConfig, deploy, resolve_app
    from serve.gateway import KeyStore

    if MIGRATE.exists() and MIGRATE.read_text().strip() != "1":
        MIGRATE.write_text("1\n")  # queued connections of a leaving replica move to the other (this netns)
    engine = {"max_model_len": 256, "max_num_seqs": 8, "dtype": "float32"}
    cfg = ServeAppConfig.model_validate({
        "name": MULTI_APP, "port": _free_port(),
        "models": [
            {"name": CHAT, "source": "registry:sekisho-tiny-base@production", "engine": engine,
             "cpus_per_replica": 0.5, "autoscaling": AUTOSCALING},
            {"name": EMBED, "task": "embed", "source": "registry:sekisho-tiny-base@production",
             "engine": {**engine, "max_num_seqs": 4}, "cpus_per_replica": 0.5},
        ]})
    base_url = deploy(resolve_app(cfg, sekisho_home / "serve-cache-multi"))
    key = KeyStore().create(f"multi-{time.time_ns()}", [CHAT, EMBED])
    yield base_url, key
    serve.delete(MULTI_APP)
