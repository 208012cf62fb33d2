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
{"id", ...} or {"id", "error"} out. Audit records that arrive while a commit is
on disk are committed together in the next transaction (group commit); the
reply comes only after the commit, so the gateway still sends a response's last
byte only once its record is committed. The hash chain is kept by the database
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
from pathlib import Path

READY = b'{"ready":true}\n'
MAX_BATCH = 512
START_TIMEOUT_S = 120.0


class LedgerError(RuntimeError):
    pass


class Ledger:
    """The gateway side: starts the child on first use (and again if it died)."""

    def __init__(self, db_url: str | None, chain: str):
        self.db_url, self.chain = db_url, chain
        self.proc: subprocess.Popen | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.pending: dict[int, asyncio.Future] = {}
        self.ids = itertools.count(1)
        self._starting: asyncio.Lock | None = None
        self._reader_task: asyncio.Task | None = None

    async def start(self) -> None:
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self.writer is not None:
                return
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            root = str(Path(__file__).resolve().parents[2])
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
            if self.db_url:  # in the environment, not the command line: a URL may carry a password
                env["SEKISHO_GATEWAY_DB"] = self.db_url
            cmd = [sys.executable, "-m", "serve.gateway.ledger", str(theirs.fileno()), self.chain]
            try:
                self.proc = subprocess.Popen(
                    cmd, pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL
                )
            finally:
                theirs.close()
            reader, writer = await asyncio.open_unix_connection(sock=ours, limit=1 << 24)
            try:
                line = await asyncio.wait_for(reader.readline(), START_TIMEOUT_S)
            except TimeoutError:
                line = b""
            if line != READY:
                writer.close()
                self._reap()
                raise LedgerError(
                    "the gateway's audit/quota process did not start (its error is in this "
                    "process's log above)"
                )
            self.writer = writer
            self._reader_task = asyncio.create_task(self._read(reader, writer))

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                reply = json.loads(line)
                fut = self.pending.pop(reply.pop("id"), None)
                if fut is None or fut.done():
                    continue
                if "error" in reply:
                    fut.set_exception(LedgerError(reply["error"]))
                else:
                    fut.set_result(reply)
        finally:
            # The child is gone: every waiter learns its work was not done; the
            # next call starts a new child.
            if self.writer is writer:
                self.writer = None
            writer.close()
            pending, self.pending = self.pending, {}
            for fut in pending.values():
                if not fut.done():
                    fut.set_exception(LedgerError("the gateway's audit/quota process exited"))
            self._reap()

    def _reap(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
        self.proc = None

    async def call(self, op: str, **args) -> dict:
        if self.writer is None:
            await self.start()
        rid = next(self.ids)
        fut = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        self.writer.write(json.dumps({"id": rid, "op": op, **args}).encode() + b"\n")
        return await fut

    async def audit(self, record: dict, tokens: tuple[str, int] | None = None) -> int:
        """Commit `record` (and count `tokens` = (key, n) against the key's minute); its sequence number."""
        reply = await self.call("audit", record=record, tokens=tokens)
        return reply["seq"]

    async def admit(self, key: str, rpm: int | None, tpm: int | None):
        from serve.gateway.quota import QuotaDecision

        reply = await self.call("admit", key=key, rpm=rpm, tpm=tpm)
        return QuotaDecision(reply["allowed"], reply["reason"], reply["retry_after_s"])

    async def close(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.close()  # the child sees EOF and exits
        if self._reader_task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._reader_task), 10)
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
        msgs = [json.loads(line) for line in lines if line]
        replies = []
        audits = [m for m in msgs if m["op"] == "audit"]
        for i in range(0, len(audits), MAX_BATCH):
            batch = audits[i : i + MAX_BATCH]
            try:
                seqs = log.append_many([m["record"] for m in batch])
            except Exception as exc:  # every waiter learns its record was not written
                replies += [{"id": m["id"], "error": f"audit record not written: {exc}"} for m in batch]
                continue
            replies += [{"id": m["id"], "seq": s, "batch": len(batch)} for m, s in zip(batch, seqs)]
            tokens: dict[str, int] = {}
            for m in batch:
                if m.get("tokens"):
                    tokens[m["tokens"][0]] = tokens.get(m["tokens"][0], 0) + m["tokens"][1]
            for key, n in tokens.items():
                try:
                    quota.add_tokens(key, n)
                except Exception:  # the answer is committed; its tokens count from the next success
                    pass
        for m in msgs:
            if m["op"] == "admit":
                try:
                    d = quota.admit(m["key"], m["rpm"], m["tpm"])
                    replies.append(
                        {
                            "id": m["id"],
                            "allowed": d.allowed,
                            "reason": d.reason,
                            "retry_after_s": d.retry_after_s,
                        }
                    )
                except Exception as exc:
                    replies.append({"id": m["id"], "error": f"quota check failed: {exc}"})
            elif m["op"] != "audit":
                replies.append({"id": m["id"], "error": f"unknown op {m['op']!r}"})
        if replies:
            sock.sendall(b"".join(json.dumps(r).encode() + b"\n" for r in replies))


def main() -> None:
    from foundation import offline

    offline.apply()
    sock = socket.socket(fileno=int(sys.argv[1]))
    try:
        serve(sock, sys.argv[2])
    except (BrokenPipeError, ConnectionResetError):
        pass


if __name__ == "__main__":
    main()
