"""Trust in the store: the chain's head anchored outside its database, a read-only
`verify` that fails for a chain that does not exist, reads that take no write
lock, and state files private to their owner (real SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time

import pytest
from sqlalchemy import text

from sekisho.cli import main as cli
from serve.gateway import AuditLog, KeyStore
from serve.gateway.audit import GENESIS, canonical, link_hash, read_anchors


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'gateway.db'}"
    import sqlalchemy

    base = request.getfixturevalue("postgres_url")
    name = f"anchor{time.time_ns()}"
    admin = sqlalchemy.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    admin.dispose()
    return base.replace("/sekisho?", f"/{name}?")


def _rebuild(log: AuditLog, change) -> None:
    """Rewrite the whole chain consistently (as whoever can write the database can):
    every record passed through `change`, every hash and the head recomputed."""
    with log.engine.begin() as conn:
        rows = conn.execute(
            text("SELECT seq, record FROM sekisho_audit WHERE chain = :c ORDER BY seq"), {"c": log.chain}
        ).all()
        prev = GENESIS
        for seq, body in rows:
            new = canonical(change(json.loads(body)))
            h = link_hash(seq, prev, new)
            conn.execute(
                text(
                    "UPDATE sekisho_audit SET record = :r, prev_hash = :p, hash = :h WHERE chain = :c AND seq = :s"
                ),
                {"r": new, "p": prev, "h": h, "c": log.chain, "s": seq},
            )
            prev = h
        conn.execute(
            text("UPDATE sekisho_audit_head SET hash = :h WHERE chain = :c"), {"h": prev, "c": log.chain}
        )


def test_a_rebuilt_chain_fails_verify_with_its_anchors(db_url, tmp_path, capsys):
    log = AuditLog("app", db_url)
    for i in range(5):
        log.append({"i": i, "status": 200, "ts": time.time()})
    anchors = tmp_path / "anchors.jsonl"
    assert cli(["audit", "anchor", "--app", "app", "--db", db_url, "--to", str(anchors)]) == 0
    log.append({"i": 5, "status": 200, "ts": time.time()})
    assert cli(["audit", "anchor", "--app", "app", "--db", db_url, "--to", str(anchors)]) == 0
    assert [a.seq for a in read_anchors(anchors, "app")] == [5, 6]
    assert stat.S_IMODE(anchors.stat().st_mode) == 0o600
    assert cli(["audit", "verify", "--app", "app", "--db", db_url, "--anchors", str(anchors)]) == 0
    assert "reaches its 2 anchored heads" in capsys.readouterr().out

    _rebuild(log, lambda r: {**r, "status": 201} if r["i"] == 2 else r)
    assert log.verify().ok  # consistent in the database alone
    r = log.verify(read_anchors(anchors, "app"))
    assert not r.ok and r.broken_at == 5 and "not the one anchored" in r.reason
    assert cli(["audit", "verify", "--app", "app", "--db", db_url, "--anchors", str(anchors)]) == 1
    assert "BROKEN at record 5" in capsys.readouterr().err


def test_a_truncated_chain_fails_verify_with_its_anchors(db_url, tmp_path):
    log = AuditLog("app", db_url)
    for i in range(4):
        log.append({"i": i, "ts": time.time()})
    anchors = tmp_path / "anchors.jsonl"
    log.anchor(anchors)
    with log.engine.begin() as conn:  # the last record deleted and the head moved back with it
        conn.execute(text("DELETE FROM sekisho_audit WHERE chain = 'app' AND seq = 4"))
        h = conn.execute(text("SELECT hash FROM sekisho_audit WHERE chain = 'app' AND seq = 3")).scalar_one()
        conn.execute(text("UPDATE sekisho_audit_head SET seq = 3, hash = :h WHERE chain = 'app'"), {"h": h})
    assert log.verify().ok
    r = log.verify(read_anchors(anchors, "app"))
    assert not r.ok and "ends at record 3 but record 4 was anchored" in r.reason


def test_anchor_target_from_the_app_config(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    AuditLog("cfgapp", url).append({"ts": time.time()})
    cfg = tmp_path / "app.yaml"
    anchors = tmp_path / "anchors.jsonl"
    cfg.write_text(
        f"name: cfgapp\nmodels:\n  - name: m\n    source: registry:m@production\n"
        f"gateway:\n  db_url: {url}\n  audit_anchor_path: {anchors}\n",
        encoding="utf-8",
    )
    assert cli(["audit", "anchor", "--config", str(cfg)]) == 0
    assert [a.seq for a in read_anchors(anchors, "cfgapp")] == [1]
    assert cli(["audit", "verify", "--config", str(cfg), "--anchors", str(anchors)]) == 0


def test_verify_of_an_unknown_chain_fails_and_creates_nothing(db_url, capsys):
    AuditLog("real", db_url).append({"ts": time.time()})
    assert cli(["audit", "verify", "--app", "reall", "--db", db_url]) == 1
    assert "no audit chain named 'reall'" in capsys.readouterr().err
    log = AuditLog("reall", db_url)
    with log.engine.connect() as conn:
        heads = conn.execute(text("SELECT chain FROM sekisho_audit_head")).scalars().all()
    assert heads == ["real"]  # verify created no head


def test_reads_take_no_write_lock(tmp_path, capsys):
    """`keys list` and `audit verify` answer while another process holds SQLite's write lock."""
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    KeyStore(url).create("k", ["*"])
    AuditLog("app", url).append({"ts": time.time()})
    holder = sqlite3.connect(tmp_path / "gateway.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        from serve.gateway import db

        before, db.BUSY_TIMEOUT_S = db.BUSY_TIMEOUT_S, 0.1  # a write here would fail at once
        db._engines.pop(url, None)
        try:
            assert cli(["keys", "list", "--db", url]) == 0
            assert cli(["audit", "verify", "--app", "app", "--db", url]) == 0
        finally:
            db.BUSY_TIMEOUT_S = before
            db._engines.pop(url, None)
    finally:
        holder.execute("ROLLBACK")
    out = capsys.readouterr().out
    assert "k " in out and "1 records, intact" in out


def test_state_is_private_whatever_the_umask(tmp_path, monkeypatch):
    from foundation import sekisho_home

    old = os.umask(0o022)
    try:
        monkeypatch.setenv("SEKISHO_HOME", str(tmp_path / "home"))
        home = sekisho_home()
        url = f"sqlite:///{home / 'gateway.db'}"
        AuditLog("app", url).append({"ts": time.time()})
    finally:
        os.umask(old)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    for f in home.glob("gateway.db*"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


def test_a_password_in_db_url_is_warned_about_and_db_file_works(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    KeyStore(url).create("k", ["*"])
    url_file = tmp_path / "db-url"
    url_file.write_text(url + "\n", encoding="utf-8")
    assert cli(["keys", "list", "--db-file", str(url_file)]) == 0
    assert "k " in capsys.readouterr().out
    from sqlalchemy.exc import OperationalError

    with pytest.raises(OperationalError):  # nothing listens there; the warning came first
        cli(["keys", "list", "--db", "postgresql+psycopg://u:secret@/nowhere?host=/nonexistent"])
    assert "--db carries a password" in capsys.readouterr().err


def test_model_store_is_private_whatever_the_umask(tmp_path, monkeypatch):
    from airlock.model_store import store_root

    monkeypatch.setenv("SEKISHO_MODEL_STORE", str(tmp_path / "store"))
    old = os.umask(0o022)
    try:
        root = store_root()
    finally:
        os.umask(old)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700


def test_eval_api_key_from_a_file_or_the_environment_and_a_warning_on_the_command_line(
    tmp_path, monkeypatch, capsys
):
    from argparse import Namespace

    from sekisho.commands.eval import _api_key

    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file\n", encoding="utf-8")
    assert _api_key(Namespace(api_key_file=str(key_file), api_key=None)) == "sk-from-file"
    monkeypatch.setenv("SEKISHO_API_KEY", "sk-from-env")
    assert _api_key(Namespace(api_key_file=None, api_key=None)) == "sk-from-env"
    assert capsys.readouterr().err == ""
    assert _api_key(Namespace(api_key_file=None, api_key="sk-flag")) == "sk-flag"
    assert "--api-key is visible on the command line" in capsys.readouterr().err


def _received_lines(datagrams: list[bytes]) -> str:
    """A collector's file: its own prefix before each message, other programs' messages between."""
    out = ["Jan  1 00:00:00 collector rsyslogd: [origin software=rsyslogd] start"]
    for i, d in enumerate(datagrams):
        out.append(f"2026-01-01T00:00:0{i}+00:00 127.0.0.1 {d.decode()}")
        out.append(f'2026-01-01T00:00:0{i}+00:00 127.0.0.1 <14>1 - h cron 1 - - {{"job": "backup"}}')
    return "\n".join(out) + "\n"


def test_anchors_to_a_syslog_collector_over_udp(db_url, tmp_path, capsys):
    """`syslog://HOST:PORT`: each anchor is one RFC 5424 datagram; the collector's file
    verifies the chain, and no longer once the chain is rebuilt."""
    import re
    import socket

    log = AuditLog("app", db_url)
    for i in range(3):
        log.append({"i": i, "status": 200, "ts": time.time()})
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as collector:
        collector.bind(("127.0.0.1", 0))
        collector.settimeout(10)
        target = f"syslog://127.0.0.1:{collector.getsockname()[1]}"
        datagrams = []
        for extra in range(2):
            assert cli(["audit", "anchor", "--app", "app", "--db", db_url, "--to", target]) == 0
            datagrams.append(collector.recv(65535))
            log.append({"i": 3 + extra, "status": 200, "ts": time.time()})
    assert f"in {target}" in capsys.readouterr().out
    header = re.compile(
        r"<109>1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z \S+ sekisho-audit \d+ anchor - (\{.*\})"
    )
    bodies = [json.loads(header.fullmatch(d.decode("ascii")).group(1)) for d in datagrams]
    assert [(b["chain"], b["seq"]) for b in bodies] == [("app", 3), ("app", 4)]

    exported = tmp_path / "collector.log"
    exported.write_text(_received_lines(datagrams), encoding="utf-8")
    assert cli(["audit", "verify", "--app", "app", "--db", db_url, "--anchors", str(exported)]) == 0
    out = capsys.readouterr().out
    assert "read 2 anchors of chain 'app' (0 of other chains, 3 other lines skipped)" in out
    assert "reaches its 2 anchored heads" in out

    _rebuild(log, lambda r: {**r, "status": 500} if r["i"] == 1 else r)
    assert log.verify().ok
    assert cli(["audit", "verify", "--app", "app", "--db", db_url, "--anchors", str(exported)]) == 1
    assert "BROKEN at record 3" in capsys.readouterr().err


def test_anchors_to_a_syslog_collector_over_tcp_are_octet_counted(tmp_path):
    import socket
    import threading

    log = AuditLog("app", f"sqlite:///{tmp_path / 'gateway.db'}")
    log.append({"ts": time.time()})
    received = bytearray()
    with socket.create_server(("127.0.0.1", 0)) as server:

        def collect():
            conn, _ = server.accept()
            with conn:
                while chunk := conn.recv(4096):
                    received.extend(chunk)

        t = threading.Thread(target=collect)
        t.start()
        a = log.anchor(f"syslog+tcp://127.0.0.1:{server.getsockname()[1]}")
        t.join(timeout=10)
    length, message = bytes(received).split(b" ", 1)
    assert int(length) == len(message) and message.startswith(b"<109>1 ")
    assert json.loads(message.split(b" anchor - ", 1)[1]) == {
        "chain": "app",
        "seq": 1,
        "hash": a.hash,
        "time": a.time,
    }


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("syslog://collector", "no port"),
        ("syslog://collector:70000", "Port out of range"),
        ("syslog://:514", "no host"),
        ("syslog://collector:514/anchors", "no path"),
        ("syslog://me:pw@collector:514", "no user or password"),
        ("syslog+udp://collector:514", "unknown scheme 'syslog+udp'"),
        ("", "empty anchor target"),
    ],
)
def test_a_malformed_anchor_target_is_refused_with_its_field_path(tmp_path, target, why):
    from foundation import ConfigError

    cfg = tmp_path / "app.yaml"
    cfg.write_text(
        f"name: a\nmodels:\n  - name: m\n    source: registry:m@production\n"
        f"gateway:\n  audit_anchor_path: '{target}'\n",
        encoding="utf-8",
    )
    from serve.config import ServeAppConfig

    with pytest.raises(ConfigError) as e:
        ServeAppConfig.from_yaml(cfg)
    msg = str(e.value)
    assert f"{cfg}:6: gateway.audit_anchor_path" in msg and why in msg, msg


def test_a_syslog_file_without_an_anchor_of_the_chain_is_refused(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    AuditLog("app", url).append({"ts": time.time()})
    exported = tmp_path / "collector.log"
    other = json.dumps({"chain": "other", "seq": 1, "hash": "0" * 64, "time": 1.0})
    exported.write_text(f"<109>1 - h sekisho-audit 1 anchor - {other}\nnoise\n", encoding="utf-8")
    assert cli(["audit", "verify", "--app", "app", "--db", url, "--anchors", str(exported)]) == 2
    assert "no anchor of chain 'app' in it (1 of other chains, 1 lines without an anchor)" in (
        capsys.readouterr().err
    )
    bad = json.dumps({"chain": "app", "seq": "1", "hash": "0" * 64, "time": 1.0})
    exported.write_text(f"noise\nx {bad}\n", encoding="utf-8")
    assert cli(["audit", "verify", "--app", "app", "--db", url, "--anchors", str(exported)]) == 2
    assert f"{exported}:2: not an anchor (seq '1' is not a record number)" in capsys.readouterr().err
