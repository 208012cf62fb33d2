"""The gateway's per-request database work (audit appends, request and token
quotas) in a child process of the gateway's process.

Why a process: the embedded gateway lives in vLLM's API server process, whose
event loop streams every token. Database work on a thread there fights that
loop for the GIL: each statement releases and retakes it, and retaking it while
the loop is busy costs up to the interpreter's switch interval (5 ms), so one
audit commit took about 20 ms of a request's end at 32 concurrent streams. In
its own process the same commit takes about a millisecond, and the gateway's
loop only writes one line to a socket and reads one back.

Protocol (one JSON object a line, over a socketpair): {"id", "op", ...} in,
{"id", ...} or {"id", "error"} out. Admissions ("admitted": a request about to
be answered) and audit records that arrive while a commit is on disk are
committed together in the next transaction (group commit); the reply comes only
after the commit, so the gateway sends an answer's first byte only once the
request is recorded as admitted, and its last only once its record is complete.
A group that fails is retried one message at a time, so a record that cannot be
written fails alone, never the other requests of its group. Every call has a
timeout (TIMEOUT_S): a locked, full or unreachable database, or a dead child,
ends in a LedgerError (the client's 503), never a wait without end. The hash chain is kept by the database
(AuditLog.append_many), however many gateway processes append to it. The child
exits when the gateway's end of the socket closes (the gateway process died).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from serve.gateway.errors import GatewayError

READY = b'{"ready":true}\n'
MAX_BATCH = 512
START_TIMEOUT_S = 120.0
TIMEOUT_S = 5.0  # a ledger call's limit; the child's database waits are held to it too


class LedgerError(GatewayError):
    """The ledger could not record: the request gets this 503 (OpenAI's shape) and no answer."""

    def __init__(self, detail: str):
        super().__init__(
            503,
            "The gateway cannot record requests right now, so it answers none; retry shortly.",
            code="audit_unavailable",
            headers={"Retry-After": "5"},
        )
        self.detail = detail

    def __str__(self) -> str:
        return self.detail


class _Replies(asyncio.Protocol):
    """The gateway's end of the socket: each reply resolves its caller's future
    in the I/O callback itself. At 32 streams the event loop's every pass is long
    (vLLM's output processing and every stream's token), and each handoff between
    tasks and callbacks waits for the next pass: a reader task, `wait_for` and a
    waiting task around each reply made the admission take 8.5 ms and the end of
    each answer 10.6 ms, where the child's commit took under 1 ms."""

    def __init__(self, ledger: Ledger):
        self.ledger, self.buf = ledger, b""
        loop = asyncio.get_running_loop()
        self.ready, self.closed = loop.create_future(), loop.create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        *lines, self.buf = (self.buf + data).split(b"\n")
        for line in lines:
            if not self.ready.done():
                self.ready.set_result(line + b"\n")
            else:
                self.ledger._resolve(json.loads(line))

    def connection_lost(self, exc) -> None:
        if not self.ready.done():
            self.ready.set_result(b"")
        self.ledger._gone(self)
        self.closed.set_result(None)


class Ledger:
    """The gateway side: starts the child on first use (and again if it died)."""

    def __init__(self, db_url: str | None, chain: str, timeout_s: float = TIMEOUT_S):
        self.db_url, self.chain, self.timeout_s = db_url, chain, timeout_s
        self.proc: subprocess.Popen | None = None
        self.replies: _Replies | None = None  # while the child answers
        self.pending: dict[int, tuple[asyncio.Future, asyncio.TimerHandle]] = {}
        self.ids = itertools.count(1)
        self._outbox: list[bytes] = []  # messages waiting for this pass's write (see _flush)
        self._starting: asyncio.Lock | None = None

    async def start(self) -> None:
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self.replies is not None:
                return
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            root = str(Path(__file__).resolve().parents[2])
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
            if self.db_url:  # in the environment, not the command line: a URL may carry a password
                env["SEKISHO_GATEWAY_DB"] = self.db_url
            cmd = [
                sys.executable,
                "-m",
                "serve.gateway.ledger",
                str(theirs.fileno()),
                self.chain,
                str(self.timeout_s),
            ]
            try:
                self.proc = subprocess.Popen(
                    cmd, pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL
                )
            finally:
                theirs.close()
            loop = asyncio.get_running_loop()
            _, replies = await loop.create_unix_connection(lambda: _Replies(self), sock=ours)
            try:
                line = await asyncio.wait_for(asyncio.shield(replies.ready), START_TIMEOUT_S)
            except TimeoutError:
                line = b""
            if line != READY:
                replies.transport.close()
                self._reap()
                raise LedgerError(
                    "the gateway's audit/quota process did not start (its error is in this "
                    "process's log above)"
                )
            self.replies = replies

    def _resolve(self, reply: dict) -> None:
        fut, timer = self.pending.pop(reply.pop("id"), (None, None))
        if fut is None:
            return
        timer.cancel()
        if fut.done():
            return
        if "error" in reply:
            fut.set_exception(LedgerError(reply["error"]))
        else:
            fut.set_result(reply)

    def _gone(self, replies: _Replies) -> None:
        """The child's end closed: every waiter learns its work was not done; the
        next call starts a new child. (After `close`, the child finishes its batch
        and exits by itself.)"""
        lost = self.replies is replies
        if lost:
            self.replies = None
        pending, self.pending, self._outbox = self.pending, {}, []
        for fut, timer in pending.values():
            timer.cancel()
            if not fut.done():
                fut.set_exception(LedgerError("the gateway's audit/quota process exited"))
        if lost:
            self._reap()

    def _expire(self, rid: int) -> None:
        fut, _ = self.pending.pop(rid, (None, None))
        if fut is not None and not fut.done():
            fut.set_exception(
                LedgerError(f"the gateway's audit/quota process did not answer in {self.timeout_s} s")
            )

    def _reap(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
        self.proc = None

    async def send(self, op: str, **args) -> asyncio.Future:
        """Send one message; returns the future of its reply (a LedgerError if the
        child could not do it, is gone, or did not answer within timeout_s).

        Awaiting it wakes the caller in the loop's next pass after the reply. A
        caller cancelled meanwhile cancels only its wait: the child still does the
        work, in the order the messages were sent.
        """
        if self.replies is None:
            await self.start()
        loop = asyncio.get_running_loop()
        rid = next(self.ids)
        fut = loop.create_future()
        deadline = time.time() + self.timeout_s  # the child drops what its caller gave up on
        # A child that goes away before _flush writes this fails it through _gone.
        self.pending[rid] = (fut, loop.call_later(self.timeout_s, self._expire, rid))
        if not self._outbox:  # the messages of one pass of the loop go in one write
            loop.call_soon(self._flush)
        self._outbox.append(json.dumps({"id": rid, "op": op, "deadline": deadline, **args}).encode())
        return fut

    def _flush(self) -> None:
        """Write the messages sent since the last flush: one system call and one
        wake-up of the child for all the requests that reached it in one pass."""
        outbox, self._outbox = self._outbox, []
        replies = self.replies
        # A child gone meanwhile: their waiters learn it from _gone (or their timer).
        if outbox and replies is not None and not replies.transport.is_closing():
            replies.transport.write(b"\n".join(outbox) + b"\n")

    async def call(self, op: str, **args) -> dict:
        """Send one message and wait (at most timeout_s) for its reply.

        Raises:
            LedgerError: the child could not do it, is gone, or did not answer in time.
        """
        return await (await self.send(op, **args))

    async def admitted(self, record: dict) -> None:
        """Commit `record` (with its request_id) as an admitted request, before its answer starts."""
        await self.call("admitted", record=record)

    async def audit(self, record: dict, tokens: tuple[str, int] | None = None) -> int:
        """Commit `record` (and count `tokens` = (key, n) against the key's minute); its sequence number."""
        reply = await self.call("audit", record=record, tokens=tokens)
        return reply["seq"]

    async def admit(self, key: str, rpm: int | None, tpm: int | None):
        from serve.gateway.quota import QuotaDecision

        reply = await self.call("admit", key=key, rpm=rpm, tpm=tpm)
        return QuotaDecision(reply["allowed"], reply["reason"], reply["retry_after_s"])

    async def close(self) -> None:
        replies, self.replies = self.replies, None
        if replies is not None:
            replies.transport.close()  # the child sees EOF and exits
            try:
                await asyncio.wait_for(asyncio.shield(replies.closed), 10)
            except Exception:
                pass
        if self.proc is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(None, self.proc.wait, 10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None


def serve(sock: socket.socket, chain: str) -> None:
    """The child: answer requests until the gateway closes its end."""
    from serve.gateway.audit import AuditLog
    from serve.gateway.quota import QuotaLedger

    log, quota = AuditLog(chain), QuotaLedger()  # the database: SEKISHO_GATEWAY_DB or the default
    sock.sendall(READY)
    buf = b""
    while True:
        data = sock.recv(1 << 20)
        if not data:
            return
        buf += data
        sock.setblocking(False)
        try:
            while len(buf) < (1 << 24):  # whatever else has arrived: one batch
                more = sock.recv(1 << 20)
                if not more:
                    break
                buf += more
        except BlockingIOError:
            pass
        finally:
            sock.setblocking(True)
        *lines, buf = buf.split(b"\n")
        msgs, replies = _unexpired([json.loads(line) for line in lines if line])
        writes = [m for m in msgs if m["op"] in ("audit", "admitted")]
        for i in range(0, len(writes), MAX_BATCH):
            replies += _commit(log, quota, writes[i : i + MAX_BATCH])
        for m in msgs:
            if m["op"] == "admit":
                replies.append(_admit(quota, m))
            elif m["op"] not in ("audit", "admitted"):
                replies.append({"id": m["id"], "error": f"unknown op {m['op']!r}"})
        if replies:
            sock.sendall(b"".join(json.dumps(r).encode() + b"\n" for r in replies))


def _unexpired(msgs: list[dict]) -> tuple[list[dict], list[dict]]:
    """The messages whose caller still waits, and error replies for the others (never
    written late: their requests got a 503)."""
    now = time.time()
    late = [m for m in msgs if m.get("deadline", now) < now]
    return [m for m in msgs if m.get("deadline", now) >= now], [
        {"id": m["id"], "error": "dropped: the gateway stopped waiting for it"} for m in late
    ]


def _commit(log, quota, batch: list[dict]) -> list[dict]:
    """Commit a group of admissions and audit records in one transaction; if it
    fails for one of them (not for the database: locked, full, unreachable), each
    one alone, so that only the ones that cannot be written fail."""
    from sqlalchemy.exc import OperationalError

    try:
        replies = _write(log, batch)
    except OperationalError as exc:  # the database, not a record: the whole group fails
        return [{"id": m["id"], "error": f"audit record not written: {exc}"} for m in batch]
    except Exception:
        replies, down = [], None
        for m in batch:
            try:
                if down is not None:
                    raise down
                replies += _write(log, [m])
            except Exception as exc:  # its waiter learns its record was not written
                down = exc if isinstance(exc, OperationalError) else None
                replies.append({"id": m["id"], "error": f"audit record not written: {exc}"})
    tokens: dict[str, int] = {}
    written = {r["id"] for r in replies if "error" not in r}
    for m in batch:
        if m["id"] in written and m.get("tokens"):
            tokens[m["tokens"][0]] = tokens.get(m["tokens"][0], 0) + m["tokens"][1]
    for key, n in tokens.items():
        try:
            quota.add_tokens(key, n)
        except Exception:  # the answer is committed; its tokens count from the next success
            pass
    return replies


def _write(log, batch: list[dict]) -> list[dict]:
    admitted = [m for m in batch if m["op"] == "admitted"]
    audits = [m for m in batch if m["op"] == "audit"]
    before = min((m["deadline"] for m in batch if "deadline" in m), default=None)
    seqs = log.write([m["record"] for m in admitted], [m["record"] for m in audits], before)
    replies = [{"id": m["id"], "admitted": True, "batch": len(batch)} for m in admitted]
    return replies + [{"id": m["id"], "seq": s, "batch": len(batch)} for m, s in zip(audits, seqs)]


def _admit(quota, m: dict) -> dict:
    if m.get("deadline", float("inf")) < time.time():
        return {"id": m["id"], "error": "dropped: the gateway stopped waiting for it"}
    try:
        d = quota.admit(m["key"], m["rpm"], m["tpm"])
    except Exception as exc:
        return {"id": m["id"], "error": f"quota check failed: {exc}"}
    return {"id": m["id"], "allowed": d.allowed, "reason": d.reason, "retry_after_s": d.retry_after_s}


def main() -> None:
    from foundation import offline
    from serve.gateway import db

    offline.apply()
    db.BUSY_TIMEOUT_S = float(sys.argv[3])  # give up on a locked database when the gateway does
    sock = socket.socket(fileno=int(sys.argv[1]))
    try:
        serve(sock, sys.argv[2])
    except (BrokenPipeError, ConnectionResetError):
        pass


if __name__ == "__main__":
    main()
