"""Fail closed: no answer leaves the gateway unrecorded, and one record that
cannot be written sinks no other request's record.

The gateway tests drive the session's real app (real gateway, real vLLM engine,
its real SQLite database); the fault is injected for real: another connection
holds SQLite's write lock, a PostgreSQL server is stopped, the ledger process is
killed."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from serve.gateway import AuditLog, KeyStore
from serve.gateway.ledger import Ledger, LedgerError

MSG = [{"role": "user", "content": "第七倉庫の合言葉は何ですか。"}]
POISON = b'{"model":"\\ud800","messages":[{"role":"user","content":"hi"}]}'


def _post(main_job, key: str, body: bytes | dict, stream: bool = False) -> tuple[int, str, str]:
    """(status, the whole body as text, request id) of one chat completion."""
    url = main_job.base_url + "/chat/completions"
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    with httpx.stream("POST", url, headers=headers, timeout=120, **kwargs) as r:
        text = "".join(r.iter_text())
        return r.status_code, text, r.headers.get("X-Request-Id", "")


def _ask(stream: bool) -> dict:
    return {"model": "tiny-ja", "messages": MSG, "max_tokens": 8, "stream": stream}


@pytest.fixture(scope="module")
def key(main_job):
    secret = KeyStore().create(f"fail-closed-{time.time_ns()}", ["tiny-ja"])
    for _ in range(50):  # usable once the gateway's key cache has it
        if _post(main_job, secret, _ask(False))[0] == 200:
            return secret
        time.sleep(0.2)
    raise AssertionError("the new key never became usable")


@pytest.fixture
def locked_db(sekisho_home):
    """The gateway's SQLite database with its write lock held by another connection."""
    conn = sqlite3.connect(sekisho_home / "gateway.db", isolation_level=None, timeout=60)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield conn
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def _refused(status: int, text: str) -> None:
    assert status == 503, text
    assert '"code": "audit_unavailable"' in text and '"type": "service_unavailable"' in text
    assert "choices" not in text and "delta" not in text  # no answer reached the client


@pytest.mark.e2e
def test_a_poisoned_record_sinks_no_other_request(main_job, key):
    """A model name with a lone surrogate is refused (a 4xx) and recorded (its
    escape text, if the model was read); the records of requests beside it are all kept."""
    with ThreadPoolExecutor(24) as pool:
        poisoned = [pool.submit(_post, main_job, key, POISON) for _ in range(8)]
        innocent = [pool.submit(_post, main_job, key, _ask(i % 2 == 0)) for i in range(8)]
        unknown = [
            pool.submit(_post, main_job, key, {"model": f"nope-{i}", "messages": MSG}) for i in range(8)
        ]
    assert all(400 <= f.result()[0] < 500 for f in poisoned)  # refused, never a 500
    assert {f.result()[0] for f in innocent} == {200}
    assert {f.result()[0] for f in unknown} == {404}
    by_id = {r["request_id"]: r for r in AuditLog("demo").records(since=time.time() - 600)}
    for f in innocent + unknown:
        assert f.result()[2] in by_id, "an innocent request lost its record"
    for f in poisoned:
        status, _, rid = f.result()
        assert by_id[rid]["status"] == status
        assert by_id[rid]["model"] in (None, "\\ud800")  # refused before reading it, or its escape text
    assert AuditLog("demo").verify().ok


@pytest.mark.e2e
@pytest.mark.parametrize("stream", [False, True])
def test_a_locked_database_gives_503s_and_no_answer(main_job, key, locked_db, stream):
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: _post(main_job, key, _ask(stream)), range(4)))
    for status, text, _ in results:
        _refused(status, text)


@pytest.mark.e2e
def test_answers_again_once_the_database_is_free_and_leaves_no_open_admission(main_job, key, sekisho_home):
    conn = sqlite3.connect(sekisho_home / "gateway.db", isolation_level=None, timeout=60)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        _refused(*_post(main_job, key, _ask(True))[:2])
    finally:
        conn.execute("ROLLBACK")
        conn.close()
    status, text, rid = _post(main_job, key, _ask(True))
    assert status == 200 and "[DONE]" in text
    log = AuditLog("demo")
    assert [r for r in log.records(limit=50) if r["request_id"] == rid][0]["status"] == 200
    assert rid not in {r["request_id"] for r in log.admitted()}  # its completion replaced the admission


def _ledger_children(home: Path) -> list[int]:
    """This test session's ledger processes for the demo app (found by their home)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            env = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"serve.gateway.ledger" in cmd and b"demo" in cmd and f"SEKISHO_HOME={home}".encode() in env:
            pids.append(int(proc.name))
    return pids


@pytest.mark.e2e
def test_a_killed_ledger_process_gives_503s_and_no_answer(main_job, key, sekisho_home):
    """The request waits on the ledger (the database is locked); the ledger process
    dies: the client gets the 503 and no answer."""
    conn = sqlite3.connect(sekisho_home / "gateway.db", isolation_level=None, timeout=60)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        with ThreadPoolExecutor(2) as pool:
            waiting = [pool.submit(_post, main_job, key, _ask(s)) for s in (False, True)]
            pids = _ledger_children(sekisho_home)
            assert pids, "no ledger process found"
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            for f in waiting:
                _refused(*f.result()[:2])
    finally:
        conn.execute("ROLLBACK")
        conn.close()
    assert _post(main_job, key, _ask(False))[0] == 200  # the gateway starts a new ledger process


# ---- the ledger alone, on its own databases ------------------------------------


def test_a_dead_ledger_process_fails_the_waiting_call(tmp_path):
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    AuditLog("x", url).append({"ts": time.time()})
    conn = sqlite3.connect(tmp_path / "gateway.db", isolation_level=None, timeout=60)

    async def run():
        ledger = Ledger(url, "x", timeout_s=300)
        try:
            await ledger.start()
            conn.execute("BEGIN EXCLUSIVE")
            call = asyncio.create_task(ledger.audit({"request_id": "r1", "ts": time.time()}))
            deadline = time.monotonic() + 30
            while not ledger.pending:  # the call is sent and waits on the child
                assert time.monotonic() < deadline, "the audit call never reached the ledger"
                await asyncio.sleep(0.01)
            ledger.proc.kill()
            with pytest.raises(LedgerError, match="exited") as exc:
                await call
            assert exc.value.status == 503
        finally:
            conn.execute("ROLLBACK")
            await ledger.close()

    asyncio.run(run())


def test_a_locked_database_times_out_instead_of_waiting(tmp_path):
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    AuditLog("x", url).append({"ts": time.time()})
    conn = sqlite3.connect(tmp_path / "gateway.db", isolation_level=None, timeout=60)

    async def run():
        ledger = Ledger(url, "x", timeout_s=1.0)
        try:
            await ledger.start()
            conn.execute("BEGIN EXCLUSIVE")
            with pytest.raises(LedgerError, match="did not answer") as exc:
                await ledger.admitted({"request_id": "r1", "ts": time.time()})
            assert exc.value.status == 503 and exc.value.code == "audit_unavailable"
            conn.execute("ROLLBACK")
            await ledger.admitted({"request_id": "r2", "ts": time.time()})
        finally:
            await ledger.close()

    asyncio.run(run())
    # what the gateway gave up on was dropped, not written late
    assert [r["request_id"] for r in AuditLog("x", url).admitted()] == ["r2"]


@pytest.fixture
def refusing_postgres(postgres_url, tmp_path):
    """A database of its own on the test PostgreSQL, and a function that makes the
    server refuse its connections (and end the open ones) from then on."""
    import sqlalchemy

    name = f"refuse{time.time_ns()}"
    admin = sqlalchemy.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")

    def refuse():
        with admin.connect() as conn:
            conn.exec_driver_sql(f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false")
            conn.exec_driver_sql(
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
            )

    yield postgres_url.replace("/sekisho?", f"/{name}?"), refuse
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
    admin.dispose()


def test_postgresql_refusing_connections_gives_503s_not_a_hang(refusing_postgres):
    url, refuse = refusing_postgres

    async def run():
        ledger = Ledger(url, "pg", timeout_s=5.0)
        try:
            await ledger.admitted({"request_id": "ok", "ts": time.time()})
            refuse()
            for rid in ("a", "b"):
                with pytest.raises(LedgerError) as exc:
                    await ledger.audit({"request_id": rid, "ts": time.time()})
                assert exc.value.status == 503 and exc.value.code == "audit_unavailable"
        finally:
            await ledger.close()

    asyncio.run(run())


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_record_that_cannot_be_written_fails_alone(tmp_path, request, backend):
    """A group of records with one that the database refuses (a second admission
    of one request id) and one with a lone surrogate: only the refused one fails."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'gateway.db'}"
    else:
        url = request.getfixturevalue("postgres_url")

    chain = f"alone-{time.time_ns()}"

    async def run():
        ledger = Ledger(url, chain)
        try:
            return await asyncio.gather(
                ledger.admitted({"request_id": "dup", "ts": time.time()}),
                ledger.admitted({"request_id": "dup", "ts": time.time()}),
                *(ledger.audit({"request_id": f"r{i}", "ts": time.time()}) for i in range(20)),
                ledger.audit({"request_id": "p", "model": "\ud800", "ts": time.time()}),
                return_exceptions=True,
            )
        finally:
            await ledger.close()

    results = asyncio.run(run())
    assert sum(isinstance(r, LedgerError) for r in results) == 1
    log = AuditLog(chain, url)
    records = {r["request_id"]: r for r in log.records()}
    assert set(records) == {f"r{i}" for i in range(20)} | {"p"}
    assert records["p"]["model"] == "\\ud800"
    assert log.verify().ok
