"""Keys, quotas and the audit chain on a real SQLite database (no engine needed)."""

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import text

from foundation import UserError
from serve.gateway import AuditLog, KeyStore
from serve.gateway.keys import secret_hash
from serve.gateway.quota import QuotaLedger


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """The same code against both databases: SQLite (embedded) and PostgreSQL (team)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'gateway.db'}"
    base = request.getfixturevalue("postgres_url")
    schema_db = f"t{abs(hash(str(tmp_path))) % 10**9}"
    import sqlalchemy

    admin = sqlalchemy.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {schema_db}")
    admin.dispose()
    return base.replace("/sekisho?", f"/{schema_db}?")


def test_secret_is_shown_once_and_stored_only_as_hash(db_url, tmp_path):
    store = KeyStore(db_url)
    secret = store.create("app-a", ["tiny-ja"], rpm=10)
    assert secret.startswith("sk-sekisho-") and len(secret) > 40
    with store.engine.connect() as conn:
        stored = " ".join(str(v) for row in conn.execute(text("SELECT * FROM sekisho_api_keys")) for v in row)
    assert secret not in stored and secret_hash(secret) in stored
    if db_url.startswith("sqlite"):
        raw = b"".join(p.read_bytes() for p in tmp_path.glob("gateway.db*"))  # the db and its WAL
        assert secret.encode() not in raw and secret_hash(secret).encode() in raw
    key = store.by_hash()[secret_hash(secret)]
    assert key.allows("tiny-ja") and not key.allows("tiny-base") and key.usable()
    with pytest.raises(UserError, match="exists already"):
        store.create("app-a", ["x"])
    with pytest.raises(UserError, match="--models"):
        store.create("app-b", [])


def test_revoked_and_expired_keys_are_unusable(db_url):
    store = KeyStore(db_url)
    s1 = store.create("r", ["*"])
    s2 = store.create("e", ["*"], expires_at=time.time() - 1)
    store.revoke("r")
    keys = store.by_hash()
    assert not keys[secret_hash(s1)].usable() and not keys[secret_hash(s2)].usable()
    with pytest.raises(UserError, match="no active key"):
        store.revoke("r")


def test_rpm_and_tpm_are_enforced_with_retry_after(db_url):
    ledger = QuotaLedger(db_url)
    now = 60 * 1000 + 5.0  # 5 s into a minute
    assert all(ledger.admit("k", 3, None, now).allowed for _ in range(3))
    d = ledger.admit("k", 3, None, now)
    assert not d.allowed and "3 requests per minute" in d.reason and d.retry_after_s == 55
    ledger.add_tokens("t", 100, now)
    d = ledger.admit("t", None, 100, now)
    assert not d.allowed and "100 tokens per minute" in d.reason
    # The previous minute fades out of the sliding window.
    assert ledger.admit("k", 3, None, now + 60 + 50).allowed


def test_ledger_group_commits_each_record_once_in_order(db_url):
    """The gateway's ledger process: records sent together share transactions,
    each is committed once, in the order sent, beside another writer."""
    import asyncio

    from serve.gateway.ledger import Ledger

    log = AuditLog("grouped", db_url)
    other = AuditLog("grouped", db_url)  # a second gateway process appending meanwhile

    async def many():
        ledger = Ledger(db_url, "grouped")
        try:
            return await asyncio.gather(
                *(ledger.call("audit", record={"i": i, "ts": time.time()}) for i in range(300))
            )
        finally:
            await ledger.close()

    with ThreadPoolExecutor(1) as pool:
        side = pool.submit(lambda: [other.append({"side": j, "ts": time.time()}) for j in range(20)])
        replies = asyncio.run(many())
        side.result()
    seqs = [r["seq"] for r in replies]
    assert len(set(seqs)) == 300
    assert max(r["batch"] for r in replies) > 1  # concurrent records shared transactions
    result = log.verify()
    assert result.ok and result.records == 320
    by_seq = {r["seq"]: r for r in log.records()}
    assert all(by_seq[s]["i"] == i for i, s in enumerate(seqs))


def test_admissions_close_when_their_records_complete_even_if_no_one_waits(db_url):
    """An admission whose waiter was cancelled (the client left) is still committed,
    before the completed record sent after it, which closes it; a record the
    database refuses fails alone (its group's others are written) on both databases."""
    import asyncio

    from serve.gateway.ledger import Ledger, LedgerError

    log = AuditLog("admit", db_url)

    async def run():
        ledger = Ledger(db_url, "admit")
        try:
            waits = []
            for i in range(40):
                admission = await ledger.send("admitted", record={"request_id": f"r{i}", "ts": time.time()})
                waits.append(asyncio.ensure_future(asyncio.wait_for(admission, 30)))
            for w in waits[::2]:
                w.cancel()  # half the clients leave before their admission is confirmed
            await asyncio.gather(*waits[1::2])
            twice = {"request_id": "r21", "ts": time.time()}  # admitted already: the database refuses it
            done = await asyncio.gather(
                *(ledger.audit({"request_id": f"r{i}", "ts": time.time(), "status": 200}) for i in range(20)),
                ledger.admitted(twice),
                return_exceptions=True,
            )
            return done
        finally:
            await ledger.close()

    done = asyncio.run(run())
    assert all(isinstance(seq, int) for seq in done[:20])
    assert isinstance(done[20], LedgerError)
    open_ids = sorted(r["request_id"] for r in log.admitted())
    assert open_ids == sorted(f"r{i}" for i in range(20, 40))  # the completed 20 closed theirs
    result = log.verify()
    assert result.ok and result.records == 20 and result.open_admissions == 20


def test_ledger_counts_quotas_and_starts_again_after_its_process_dies(db_url):
    import asyncio

    from serve.gateway.ledger import Ledger, LedgerError

    async def run():
        ledger = Ledger(db_url, "q")
        try:
            assert (await ledger.admit("k", 2, None)).allowed
            assert (await ledger.admit("k", 2, None)).allowed
            refused = await ledger.admit("k", 2, None)
            assert not refused.allowed and "2 requests per minute" in refused.reason
            assert refused.retry_after_s >= 1
            assert await ledger.audit({"n": 1, "ts": time.time()}, ("t", 500)) == 1
            assert not (await ledger.admit("t", None, 100)).allowed  # the 500 tokens were counted
            with pytest.raises(LedgerError, match="unknown op"):
                await ledger.call("nonsense")
            ledger.proc.kill()
            deadline = time.monotonic() + 30
            while ledger.replies is not None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert ledger.replies is None  # the gateway noticed; the next call starts a new process
            assert await ledger.audit({"n": 2, "ts": time.time()}) == 2
        finally:
            await ledger.close()

    asyncio.run(run())
    assert AuditLog("q", db_url).verify().records == 2


def test_chain_verifies_across_concurrent_writers(db_url):
    logs = [AuditLog("app", db_url) for _ in range(4)]  # like four gateway replicas
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: logs[i % 4].append({"i": i, "ts": time.time()}), range(200)))
    result = logs[0].verify()
    assert result.ok and result.records == 200
    assert sorted(r["i"] for r in logs[0].records()) == list(range(200))


def test_edit_and_deletion_are_found_at_the_record(db_url):
    log = AuditLog("app", db_url)
    for i in range(10):
        log.append({"i": i, "ts": time.time()})
    with log.engine.begin() as conn:
        conn.execute(
            text("UPDATE sekisho_audit SET record = :r WHERE seq = 4"), {"r": json.dumps({"i": 999, "ts": 0})}
        )
    r = log.verify()
    assert not r.ok and r.broken_at == 4 and "changed" in r.reason
    log2 = AuditLog("other", db_url)
    for i in range(5):
        log2.append({"i": i, "ts": time.time()})
    with log2.engine.begin() as conn:
        conn.execute(text("DELETE FROM sekisho_audit WHERE chain = 'other' AND seq = 2"))
    r = log2.verify()
    assert not r.ok and r.broken_at == 2 and "missing" in r.reason
    with log2.engine.begin() as conn:
        conn.execute(text("DELETE FROM sekisho_audit WHERE chain = 'other' AND seq >= 2"))
    r = log2.verify()
    assert not r.ok and "deleted" in r.reason


def _append_many(args):
    url, worker = args
    log = AuditLog("multi", url)
    for i in range(25):
        log.append({"worker": worker, "i": i, "ts": time.time()})
    return worker


def test_eight_processes_append_to_one_chain(db_url):
    """Like eight gateway replicas on different nodes: one chain, nothing lost."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    AuditLog("multi", db_url)
    with ProcessPoolExecutor(8, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert sorted(pool.map(_append_many, [(db_url, w) for w in range(8)])) == list(range(8))
    result = AuditLog("multi", db_url).verify()
    assert result.ok and result.records == 200
