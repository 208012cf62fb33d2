"""The gateway's database: keys, usage windows and the audit chain.

SQLite for the embedded default, PostgreSQL for a team: the same SQLAlchemy
code. SQLite runs in WAL mode with synchronous=FULL, so a commit is on disk; its
file is created 0600 (SQLite gives its WAL and shared-memory files the same
mode). Writers take SQLite's write lock at BEGIN; readers (`reading(engine)`)
begin a plain read transaction and never stall the writers.
"""

from __future__ import annotations

import os

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    inspect,
)
from sqlalchemy.engine import Engine, make_url

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


audit_admitted = Table(
    # A request recorded as admitted before its answer's first byte; the row goes
    # in the transaction that appends its completed record to the chain, so a row
    # left here is an answer that started and never completed its record.
    "sekisho_audit_admitted",
    metadata,
    Column("chain", String(128), primary_key=True),
    Column("request_id", String(128), primary_key=True),
    Column("ts", Float, nullable=False),
    Column("record", Text, nullable=False),  # canonical JSON
)

# How long a SQLite statement waits for another connection's lock; the ledger
# process sets it to its own call timeout so it gives up when its caller does.
BUSY_TIMEOUT_S = 30.0
READ = {"sekisho_read": True}


def reading(engine: Engine) -> Engine:
    """`engine` for read-only transactions (no write lock on SQLite)."""
    return engine.execution_options(**READ)


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
        _create_private(url)
        engine = create_engine(
            url,
            connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False},
            pool_size=8,
            max_overflow=8,
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
            # Writers take the write lock at BEGIN so read-modify-write (the audit
            # head, usage windows) is serialised across processes; readers don't.
            read = conn.get_execution_options().get("sekisho_read")
            conn.exec_driver_sql("BEGIN" if read else "BEGIN IMMEDIATE")
    else:
        engine = create_engine(url, pool_size=8, max_overflow=8, pool_pre_ping=True)
    with reading(engine).connect() as conn:
        missing = set(metadata.tables) - set(inspect(conn).get_table_names())
    if missing:  # only then take the write lock
        metadata.create_all(engine)
    _engines[url] = engine
    return engine


def _create_private(url: str) -> None:
    """Create a SQLite file database 0600 (whatever the umask) before SQLite does."""
    path = make_url(url).database
    if not path or path == ":memory:" or path.startswith("file:") or os.path.exists(path):
        return
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    os.chmod(path, 0o600)
