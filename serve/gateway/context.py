"""What the gateway knows about a served model, and one request's state on its
way through the gateway (authenticated, checked, forwarded, relayed, audited)."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

from aiohttp import web

from serve.gateway.keys import ApiKey


@dataclass(frozen=True)
class ModelRoute:
    """What the gateway knows about one served model name."""

    deployment: str
    version: str  # registry NAME/VERSION, or the folder for a local path
    sha256: str
    context_len: int
    base: str  # the base model's served name (itself for a base model)
    task: str = "generate"  # or "embed": which routes the model answers


@dataclass(kw_only=True)
class RequestContext:
    """One request, from arrival to its audit record. The handlers fill it in as
    they learn each part; the forwarder, the relay and the recorder read it."""

    request: web.Request
    request_id: str
    started: float  # time.perf_counter() at arrival
    path: str  # the route asked for, e.g. /v1/chat/completions
    client: str | None  # the peer address
    key: ApiKey | None = None  # once authenticated
    model: str | None = None  # the model name the client sent, if it is a string
    route: ModelRoute | None = None
    payload: dict = field(default_factory=dict)
    body: bytes = b""  # the body for the engine (with the usage event asked for, see strip_usage)
    stream: bool = False
    strip_usage: bool = False  # the gateway asked for the usage event: the client does not get it
    rename: tuple[bytes, bytes] | None = None  # the engine's versioned model name -> the client's
    record: dict = field(default_factory=dict)  # the audit record so far (serve.gateway.recorder)
    admission: asyncio.Future | None = None  # its admitted record being committed (Recorder.admit_early)
    prompt_chars: int = 0  # the prompt text the router hashed (serve.gateway.router)

    @classmethod
    def arrive(cls, request: web.Request, request_id: str | None = None) -> RequestContext:
        """The context of a request that has just arrived; `request_id` defaults to a new `req-` id."""
        return cls(
            request=request,
            request_id=request_id or "req-" + uuid.uuid4().hex,
            started=time.perf_counter(),
            path=request.path,
            client=request.remote,
        )
