"""A request body read as JSON the gateway can hand on safely: an object, no
deeper than the app's limit, numbers finite and of sane size, strings valid
Unicode (no lone surrogates, which no UTF-8 store or engine can take). Anything
else is the client's mistake: a 400 naming what is wrong, never a 500."""

from __future__ import annotations

import json
import math
import re

from serve.gateway.errors import GatewayError

# A \uD800-\uDFFF escape: a lone surrogate unless it is half of a valid pair.
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


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
