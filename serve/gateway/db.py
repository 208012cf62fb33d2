"""The gateway's database: keys, usage windows and the audit chain.

SQLite for the embedded default, PostgreSQL for a team: the same SQLAlchemy
code. SQLite runs in WAL mode with synchronous=FULL, so a commit is on disk.
"""

from __future__ import annotations

import os

from sqlalchemy import BigInteger, Column, Float, Integer, MetaData, String, Table, Text, create_engine, event
from sqlalchemy.engine import Engine

metadata = MetaData()

api_keys = Table(
    "sekisho_api_keys",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("secret_sha256", String(64), nullable=False, unique=True),
    Column("prefix", String(24), nullable=False),
    Column("models", Text, nullable=False),  # JSON list; "*" means every model
    Column("rpm", Integer),
    Column("tpm", Integer),
    Column("admin", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float),
    Column("revoked_at", Float),
)

usage_windows = Table(
    "sekisho_usage_windows",
    metadata,
    Column("key_name", String(128), primary_key=True),
    Column("window", BigInteger, primary_key=True),  # unix minute
    Column("requests", Integer, nullable=False, default=0),
    Column("tokens", Integer, nullable=False, default=0),
)

audit_head = Table(
    "sekisho_audit_head",
    metadata,
    Column("chain", String(128), primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)

audit_records = Table(
    "sekisho_audit",
    metadata,
    Column("chain", String(128), primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("ts", Float, nullable=False, index=True),
    Column("record", Text, nullable=False),  # canonical JSON
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)


def default_url() -> str:
    from foundation import sekisho_home

    return os.environ.get("SEKISHO_GATEWAY_DB") or f"sqlite:///{sekisho_home() / 'gateway.db'}"


_engines: dict[str, Engine] = {}


def connect(url: str | None = None) -> Engine:
    """An engine for `url` (one per process), with the tables created."""
    url = url or default_url()
    if url in _engines:
        return _engines[url]
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"timeout": 30, "check_same_thread": False}, pool_size=8, max_overflow=8
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _):
            dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _immediate(conn):
            # Take the write lock at BEGIN so read-modify-write (the audit head,
            # usage windows) is serialised across processes.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        engine = create_engine(url, pool_size=8, max_overflow=8, pool_pre_ping=True)
    metadata.create_all(engine)
    _engines[url] = engine
    return engine
