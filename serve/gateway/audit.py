"""The audit trail: one record per request, rejected ones included, in a hash
chain per app that any number of gateway replicas append to.

Each record's hash covers its sequence number, the previous record's hash and
its canonical JSON, so an edited record breaks its own hash and a deleted one
breaks the sequence or the link: `verify` names the first record that fails.
Appends take the chain head's row lock (PostgreSQL) or the write lock (SQLite)
and commit before the gateway sends the response's last byte; a gateway appends
through its ledger process (serve.gateway.ledger), which groups the records
that arrive during a commit into the next one.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass

from sqlalchemy import insert, select, update

from serve.gateway.db import audit_head, audit_records, connect

GENESIS = "0" * 64


def canonical(record: dict) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def link_hash(seq: int, prev_hash: str, record_json: str) -> str:
    return hashlib.sha256(f"{seq}\n{prev_hash}\n{record_json}".encode()).hexdigest()


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    records: int
    broken_at: int | None = None
    reason: str = ""


class AuditLog:
    """Append to and verify one chain (one per Serve app)."""

    def __init__(self, chain: str, url: str | None = None):
        self.chain, self.engine = chain, connect(url)
        with self.engine.begin() as conn:
            if conn.execute(select(audit_head.c.seq).where(audit_head.c.chain == chain)).first() is None:
                conn.execute(insert(audit_head).values(chain=chain, seq=0, hash=GENESIS))

    def append(self, record: dict) -> int:
        """Commit one record; returns its sequence number. Blocking: call from a thread."""
        return self.append_many([record])[0]

    def append_many(self, records: list[dict]) -> list[int]:
        """Commit several records in one transaction (one fsync), in order; returns
        their sequence numbers. Blocking: call from a thread."""
        bodies = [canonical(r) for r in records]
        rows, seqs = [], []
        with self.engine.begin() as conn:
            # Lock the head first (row lock on PostgreSQL; SQLite holds the write lock).
            conn.execute(
                update(audit_head).where(audit_head.c.chain == self.chain).values(seq=audit_head.c.seq)
            )
            seq, prev = conn.execute(
                select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.chain == self.chain)
            ).one()
            for record, body in zip(records, bodies):
                seq += 1
                h = link_hash(seq, prev, body)
                rows.append(
                    {
                        "chain": self.chain,
                        "seq": seq,
                        "ts": record.get("ts", time.time()),
                        "record": body,
                        "prev_hash": prev,
                        "hash": h,
                    }
                )
                seqs.append(seq)
                prev = h
            conn.execute(insert(audit_records), rows)
            conn.execute(
                update(audit_head).where(audit_head.c.chain == self.chain).values(seq=seq, hash=prev)
            )
        return seqs

    def records(self, since: float | None = None, limit: int | None = None) -> list[dict]:
        q = select(audit_records.c.seq, audit_records.c.record).where(audit_records.c.chain == self.chain)
        if since is not None:
            q = q.where(audit_records.c.ts >= since)
        q = q.order_by(audit_records.c.seq.desc() if limit else audit_records.c.seq)
        if limit:
            q = q.limit(limit)
        with self.engine.connect() as conn:
            rows = [{"seq": s, **json.loads(r)} for s, r in conn.execute(q)]
        return sorted(rows, key=lambda r: r["seq"])

    def verify(self) -> VerifyResult:
        """Walk the chain from the start; report the first record that does not check out."""
        q = (
            select(
                audit_records.c.seq, audit_records.c.record, audit_records.c.prev_hash, audit_records.c.hash
            )
            .where(audit_records.c.chain == self.chain)
            .order_by(audit_records.c.seq)
        )
        prev, expected_seq, n = GENESIS, 1, 0
        with self.engine.connect() as conn:
            for seq, body, prev_hash, h in conn.execute(q):
                if seq != expected_seq:
                    return VerifyResult(
                        False, n, expected_seq, f"record {expected_seq} is missing (next is {seq})"
                    )
                if prev_hash != prev:
                    return VerifyResult(False, n, seq, f"record {seq} does not link to record {seq - 1}")
                if link_hash(seq, prev, body) != h:
                    return VerifyResult(False, n, seq, f"record {seq} was changed after it was written")
                prev, expected_seq, n = h, seq + 1, n + 1
            head_seq, head_hash = conn.execute(
                select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.chain == self.chain)
            ).one()
        if head_seq != n or head_hash != prev:
            return VerifyResult(
                False,
                n,
                n + 1 if head_seq > n else n,
                f"the chain head says {head_seq} records but {n} remain: records after {n} were deleted",
            )
        return VerifyResult(True, n)
