"""Team mode: `sekisho tracking server` runs a real `mlflow server` on a fresh
PostgreSQL database with proxied artifacts and basic auth. Unauthenticated
requests are refused; an authenticated client logs, registers and moves aliases
through it and never sees a storage path; 8 processes logging at once lose no
metric point."""

from __future__ import annotations

import base64
import multiprocessing
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from foundation import ConfigError

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(folder: Path, db_url: str, **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    fields = {
        "backend_store_uri": db_url,
        "artifacts_destination": "shared/mlflow-artifacts",
        "port": free_port(),
        "workers": 2,
        "state_dir": "state",
        "auth_cache_ttl_s": 60,
        **extra,
    }
    path = folder / "team.yaml"
    path.write_text(
        "# Used by: sekisho tracking server (tests)\n" + "".join(f"{k}: {v}\n" for k, v in fields.items())
    )
    return path


@dataclass
class Team:
    url: str
    db_url: str
    config: Path
    artifacts: Path
    state: Path
    printed: list[str]
    password: str
    proc: subprocess.Popen


@pytest.fixture(scope="module")
def team(tmp_path_factory, new_pg_database):
    """The CLI running the team server on a new database; stopped with SIGTERM at the end."""
    root = tmp_path_factory.mktemp("team")
    db_url = new_pg_database()
    cfg = write_config(root / "configs", db_url)
    env = {k: v for k, v in os.environ.items() if k != "SEKISHO_MLFLOW_ADMIN_PASSWORD"}
    env["SEKISHO_HOME"] = str(root / "home")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sekisho", "tracking", "server", str(cfg), "--log", str(root / "server.log")],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=lambda: [*map(lines.put, proc.stdout), lines.put(None)], daemon=True).start()
    printed: list[str] = []
    deadline = time.monotonic() + 240
    while not (printed and printed[-1].startswith("clients:")):
        line = lines.get(timeout=max(1.0, deadline - time.monotonic()))
        assert line is not None, f"the server command exited: {''.join(printed)}"
        printed.append(line.rstrip("\n"))
    state = root / "configs" / "state"
    url = next(line for line in printed if "listening at " in line).split("listening at ")[1].split()[0]
    yield Team(
        url,
        db_url,
        cfg,
        root / "configs" / "shared" / "mlflow-artifacts",
        state,
        printed,
        (state / "admin-password").read_text().strip(),
        proc,
    )
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 143
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "/health", timeout=5)


@pytest.fixture
def as_admin(team, monkeypatch):
    """This process is a client of the team server, logged in as the admin."""
    monkeypatch.setenv("SEKISHO_MLFLOW_URI", team.url)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", team.password)
    return team


def get(url: str, user: str | None = None, password: str | None = None) -> int:
    req = urllib.request.Request(url)
    if user is not None:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_config_is_strict_and_binds_an_internal_address(tmp_path):
    from experiments import TrackingServerConfig
    from sekisho.cli import main

    bad = write_config(tmp_path / "a", "sqlite:///x.db")
    with pytest.raises(ConfigError, match=r"team.yaml:2: backend_store_uri: .*expected postgresql"):
        TrackingServerConfig.from_yaml(bad)
    assert main(["tracking", "server", str(bad)]) == 2
    pg = "postgresql+psycopg://mlflow@db/mlflow"
    with pytest.raises(ConfigError, match=r"team.yaml:8: host: .*binds every interface"):
        TrackingServerConfig.from_yaml(write_config(tmp_path / "b", pg, host="0.0.0.0"))
    with pytest.raises(ConfigError, match=r"admin_pasword: unknown key"):
        TrackingServerConfig.from_yaml(write_config(tmp_path / "c", pg, admin_pasword="x"))
    cfg = TrackingServerConfig.from_yaml(write_config(tmp_path / "d", pg))
    assert cfg.artifacts_destination == str(tmp_path / "d" / "shared" / "mlflow-artifacts")
    assert cfg.host == "127.0.0.1" and all(f.description for f in type(cfg).model_fields.values())


def test_no_default_admin_password(tmp_path, monkeypatch):
    from experiments.tracking_server import (
        TrackingServerConfig,
        admin_credentials,
        server_command,
    )

    monkeypatch.delenv("SEKISHO_MLFLOW_ADMIN_PASSWORD", raising=False)
    cfg = TrackingServerConfig.from_yaml(write_config(tmp_path, "postgresql+psycopg://u@db/m"))
    first = admin_credentials(cfg)
    assert first.generated and len(first.password) >= 24
    assert first.password_file.stat().st_mode & 0o777 == 0o600
    assert first.password_file.parent.stat().st_mode & 0o777 == 0o700
    again = admin_credentials(cfg)
    assert (again.password, again.generated) == (first.password, False)
    other = TrackingServerConfig.from_yaml(write_config(tmp_path / "other", "postgresql+psycopg://u@db/m"))
    assert admin_credentials(other).password != first.password  # generated, not a constant

    argv, env = server_command(cfg, first)
    assert first.password not in " ".join(argv)  # secrets travel by environment only
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == first.password and env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert argv[argv.index("--app-name") + 1] == "basic-auth" and "--serve-artifacts" in argv
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    ini = Path(env["MLFLOW_AUTH_CONFIG_PATH"])
    assert ini.stat().st_mode & 0o777 == 0o600 and "admin_password" not in ini.read_text()

    monkeypatch.setenv("SEKISHO_MLFLOW_ADMIN_PASSWORD", "chosen-by-the-team-0123")
    chosen = admin_credentials(cfg)
    assert (chosen.password, chosen.password_file, chosen.generated) == (
        "chosen-by-the-team-0123",
        None,
        False,
    )


def test_unauthenticated_requests_are_refused(team):
    assert sum(team.password in line for line in team.printed) == 1  # shown once, at first start
    assert (team.state / "admin-password").stat().st_mode & 0o777 == 0o600
    api = f"{team.url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert get(f"{team.url}/health") == 200
    assert get(api) == 401
    assert get(api, "admin", "wrong-password") == 401
    assert get(api, "admin", team.password) == 200


def test_client_logs_registers_and_moves_aliases_through_the_server(as_admin, tmp_path):
    import sqlalchemy as sa
    from mlflow import MlflowClient

    from experiments import (
        get_version,
        promote,
        register_folder,
        resolve,
        rollback,
        set_alias,
    )

    name = f"team-{uuid.uuid4().hex[:8]}"
    for i in (1, 2):
        folder = tmp_path / f"v{i}"
        folder.mkdir()
        (folder / "adapter_config.json").write_text(f'{{"r": {i}}}')
        assert register_folder(name, folder, kind="adapter", tags={"dataset_sha256": "d" * 8}) == str(i)
    set_alias(name, "staging", "1")
    mv = get_version(f"{name}@staging")
    assert (str(mv.version), mv.tags["dataset_sha256"]) == ("1", "d" * 8)

    client = MlflowClient()
    run = client.get_run(mv.run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
    assert mv.source == f"runs:/{mv.run_id}/model"
    assert client.get_experiment(run.info.experiment_id).artifact_location.startswith("mlflow-artifacts:/")
    # the files are on the shared folder, but no client was told where
    assert len(list(as_admin.artifacts.rglob("adapter_config.json"))) == 2
    got = resolve(f"{name}@staging", tmp_path / "download")  # through the server's proxy, hash checked
    assert (got.path / "adapter_config.json").read_text() == '{"r": 1}'

    promote(name, "2", alias="staging", gates=[])
    assert promote(name, "2", force=True, reason="team-mode test").forced
    assert rollback(name, "staging").version == "1"
    assert str(get_version(f"{name}@staging").version) == "1"

    engine = sa.create_engine(as_admin.db_url)  # the record is in PostgreSQL
    with engine.connect() as c:
        aliases = dict(
            c.execute(
                sa.text("select alias, version from registered_model_aliases where name = :n"), {"n": name}
            ).all()
        )
    engine.dispose()
    assert aliases == {"staging": 1, "production": 2}


WORKERS, STEPS, BATCH = 8, 200, 25


def test_eight_processes_logging_at_once_lose_no_metric(as_admin, monkeypatch):
    import sqlalchemy as sa
    from mlflow import MlflowClient

    from experiments import use_store

    monkeypatch.syspath_prepend(str(HERE))  # `spawn` children start with this sys.path
    from metric_writer import log_metrics

    exp_id = use_store(experiment=f"concurrency-{uuid.uuid4().hex[:6]}")
    client = MlflowClient()
    runs = [client.create_run(exp_id, run_name=f"worker-{i}").info.run_id for i in range(WORKERS)]
    shared = client.create_run(exp_id, run_name="shared").info.run_id

    ctx = multiprocessing.get_context("spawn")
    go = ctx.Barrier(WORKERS + 1)  # all start logging together, once mlflow is imported
    procs = [
        ctx.Process(
            target=log_metrics,
            args=(as_admin.url, "admin", as_admin.password, runs[i], shared, i, STEPS, BATCH, go),
        )
        for i in range(WORKERS)
    ]
    for p in procs:
        p.start()
    go.wait(300)
    started = time.perf_counter()
    for p in procs:
        p.join(600)
    elapsed = time.perf_counter() - started
    assert [p.exitcode for p in procs] == [0] * WORKERS

    for i, run_id in enumerate(runs):
        history = client.get_metric_history(run_id, "loss")
        assert sorted(m.step for m in history) == list(range(STEPS)), f"worker {i} lost points"
        assert client.get_run(run_id).data.metrics["loss"] == pytest.approx(1.0 / STEPS)
    for i in range(WORKERS):
        assert sorted(m.step for m in client.get_metric_history(shared, f"worker_{i}")) == list(range(STEPS))
    engine = sa.create_engine(as_admin.db_url)
    with engine.connect() as c:
        stored = c.execute(
            sa.text("select count(*) from metrics where run_uuid = any(:r)"), {"r": [*runs, shared]}
        ).scalar()
    engine.dispose()
    assert stored == 2 * WORKERS * STEPS
    print(
        f"\n{WORKERS} processes logged {2 * WORKERS * STEPS} points "
        f"({WORKERS * (STEPS + STEPS // BATCH)} requests) in {elapsed:.1f} s; all stored"
    )


def test_a_user_changes_only_what_they_were_granted(as_admin, tmp_path, monkeypatch, capsys):
    """The admin adds a user and grants EDIT on one experiment (through the CLI). The user
    logs a run there and reads everything (default READ), but MLflow answers 403 to a run
    in, an edit of or the deletion of another experiment, and to any change of a model
    nobody granted them, so `promote` refuses with a message; once the admin grants EDIT
    on the model, the user can promote and roll it back."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from experiments import (
        get_version,
        promote,
        promotion_log,
        register_folder,
        rollback,
        use_store,
    )
    from experiments.alias_log import NotPermitted
    from sekisho.cli import main

    use_store()
    client = MlflowClient()
    tag = uuid.uuid4().hex[:6]
    user, granted, other, model = f"alice-{tag}", f"alice-exp-{tag}", f"admin-exp-{tag}", f"guarded-{tag}"
    granted_id, other_id = client.create_experiment(granted), client.create_experiment(other)
    for i in (1, 2):
        folder = tmp_path / f"v{i}"
        folder.mkdir()
        (folder / "adapter_config.json").write_text(f'{{"r": {i}}}')
        register_folder(model, folder, kind="adapter")
    promote(model, "1", force=True, reason="admin's first production")

    assert main(["tracking", "user", "add", user]) == 0
    password = capsys.readouterr().out.split("password (shown once): ")[1].split()[0]
    assert main(["tracking", "user", "add", user]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["tracking", "grant", user, "--experiment", granted, "--permission", "EDIT"]) == 0
    assert main(["tracking", "grant", user, "--experiment", "no-such", "--permission", "EDIT"]) == 2
    assert "no experiment named 'no-such'" in capsys.readouterr().err

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    run = client.create_run(granted_id).info.run_id
    client.log_metric(run, "loss", 0.5)
    client.set_terminated(run)
    assert client.get_run(run).data.metrics == {"loss": 0.5}
    assert client.get_experiment(other_id).name == other  # reading is everyone's

    def forbidden(call) -> None:
        with pytest.raises(MlflowException) as e:
            call()
        assert e.value.get_http_status_code() == 403, e.value

    forbidden(lambda: client.create_run(other_id))
    forbidden(lambda: client.rename_experiment(other_id, f"renamed-{tag}"))
    forbidden(lambda: client.delete_experiment(other_id))
    forbidden(lambda: client.set_registered_model_tag(model, "owner", user))
    forbidden(lambda: client.set_registered_model_alias(model, "production", "2"))
    forbidden(lambda: client.delete_registered_model(model))
    with pytest.raises(NotPermitted, match=rf"'{user}' may not change model '{model}'.*EDIT"):
        promote(model, "2", force=True, reason="not mine to promote")
    assert main(["models", "promote", model, "2", "--force", "--reason", "still not mine"]) == 2
    assert "sekisho tracking grant" in capsys.readouterr().err
    assert main(["tracking", "grant", user, "--model", model, "--permission", "EDIT"]) == 2
    assert "only its admin can" in capsys.readouterr().err
    assert str(get_version(f"{model}@production").version) == "1"

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", as_admin.password)
    assert main(["tracking", "grant", user, "--model", model, "--permission", "EDIT"]) == 0
    assert client.get_experiment(other_id).lifecycle_stage == "active"
    assert client.get_experiment(other_id).name == other

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    assert promote(model, "2", force=True, reason="granted by admin").previous == "1"
    assert rollback(model).version == "1"
    assert [(e["action"], e["version"], e["by"]) for e in promotion_log(model)][-2:] == [
        ("promote", "2", user),
        ("rollback", "1", user),
    ]
    forbidden(lambda: client.delete_registered_model(model))  # EDIT is not MANAGE


@pytest.fixture(scope="module")
def closed_team(tmp_path_factory, new_pg_database):
    """A team server where nobody may read what they were not granted
    (default_permission: NO_PERMISSIONS)."""
    from experiments import TrackingServerConfig, start_server

    root = tmp_path_factory.mktemp("closed-team")
    cfg = TrackingServerConfig.from_yaml(
        write_config(root, new_pg_database(), default_permission="NO_PERMISSIONS")
    )
    server = start_server(cfg, log_path=root / "server.log")
    yield server
    server.stop()


def test_read_on_one_experiment_reads_its_runs_and_no_others(closed_team, monkeypatch, capsys):
    """Teams keep their runs apart: the admin grants a user READ on team A's experiment
    (through the CLI, the server named by MLflow's own MLFLOW_TRACKING_URI); the user
    reads A's runs, may not add one, and gets 403 for team B's experiment and runs."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from sekisho.cli import main

    monkeypatch.delenv("SEKISHO_MLFLOW_URI", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", closed_team.url)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", closed_team.admin.username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", closed_team.admin.password)
    client = MlflowClient(closed_team.url)
    tag = uuid.uuid4().hex[:6]
    user, team_a, team_b = f"bob-{tag}", f"team-a-{tag}", f"team-b-{tag}"
    runs = {}
    for name in (team_a, team_b):
        exp_id = client.create_experiment(name)
        run_id = client.create_run(exp_id, run_name=f"{name}-run").info.run_id
        client.log_metric(run_id, "loss", 0.5 if name == team_a else 0.7, step=1)
        runs[name] = (exp_id, run_id)

    assert main(["tracking", "user", "add", user]) == 0
    password = capsys.readouterr().out.split("password (shown once): ")[1].split()[0]
    assert main(["tracking", "grant", user, "--experiment", team_a, "--permission", "READ"]) == 0
    assert capsys.readouterr().out.strip() == f"{user}: READ on experiment {team_a!r}"

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    (a_id, a_run), (b_id, b_run) = runs[team_a], runs[team_b]
    assert client.get_experiment_by_name(team_a).experiment_id == a_id
    assert client.get_run(a_run).data.metrics == {"loss": 0.5}
    assert [r.info.run_id for r in client.search_runs([a_id])] == [a_run]
    assert [m.value for m in client.get_metric_history(a_run, "loss")] == [0.5]

    def forbidden(call) -> None:
        with pytest.raises(MlflowException) as e:
            call()
        assert e.value.get_http_status_code() == 403, e.value

    forbidden(lambda: client.create_run(a_id))  # READ is not EDIT
    forbidden(lambda: client.get_run(b_run))
    forbidden(lambda: client.get_experiment(b_id))
    forbidden(lambda: client.get_metric_history(b_run, "loss"))
    assert main(["tracking", "grant", user, "--experiment", team_b, "--permission", "READ"]) == 2
    assert "only its admin can" in capsys.readouterr().err
