"""Each request's outcome: recorded as admitted before its answer starts, then
its completed audit record (through the ledger, which also counts its tokens
against the key's quota) and its metrics.

Fail closed: when the ledger cannot record, `admitted` and `finish` raise
LedgerError (a 503 GatewayError) and the caller sends that instead of the answer.

The admission is committed while the engine already works on the request
(`admit_early`): its commit (2-25 ms, more under load) overlaps the prefill
instead of adding to the time to first token. Nothing reaches the client before
it is committed: the relay waits for it (`admitted`) before the response's
status line, and `finish` before the completed record."""

from __future__ import annotations

import hashlib
import time

from serve.gateway.audit import storable
from serve.gateway.context import RequestContext
from serve.gateway.errors import GatewayError
from serve.gateway.ledger import Ledger, LedgerError
from serve.gateway.metrics import GatewayMetrics


class Recorder:
    """Audit records and metrics of one gateway.

    Args:
        ledger: where audit records and token counts go.
        metrics: the gateway's Prometheus metrics.
        record_text: also keep prompt and response text (else only their SHA-256).
    """

    def __init__(self, ledger: Ledger, metrics: GatewayMetrics, record_text: bool = False):
        self.ledger, self.metrics, self.record_text = ledger, metrics, record_text

    def open(self, ctx: RequestContext) -> None:
        """Start the audit record of a request about to be forwarded (ctx.key, ctx.route
        and ctx.body set)."""
        ctx.record = {
            "request_id": ctx.request_id,
            "key": ctx.key.name,
            "client": ctx.client,
            "route": ctx.path,
            "model": storable(ctx.model),
            "model_version": ctx.route.version,
            "model_sha256": ctx.route.sha256,
            "stream": ctx.stream,
            "prompt_sha256": hashlib.sha256(ctx.body).hexdigest(),
        }
        if self.record_text:
            ctx.record["request_body"] = ctx.body.decode("utf-8", "replace")

    async def admit_early(self, ctx: RequestContext) -> None:
        """Send the opened request's admission to the ledger and return at once; the
        engine may start on it, but nothing goes to the client before `admitted`."""
        sent = time.perf_counter()
        admission = await self.ledger.send(
            "admitted", record={**ctx.record, "ts": time.time(), "admitted": True}
        )

        def committed(fut) -> None:  # also marks a failure as seen where no one waits any more
            if not fut.cancelled() and fut.exception() is None:
                self.metrics.audit_admit.observe(time.perf_counter() - sent)

        admission.add_done_callback(committed)
        ctx.admission = admission

    async def admitted(self, ctx: RequestContext) -> None:
        """Wait for the admission `admit_early` sent (at once if none is pending).

        The request's own task is the only one that waits for it. If that task is
        cancelled (the client left), only its wait ends: the ledger still commits
        the admission, before the completed record that follows it.

        Raises:
            LedgerError: it could not be recorded (send that 503, not the answer).
        """
        admission = ctx.admission
        if admission is not None and not admission.cancelled():
            await admission

    def served_by(self, ctx: RequestContext, version: str | None, sha256: str | None) -> None:
        """The replica about to answer serves this version (else the route's)."""
        ctx.record.update(model_version=version or ctx.route.version, model_sha256=sha256 or ctx.route.sha256)

    async def finish(
        self,
        ctx: RequestContext,
        status: int,
        usage: tuple[int, int] = (0, 0),
        digest=None,
        error: str | None = None,
        text: bytes | None = None,
    ) -> None:
        """Complete and commit the audit record, count the tokens, observe the metrics.

        Raises:
            LedgerError: the record could not be committed (send that 503, not the answer).

        Args:
            usage: (prompt_tokens, completion_tokens).
            digest: the SHA-256 (hashlib object) of what the client got.
            error: the error code the client got, if any.
            text: the response body, kept only with record_text.
        """
        await self.admitted(ctx)  # the admitted row first: the completed record replaces it
        prompt_tokens, completion_tokens = usage
        latency = time.perf_counter() - ctx.started
        record = ctx.record
        record.update(
            ts=time.time(),
            status=status,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_ms=round(latency * 1000, 2),
        )
        if digest is not None:
            record["response_sha256"] = digest.hexdigest()
        if error:
            record["error"] = error
        if text is not None and self.record_text:
            record["response_body"] = text.decode("utf-8", "replace")
        tokens = None
        key = ctx.key
        if key is not None and key.tpm is not None and (prompt_tokens or completion_tokens):
            tokens = (key.name, prompt_tokens + completion_tokens)
        key_name = key.name if key is not None else None
        committing = time.perf_counter()
        try:
            await self.ledger.audit(record, tokens)
        except LedgerError:
            self.metrics.observe(record["model"], 503, latency, prompt_tokens, completion_tokens, key_name)
            raise
        self.metrics.audit_commit.observe(time.perf_counter() - committing)
        self.metrics.observe(record["model"], status, latency, prompt_tokens, completion_tokens, key_name)

    async def reject(self, ctx: RequestContext, err: GatewayError) -> GatewayError:
        """Audit a request the gateway answers itself with `err`; returns what to send:
        `err`, or the ledger's 503 if it could not be recorded."""
        ctx.record = {
            "request_id": ctx.request_id,
            "key": ctx.key.name if ctx.key else None,
            "client": ctx.client,
            "route": ctx.path,
            "model": storable(ctx.model),
            "model_version": None,
            "model_sha256": None,
            "stream": None,
        }
        self.metrics.rejections.labels(err.code or str(err.status)).inc()
        try:
            await self.finish(ctx, err.status, error=err.code)
        except LedgerError as unrecorded:
            return unrecorded
        return err

    def first_token(self, ctx: RequestContext) -> None:
        self.metrics.ttft.labels(ctx.model).observe(time.perf_counter() - ctx.started)

    def failed_over(self, ctx: RequestContext) -> None:
        self.metrics.failovers.labels(ctx.model).inc()
