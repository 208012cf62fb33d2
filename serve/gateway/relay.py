"""What the client gets back: an engine's answer relayed (a whole body, or an
event stream as vLLM wrote it) or the gateway's own error, each after its audit
record is committed."""

from __future__ import annotations

import hashlib
import json

from aiohttp import web

from serve.gateway.context import RequestContext
from serve.gateway.errors import GatewayError
from serve.gateway.ledger import LedgerError
from serve.gateway.recorder import Recorder


def error_response(err: GatewayError, request_id: str | None = None) -> web.Response:
    """`err` in OpenAI's shape, with its headers and the request id."""
    headers = {"Content-Type": "application/json", **err.headers}
    if request_id:
        headers["X-Request-Id"] = request_id
    return web.Response(body=err.body(), status=err.status, headers=headers)


async def buffered(
    ctx: RequestContext, recorder: Recorder, status: int, content: bytes, content_type: str
) -> web.Response:
    """Relay a whole (non-streamed or error) answer of the engine, once audited."""
    if ctx.rename:
        content = content.replace(*ctx.rename)
    if status >= 400:
        content = openai_error_body(content, status)
    await recorder.finish(ctx, status, usage_of(content), hashlib.sha256(content), text=content)
    return web.Response(
        body=content, status=status, headers={"Content-Type": content_type, "X-Request-Id": ctx.request_id}
    )


class SseRelay:
    """Relays a 200 event stream to the client as vLLM wrote it. Only the usage
    event is parsed (token counts); `[DONE]` is held back until the audit record
    is committed, so a client never sees the end of an unaudited answer.

    Until the usage event arrives, each event relayed counts as one completion
    token: a stream the client drops early still counts against its key's tpm.
    """

    def __init__(self, ctx: RequestContext, recorder: Recorder):
        self.ctx, self.recorder = ctx, recorder
        self.digest = hashlib.sha256()
        self.reported: tuple[int, int] | None = None  # (prompt, completion) from the usage event
        self.events, self.pending, self.tail, self.first = 0, b"", [], True
        self.response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Request-Id": ctx.request_id,
            },
        )
        self.finished = False

    @property
    def usage(self) -> tuple[int, int]:
        """(prompt_tokens, completion_tokens): the engine's count, else one per event relayed."""
        return self.reported if self.reported is not None else (0, self.events)

    async def prepare(self) -> None:
        """Send the status line and headers, once the request is recorded as admitted.

        Raises:
            LedgerError: it could not be recorded (nothing was sent; send that 503).
        """
        await self.recorder.admitted(self.ctx)
        await self.response.prepare(self.ctx.request)

    async def feed(self, chunk: bytes) -> None:
        if (
            not self.pending
            and chunk.endswith(b"\n\n")
            and chunk.find(b"\n\n") == len(chunk) - 2
            and not chunk.startswith(b"data: [DONE]")
            and b'"usage":{' not in chunk
        ):
            self.events += 1
            await self._send(chunk)  # the usual case: one token's event, relayed as it came
            return
        pending = self.pending + chunk if self.pending else chunk
        if b"\n\n" not in pending:
            self.pending = pending
            return
        *events, self.pending = pending.split(b"\n\n")
        out = []
        for ev in events:
            if ev.startswith(b"data: [DONE]"):
                self.tail.append(ev)
            elif b'"usage":{' in ev and b'"choices":[]' in ev:
                self.reported = usage_of(ev[6:])
                if not self.ctx.strip_usage:
                    out.append(ev)
            else:
                self.events += 1
                out.append(ev)
        if out:
            await self._send(b"\n\n".join(out) + b"\n\n")

    async def _send(self, data: bytes) -> None:
        if self.ctx.rename:
            data = data.replace(*self.ctx.rename)
        self.digest.update(data)
        await self.response.write(data)
        if self.first:
            self.recorder.first_token(self.ctx)
            self.first = False

    async def fail(self, err: GatewayError) -> web.StreamResponse:
        """End the stream with an error event in OpenAI's shape (what its clients
        raise as an APIError), after the audit record."""
        if self.finished:
            return self.response
        self.finished = True
        try:
            await self.recorder.finish(self.ctx, err.status, self.usage, self.digest, error=err.code)
        except LedgerError as unrecorded:
            err = unrecorded
        return await self._end(err)

    async def _end(self, err: GatewayError) -> web.StreamResponse:
        try:
            await self.response.write(b"data: " + err.body() + b"\n\n")
            await self.response.write_eof()
        except ConnectionResetError:
            pass  # the client left as well
        return self.response

    async def finish(self, status: int) -> web.StreamResponse:
        """Commit the audit record, then send what was held back."""
        if self.finished:
            return self.response
        self.finished = True
        try:
            await self.recorder.finish(self.ctx, status, self.usage, self.digest)
        except LedgerError as err:  # not recorded: the stream ends in the 503 event, not [DONE]
            return await self._end(err)
        if status != 200:
            return self.response
        final = b"\n\n".join(self.tail) + b"\n\n" if self.tail else b""
        if self.pending:
            final = self.pending + final
        if final:
            await self.response.write(final)
        await self.response.write_eof()
        return self.response


def openai_error_body(content: bytes, status: int) -> bytes:
    """Keep an engine's error if it has OpenAI's shape; wrap it if not."""
    try:
        parsed = json.loads(content)
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            return content
        detail = parsed.get("detail") if isinstance(parsed, dict) else parsed
    except ValueError:
        detail = content[:500].decode("utf-8", "replace")
    return GatewayError(status, f"The model server refused the request: {detail}").body()


def usage_of(content: bytes) -> tuple[int, int]:
    """(prompt_tokens, completion_tokens) from an OpenAI response body or event."""
    try:
        usage = json.loads(content).get("usage") or {}
        return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    except (ValueError, AttributeError, TypeError):
        return 0, 0
