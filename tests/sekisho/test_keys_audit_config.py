"""`keys` and `audit` with `--config APP.yaml` work on that app's gateway database
(gateway.db_url), whatever the Sekisho home; a missing or wrong config is named."""

from __future__ import annotations

import time

import pytest

from sekisho.cli import main as cli
from serve.gateway import AuditLog

APP = """\
name: ops-app
models:
  - name: tiny-base
    source: registry:sekisho-tiny-base@production
gateway:
  db_url: sqlite:///{db}
"""


@pytest.fixture(autouse=True)
def _elsewhere(tmp_path, monkeypatch):
    """A Sekisho home of its own, whose default database is not the app's."""
    monkeypatch.setenv("SEKISHO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SEKISHO_GATEWAY_DB", raising=False)


@pytest.fixture
def app(tmp_path):
    db = tmp_path / "app-db" / "gateway.db"
    db.parent.mkdir()
    path = tmp_path / "app.yaml"
    path.write_text(APP.format(db=db))
    return path, f"sqlite:///{db}"


def test_keys_use_the_app_configs_database(app, tmp_path, capsys):
    path, _ = app
    assert cli(["keys", "create", "--name", "ops", "--models", "tiny-base", "--config", str(path)]) == 0
    assert (tmp_path / "app-db" / "gateway.db").is_file()
    capsys.readouterr()
    assert cli(["keys", "list", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.split()[:2] == ["ops", "active"] and "models=tiny-base" in out

    assert cli(["keys", "list"]) == 0  # the home's own database has no such key
    assert capsys.readouterr().out == ""
    assert cli(["keys", "revoke", "ops", "--config", str(path)]) == 0
    capsys.readouterr()
    assert cli(["keys", "list", "--config", str(path)]) == 0
    assert capsys.readouterr().out.split()[:2] == ["ops", "revoked"]


def test_audit_verify_reads_the_app_configs_database(app, capsys):
    path, url = app
    log = AuditLog("ops-app", url)
    for i in range(3):
        log.append({"i": i, "status": 200, "ts": time.time()})
    assert cli(["audit", "verify", "--config", str(path)]) == 0
    assert capsys.readouterr().out.startswith("audit chain 'ops-app': 3 records, intact")
    assert cli(["audit", "verify", "--app", "ops-app"]) == 1  # not in the home's database


@pytest.mark.parametrize("group", [["keys", "list"], ["audit", "verify"]])
def test_a_missing_config_is_named(group, tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert cli([*group, "--config", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sekisho: error: --config {missing}: no such file")
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("group", [["keys", "list"], ["audit", "verify"]])
def test_a_config_that_is_not_a_serve_app_is_named(group, tmp_path, capsys):
    train = tmp_path / "train.yaml"
    train.write_text("name: t\nbase_model: b@production\ndataset: d.yaml\nregister_as: a\n")
    assert cli([*group, "--config", str(train)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sekisho: error: --config {train}: not a valid serve app config")
    assert f"{train}:2: base_model: unknown key" in err
