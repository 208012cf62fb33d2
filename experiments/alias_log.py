"""The record of every alias move Sekisho makes (promote, rollback, set_alias), kept
in the registry so that it is shared by everyone using the same tracking store,
and safe when several people move the same alias at the same moment.

Each move is one registered-model tag of its own, `sekisho.event.<KEY>`, whose
value is the event as JSON. KEY is the event's time in nanoseconds (never less
than one more than the newest event already recorded) and a random suffix, so
two writers never write the same tag and nothing is read, changed and written
back: an entry cannot be lost, on the embedded SQLite store, on PostgreSQL used
directly or through a team tracking server. Tags sort by KEY into one order that
every reader agrees on; replaying them gives each alias's history, a stack:
`promote` and `set` push a version (unless it is already on top), `rollback` pops
one.

Reading the newest key and writing the next one is done under a lock of the store
(PostgreSQL: an advisory lock per model; the embedded SQLite store: a lock file
beside the database), so keys grow in the order their tags are written and an
event can never land before one that is already recorded. Without it, a writer
delayed between stamping its key and writing it (a loaded machine) put its event
into the past after another promotion had returned, and that promotion's reported
`previous` no longer matched the history. A team tracking server gives clients no
lock: there, two moves of one alias in the same instant are both kept and the
alias ends at the top of the history, but the `previous` one of them reported may
differ from the history's order.

The alias itself then follows the record: after writing its event a writer sets
the alias to the top of the replayed history, reads the record again, and repeats
until the record has not moved on. Whoever writes last therefore sets the alias
last, after every event that was written, so when the writers are done the alias
is the top of the history. Moves made outside Sekisho (MLflow's UI) are not
recorded; an alias that has no recorded move starts its history at the version it
points at.

Anyone who may edit the model can add tags too, so the record is read strictly:
a tag under `sekisho.event.` counts only if its key has the exact form Sekisho
writes (20 digits, a dot, 8 hex digits, stamped no later than a day after this
machine's clock) and its value is a JSON object with a known action, a string
alias and, where the action carries one, the number of a registered version.
Any other tag is left out of the replay and reported by `ignored()`, so that a
tag written by hand (say `sekisho.event.zzz`, which sorts after every real
event) can neither pin an alias nor break the replay."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from experiments import tracking
from foundation import UserError

EVENT_TAG = "sekisho.event."
ACTIONS = ("promote", "set", "rollback", "observed")
_KEY = re.compile(re.escape(EVENT_TAG) + r"(\d{20})\.[0-9a-f]{8}")
_VERSION = re.compile(r"[1-9]\d{0,17}")
_FUTURE_NS = 86_400 * 10**9  # a key stamped later than this after now is not Sekisho's
SETTLE_ROUNDS = 100
# A registry store answers concurrent first writes of the same row with a
# uniqueness error (MLflow upserts with select-then-insert) and SQLite with
# "database is locked"; both are safe to repeat.
_RETRYABLE = re.compile(
    r"(?i)unique|integrity|duplicate key|database is locked|deadlock|"
    r"could not serialize"
)


class NotPermitted(UserError):
    """The tracking server refused the change (the user lacks EDIT on the model)."""


@dataclass(frozen=True)
class Step:
    """One recorded event and its effect on its alias's history."""

    key: str
    event: dict
    previous: str | None  # the alias's version before this event
    version: str | None  # the alias's version after it
    history: tuple[str, ...]  # the alias's history after it
    applied: bool  # False for a rollback that found nothing to go back to


@dataclass(frozen=True)
class Ignored:
    """A tag under `sekisho.event.` that is not a well-formed event, left out of the replay."""

    key: str
    why: str


def record(name: str, event: dict) -> str:
    """Append `event` (with at least "action" and "alias") to `name`'s record.

    Returns:
        The event's key.
    """
    from mlflow import MlflowClient

    tracking.use_store()
    with _writer_lock(name):
        newest = max((_stamp(k) for k, _ in _read(_model(name))[0]), default=0)
        key = f"{EVENT_TAG}{max(time.time_ns(), newest + 1):020d}.{secrets.token_hex(4)}"
        _retry(
            lambda: MlflowClient().set_registered_model_tag(
                name, key, json.dumps(event, ensure_ascii=False, sort_keys=True)
            ),
            name,
        )
    return key


@contextlib.contextmanager
def _writer_lock(name: str):
    """One writer of `name`'s record at a time, across processes and nodes, where the
    store offers a lock (module doc): an advisory lock on PostgreSQL, a lock file
    beside the embedded SQLite database (one for all its models); none through a tracking server."""
    uri = tracking.tracking_uri()
    kind = tracking.database_kind(uri)
    if kind == "postgresql":
        import sqlalchemy
        from sqlalchemy.pool import NullPool

        digest = hashlib.sha256(f"sekisho.alias_log:{name}".encode()).digest()
        lock = {"k": int.from_bytes(digest[:8], "big", signed=True)}
        engine = sqlalchemy.create_engine(uri, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), lock)
                try:
                    yield
                finally:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), lock)
        finally:
            engine.dispose()
    elif kind == "sqlite" and uri.startswith("sqlite:///") and ":memory:" not in uri:
        import fcntl

        db = Path(uri.removeprefix("sqlite:///"))
        with open(db.with_name(db.name + ".sekisho-alias.lock"), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
    else:
        yield


def steps(name: str, alias: str | None = None, model=None) -> list[Step]:
    """The recorded events of `name` (of `alias` only, when given) in order, each with
    its effect; tags that are not well-formed events are left out (see `ignored`).

    Args:
        model: the registered model when already fetched.
    """
    events, _ = _read(model if model is not None else _model(name))
    stacks: dict[str, list[str]] = {}
    out = []
    for key, event in events:
        a = event["alias"]
        if alias is not None and a != alias:
            continue
        stack = stacks.setdefault(a, [])
        before = stack[-1] if stack else None
        applied = True
        if event["action"] == "rollback":
            if len(stack) >= 2:
                stack.pop()
            else:
                applied = False
        elif event["action"] == "observed":  # where the alias was before any recorded move
            if stack:
                applied = False
            else:
                stack.append(event["version"])
        elif not stack or stack[-1] != event["version"]:
            stack.append(event["version"])
        out.append(Step(key, event, before, stack[-1] if stack else None, tuple(stack), applied))
    return out


def ignored(name: str, model=None) -> list[Ignored]:
    """The tags of `name` under `sekisho.event.` that the replay leaves out, each with why."""
    return _read(model if model is not None else _model(name))[1]


def _read(model) -> tuple[list[tuple[str, dict]], list[Ignored]]:
    """The well-formed events among `model`'s tags in record order, and the other
    `sekisho.event.` tags."""
    events: list[tuple[str, dict]] = []
    bad: list[Ignored] = []
    latest = max((int(v.version) for v in model.latest_versions or ()), default=0)
    known: dict[str, bool] = {}
    for key, value in sorted(model.tags.items()):
        if not key.startswith(EVENT_TAG):
            continue
        why = _key_problem(key) or _event_problem(value)
        if why is None:
            event = json.loads(value)
            v = event.get("version") if event["action"] != "rollback" else None
            if v is not None and int(v) > latest:
                if v not in known:
                    known[v] = _version_exists(model.name, v)
                if not known[v]:
                    why = f"version {v} is not registered"
        if why is None:
            events.append((key, event))
        else:
            bad.append(Ignored(key, why))
    return events, bad


def _key_problem(key: str) -> str | None:
    m = _KEY.fullmatch(key)
    if m is None:
        return "the key is not sekisho.event.<20 digits>.<8 hex digits>"
    if int(m.group(1)) > time.time_ns() + _FUTURE_NS:
        return "the key is stamped more than a day after this machine's clock"
    return None


def _event_problem(value: str) -> str | None:
    try:
        event = json.loads(value)
    except ValueError:
        return "the value is not JSON"
    if not isinstance(event, dict):
        return f"the value is JSON {type(event).__name__}, not an object"
    action = event.get("action")
    if action not in ACTIONS:
        return f"action {action!r} is not one of {', '.join(ACTIONS)}"
    if not isinstance(event.get("alias"), str) or not event["alias"]:
        return f"alias {event.get('alias')!r} is not a non-empty string"
    if action != "rollback":
        v = event.get("version")
        if not isinstance(v, str) or not _VERSION.fullmatch(v):
            return f"version {v!r} of a {action!r} event is not a version number as a string"
    return None


def _version_exists(name: str, version: str) -> bool:
    import mlflow
    from mlflow import MlflowClient

    try:
        MlflowClient().get_model_version(name, version)
        return True
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise


def history(name: str, alias: str) -> list[str]:
    """The versions `name@alias` has pointed at, oldest first, as the record says
    (the alias's current version alone when nothing was recorded for it)."""
    rm = _model(name)
    mine = steps(name, alias, rm)
    if mine:
        return list(mine[-1].history)
    return [str(rm.aliases[alias])] if alias in rm.aliases else []


def move(name: str, alias: str, event: dict) -> Step:
    """Record `event` for `name@alias` and make the alias follow the record.

    An alias that points at a version but has no recorded move first gets an
    "observed" event for that version, so that the move can be rolled back (it
    counts only while the history is empty, so a late one changes nothing).

    Returns:
        This event's step in the record as it stood once the alias had settled.
    """
    rm = _model(name)
    if alias in rm.aliases and not steps(name, alias, rm):
        record(name, {"action": "observed", "alias": alias, "version": str(rm.aliases[alias])})
    key = record(name, event | {"alias": alias})
    return next(s for s in settle(name, alias) if s.key == key)


def settle(name: str, alias: str) -> list[Step]:
    """Set `name@alias` to the top of its recorded history until the record stops moving.

    Returns:
        The alias's steps as last read.
    """
    from mlflow import MlflowClient

    client = MlflowClient()
    mine = steps(name, alias)
    for _ in range(SETTLE_ROUNDS):
        top = mine[-1].version
        _retry(lambda: client.set_registered_model_alias(name, alias, top), name)  # noqa: B023
        mine = steps(name, alias)
        if mine[-1].version == top:
            return mine
    raise RuntimeError(f"{name}@{alias}: the alias record kept moving for {SETTLE_ROUNDS} rounds")


def _model(name: str):
    import mlflow
    from mlflow import MlflowClient

    from experiments.registry import ModelNotFoundError

    tracking.use_store()
    try:
        return MlflowClient().get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        raise ModelNotFoundError(
            f"model {name!r} not found in the registry at {tracking.tracking_uri()}."
        ) from None


def _stamp(key: str) -> int:
    return int(key.removeprefix(EVENT_TAG).split(".", 1)[0])


def _retry(call, name: str, attempts: int = 20) -> None:
    import mlflow

    for attempt in range(attempts):
        try:
            call()
            return
        except mlflow.exceptions.MlflowException as exc:
            if exc.error_code == "PERMISSION_DENIED":
                raise NotPermitted(
                    f"{os.environ.get('MLFLOW_TRACKING_USERNAME', 'this user')!r} may not change "
                    f"model {name!r} on the tracking server at {tracking.tracking_uri()} (moving its "
                    "aliases needs EDIT on it): ask the tracking server's admin to grant it with "
                    f"`sekisho tracking grant USER --model {name} --permission EDIT`."
                ) from None
            if attempt == attempts - 1 or not _RETRYABLE.search(str(exc)):
                raise
            time.sleep(0.01 * (attempt + 1) + secrets.randbelow(20) / 1000)
