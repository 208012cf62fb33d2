"""A request body read as JSON the gateway can hand on safely: an object, no
deeper than the app's limit, numbers finite and of sane size, strings valid
Unicode (no lone surrogates, which no UTF-8 store or engine can take). Anything
else is the client's mistake: a 400 naming what is wrong, never a 500.

The body's Content-Encoding is undone here, not by aiohttp (the gateway's
server runs with `auto_decompress=False`, see server.SERVER_OPTIONS): aiohttp
refuses an encoding it lacks (br, zstd) before any route runs, with no audit
record, and passes one it does not know as if it were plain. gzip and deflate
are decoded to at most the body limit and must be complete; any other coding is
a 415, a body that does not decode a 400, each naming the header."""

from __future__ import annotations

import json
import math
import re
import zlib

from serve.gateway.errors import GatewayError

# A \uD800-\uDFFF escape: a lone surrogate unless it is half of a valid pair.
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


# Codings a body may carry (RFC 9110 8.4.1), with the zlib window bits that read them.
CODINGS = {"gzip": 31, "x-gzip": 31, "deflate": 15}


def _invalid(message: str, code: str = "invalid_json") -> GatewayError:
    return GatewayError(400, message, code=code)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def deeper_than(value, limit: int) -> bool:
    """Whether objects and lists in `value` nest more than `limit` levels."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def parse(body: bytes, max_depth: int) -> dict:
    """The JSON object in `body`.

    Raises:
        GatewayError: 400 for a body that is not one (what is wrong, in the message).
    """
    try:
        # UTF-8 only (json.loads would take UTF-16 and UTF-32 too, which the engine does not).
        payload = json.loads(body.decode("utf-8"), parse_float=_finite, parse_constant=_no_constant)
    except RecursionError:
        raise _invalid(f"Request body nests deeper than {max_depth} levels.", "nesting_too_deep") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise _invalid(f"Request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise _invalid("Request body must be a JSON object.")
    # Cheap first: a body with few brackets cannot nest deep.
    if body.count(b"{") + body.count(b"[") > max_depth and deeper_than(payload, max_depth):
        raise _invalid(f"Request body nests deeper than {max_depth} levels.", "nesting_too_deep")
    if SURROGATE_ESCAPE.search(body):
        try:
            json.dumps(payload, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise _invalid(
                "Request body holds a string that is not valid Unicode (a lone surrogate escape).",
                "invalid_encoding",
            ) from None
    return payload


def decode(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """`body` with its Content-Encoding (gzip, deflate, identity, or a list of them
    in the order applied) undone.

    Raises:
        GatewayError: 415 for a coding the gateway does not take, 400 for a body that
            is not what the header says, 413 for one over `limit` bytes once decoded.
    """
    if content_encoding is None:
        return body
    shown = ascii(content_encoding[:60])
    codings = [c.strip().lower() for c in content_encoding.split(",")]
    codings = [c for c in codings if c and c != "identity"]
    unknown = [c for c in codings if c not in CODINGS]
    if unknown:
        raise GatewayError(
            415,
            f"Content-Encoding {shown}"
            + (f": {ascii(unknown[0][:30])}" if len(codings) > 1 else "")
            + " is not supported; send the body as is (identity), gzip or deflate.",
            code="unsupported_content_encoding",
        )
    for coding in reversed(codings):
        body = _inflate(body, coding, limit, shown)
    return body


def _inflate(body: bytes, coding: str, limit: int, shown: str) -> bytes:
    """`body` decoded from `coding`, all of it (every gzip member), to at most `limit` bytes."""
    out = bytearray()
    data = body
    wbits = CODINGS[coding]
    while True:
        d = zlib.decompressobj(wbits)
        try:
            out += d.decompress(data, limit + 1 - len(out))
        except zlib.error as exc:
            if coding == "deflate" and wbits > 0 and not out:  # raw deflate, as some clients send
                wbits = -wbits
                continue
            raise _invalid(
                f"Request body is not valid {coding} (Content-Encoding {shown}): {exc}.",
                "invalid_content_encoding",
            ) from None
        if len(out) > limit:
            raise GatewayError(
                413,
                f"Request body exceeds the limit of {limit} bytes once decoded (Content-Encoding {shown}).",
                code="request_too_large",
            )
        if not d.eof:
            raise _invalid(
                f"Request body is not valid {coding} (Content-Encoding {shown}): the stream is cut short.",
                "invalid_content_encoding",
            )
        data = d.unused_data
        if not data or wbits != 31:
            break
    if data:
        raise _invalid(
            f"Request body is not valid {coding} (Content-Encoding {shown}): "
            f"{len(data)} bytes follow the end of the stream.",
            "invalid_content_encoding",
        )
    return bytes(out)
