"""Calling the vLLM server in this very process as a function (its ASGI app):
no socket, no second HTTP parse, no extra process between the engine and the
client (the embedded gateway, serve.gateway.embedded)."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from serve.gateway.context import RequestContext
from serve.gateway.errors import GatewayError
from serve.gateway.ledger import LedgerError
from serve.gateway.recorder import Recorder
from serve.gateway.relay import SseRelay, buffered

log = logging.getLogger("sekisho.gateway")


async def call_local(ctx: RequestContext, recorder: Recorder, local, body: bytes) -> web.StreamResponse:
    """Send `body` to `local` (serve.gateway.embedded.LocalEngine) and relay its answer.

    A failure of the engine is answered as a 5xx (or ends the stream), never a hang.

    Raises:
        ConnectionResetError, asyncio.CancelledError: the client went away (audited as 499).
        LedgerError: the request could not be recorded as admitted (nothing was sent).
    """
    relay, parts, start = None, [], {}
    unrecorded: LedgerError | None = None  # the admission failed: the 503, not the answer
    done, body_sent = asyncio.Event(), False

    async def receive():
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()  # vLLM listens for a disconnect while it streams
        return {"type": "http.disconnect"}

    async def send(message):
        nonlocal relay, unrecorded
        if message["type"] == "http.response.start":
            start.update(message)
            if ctx.stream and message["status"] == 200:
                opened = SseRelay(ctx, recorder)
                try:
                    await opened.prepare()  # waits for the admission (Recorder.admit_early)
                except LedgerError as err:  # nothing was sent; vLLM aborts the request
                    unrecorded = err
                    raise
                relay = opened
        elif message["type"] == "http.response.body":
            chunk = message.get("body", b"")
            if relay is not None:
                if chunk:
                    await relay.feed(chunk)
            else:
                parts.append(chunk)

    scope = local.scope(ctx.path, ctx.request_id, len(body), ctx.client)
    try:
        await local.app(scope, receive, send)
    except (ConnectionResetError, asyncio.CancelledError) as exc:
        if unrecorded is not None:
            raise unrecorded from None
        if relay is not None:
            await relay.finish(499)
        raise exc
    except Exception as exc:  # the engine failed; answered below as a 5xx, never a hang
        if unrecorded is not None:
            raise unrecorded from None
        if relay is not None:
            if isinstance(exc, OSError) or type(exc).__name__ == "ClientDisconnect":
                await relay.finish(499)
                return relay.response
            log.exception("engine failed mid-stream")
            return await relay.finish(500)
        if not start:
            log.exception("engine failed before answering")
            start = {"status": 500}
            parts = [GatewayError(500, "The model server failed; see its log.", code="engine_error").body()]
    finally:
        done.set()
    if relay is not None:
        return await relay.finish(200)
    return await buffered(ctx, recorder, start.get("status", 500), b"".join(parts), _content_type(start))


def _content_type(start: dict) -> str:
    """The Content-Type of an ASGI response start message (JSON if it names none)."""
    content_type = "application/json"
    for name, value in start.get("headers", []):
        if name.lower() == b"content-type":
            content_type = value.decode("latin-1")
    return content_type
