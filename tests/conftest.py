"""Shared fixtures. Zero-egress switches are applied before any component is
imported; under CI the suite must run in a network namespace with only loopback
(`make test` does that), and fails rather than skips if it does not."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

# A Ray call made with no cluster connected (a gateway's table refresher thread after
# the session's cluster stopped) would start a private cluster of its own, which
# outlives every test: here it fails instead.
os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")

from foundation import offline  # noqa: E402 - after the switch above, before Ray is imported

offline.apply()
# Ray Train's controller polls its workers every 2 s and takes one report per poll, so
# a job of the suite's size ended 6 s after its last checkpoint, idle (0.6 s at 0.5 s,
# measured on the demo's job); the suite runs 20-odd jobs. Every Ray process the tests
# start inherits it: their clusters are started from this process or its children.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
# The Sekisho home defaults to ~/.sekisho and MLflow's own default store is
# ./mlflow.db: a test that asks for neither `sekisho_home` nor a store of its own
# must not write into the user's home or the checkout.
os.environ["SEKISHO_HOME"] = tempfile.mkdtemp(prefix="sekisho-test-home-")

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "samples" / "internal_faq_ja.jsonl"


def pytest_sessionstart(session):
    interfaces = sorted(name for _, name in socket.if_nameindex())
    if os.environ.get("CI") == "true" and interfaces != ["lo"]:
        raise pytest.UsageError(
            f"CI must run the tests in a network namespace with only loopback "
            f"(found interfaces {interfaces}); run them through `make test`."
        )


# Marks every process this test session starts (they inherit it), Ray's daemons included.
os.environ.setdefault("SEKISHO_TEST_SESSION", uuid.uuid4().hex)


def _ray_clusters() -> dict[int, str]:
    """The GCS processes this test session started: pid -> their log folder (the
    cluster's session). Another suite's, on the same host, is not this one's concern."""
    out = {}
    mark = f"SEKISHO_TEST_SESSION={os.environ['SEKISHO_TEST_SESSION']}".encode()
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0") if proc.name.isdigit() else []
            ours = bool(cmd) and cmd[0].endswith(b"/gcs_server") and mark in (proc / "environ").read_bytes()
        except OSError:
            continue
        if ours:
            logs = next((c[len(b"--log_dir=") :] for c in cmd if c.startswith(b"--log_dir=")), b"")
            out[int(proc.name)] = logs.decode(errors="replace")
    return out


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """After the last test of a folder, no Ray cluster but the session's own (the demo's,
    this process's) may still run: one left behind takes CPU from every later test,
    and Ray Train's cleaner in later jobs fails on finding two clusters."""
    yield
    if nextitem is not None and Path(nextitem.path).parent == Path(item.path).parent:
        return
    own = ""
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        own = sys.modules["ray"]._private.worker.global_worker.node.get_session_dir_path()
    deadline = time.monotonic() + 30  # a cluster just stopped takes a moment to exit
    while True:
        left = {pid: logs for pid, logs in _ray_clusters().items() if not (own and logs.startswith(own))}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if left:
        pytest.fail(
            f"a Ray cluster outlives the tests of {Path(item.path).parent}: GCS {left}", pytrace=False
        )


@pytest.fixture(autouse=True)
def _sekisho_home_kept():
    """An in-process CLI call with `--home` points this process's Sekisho home
    elsewhere; the tests after it must find the session's home where it was."""
    before = os.environ.get("SEKISHO_HOME")
    yield
    if before is None:
        os.environ.pop("SEKISHO_HOME", None)
    else:
        os.environ["SEKISHO_HOME"] = before


@pytest.fixture(autouse=True)
def _mlflow_uris_restored():
    """A test may point this process's MLflow client at another store (a team server,
    a PostgreSQL database, an import's registry); later tests must find it where it
    was. `mlflow.set_*_uri` also write MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI,
    which Sekisho takes for the user's choice: they are put back too."""
    import mlflow

    tracking, registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    yield
    mlflow.set_tracking_uri(tracking)
    mlflow.set_registry_uri(registry)
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session", autouse=True)
def _checkout_stays_clean():
    """No test leaves state in the checkout (MLflow's own default store is
    ./mlflow.db with ./mlartifacts; Sekisho's goes under the Sekisho home)."""
    stray = ("mlflow.db", "mlartifacts", "mlruns", ".sekisho")
    before = {name for name in stray if (REPO / name).exists()}
    yield
    after = {name for name in stray if (REPO / name).exists()}
    assert after <= before, f"tests left {sorted(after - before)} in the checkout {REPO}"


@pytest.fixture(scope="session")
def sekisho_home(tmp_path_factory) -> Path:
    """One Sekisho home (MLflow SQLite store, artifacts, Ray token) per test session."""
    home = tmp_path_factory.mktemp("sekisho-home")
    os.environ["SEKISHO_HOME"] = str(home)
    os.environ.pop("SEKISHO_MLFLOW_URI", None)
    return home


@pytest.fixture(scope="session")
def sample_conversations():
    from data import read_chat_jsonl

    return read_chat_jsonl(SAMPLE).conversations


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, sample_conversations) -> Path:
    """A tiny Llama built offline (seconds), shared by the whole session."""
    from train import build_tiny_model

    corpus = [m["content"] for conv in sample_conversations for m in conv]
    return build_tiny_model(tmp_path_factory.mktemp("tiny-base"), corpus)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def main_job(sekisho_home):
    """The demo's main job, run once per session and left serving (one Ray
    cluster, one Serve app, one vLLM engine for the whole suite)."""
    from cluster import egress
    from cluster.local import stop
    from sekisho.demo import run_demo

    # Every Python process from here on (Ray workers, vLLM engines) records
    # outbound attempts; tests/sekisho/test_zero_egress.py checks the log.
    egress.install(sekisho_home / "egress.jsonl")
    result = run_demo(sekisho_home, keep_serving=True, port=free_port())
    yield result
    stop()


@pytest.fixture(scope="session")
def train_prefixed_adapter(sekisho_home, sample_conversations):
    """A function that trains a new demo-ja-adapter version whose answers all start
    with `prefix` (on base `base_ref`), stores and registers it as training does
    (airlock.register_trained) with its lineage and no alias; returns the version."""

    def train(name: str, prefix: str, base_ref: str, note: str):
        import json

        from airlock import load, register_trained
        from data import DatasetConfig, prepare
        from train import LoraJobConfig, LoraRecipe

        rows = sekisho_home / f"{name}.jsonl"
        rows.write_text(
            "".join(
                json.dumps(
                    {"messages": [c[0], {"role": "assistant", "content": prefix + c[-1]["content"]}]},
                    ensure_ascii=False,
                )
                + "\n"
                for c in sample_conversations
            ),
            encoding="utf-8",
        )
        base = load(base_ref)
        prepare(DatasetConfig(name=name, path=str(rows)), base.path, sekisho_home / f"{name}-data")
        job = LoraJobConfig(
            name=name,
            base_model=base_ref,
            dataset="x.yaml",
            register_as="demo-ja-adapter",
            optim={"steps": 400, "warmup_steps": 10},
        )
        recipe = LoraRecipe(job)
        recipe.setup(base.path, sekisho_home / f"{name}-data" / "tokens.parquet")
        recipe.train()
        out = recipe.save(sekisho_home / f"{name}-adapter")
        return register_trained(
            "demo-ja-adapter", out, kind="adapter", tags={"base_model_version": base.ref, "note": note}
        ).version

    return train


@pytest.fixture(scope="session")
def qa(sample_conversations):
    return [(c[0]["content"], c[-1]["content"]) for c in sample_conversations]


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test PostgreSQL (started by `make test` through .ci/postgres). Under CI
    a missing database fails the test; elsewhere it skips."""
    url = os.environ.get("SEKISHO_TEST_PG_URL")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail("SEKISHO_TEST_PG_URL is not set: run the tests through `make test`")
        pytest.skip("no test PostgreSQL (run through `make test`)")
    return url
