"""Request limits, checked before a request reaches an engine. Each violation
names the request field (`param`) and uses OpenAI's status conventions."""

from __future__ import annotations

from pydantic import Field

from foundation import StrictConfig
from serve.gateway.errors import GatewayError


class RequestLimits(StrictConfig):
    """Per-app limits on what a request may ask for."""

    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest request body (413 above).")
    max_tokens: int = Field(1024, ge=1, description="Cap on max_tokens / max_completion_tokens.")
    max_n: int = Field(1, ge=1, le=16, description="Cap on n (choices per request).")
    max_logprobs: int = Field(5, ge=0, le=20, description="Cap on top_logprobs / logprobs.")
    max_messages: int = Field(256, ge=1, description="Cap on the number of chat messages.")
    max_embedding_inputs: int = Field(
        256, ge=1, description="Cap on the number of inputs in one /v1/embeddings request."
    )


FORBIDDEN = {
    "best_of": "best_of is not supported (it multiplies the work of one request)",
    "chat_template": "a client-supplied chat_template is not accepted",
    "chat_template_kwargs": "client-supplied chat_template_kwargs are not accepted",
    "guided_grammar": "guided_grammar is not accepted",
}


def _int_field(payload: dict, name: str) -> int | None:
    v = payload.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise GatewayError(400, f"'{name}' must be an integer, got {v!r}", param=name, code="invalid_type")
    return v


def check(payload: dict, route: str, limits: RequestLimits, context_len: int) -> None:
    """Raise GatewayError for the first limit `payload` breaks."""
    for name, why in FORBIDDEN.items():
        if payload.get(name) is not None:
            raise GatewayError(400, why, param=name, code="unsupported_parameter")
    for name in ("max_tokens", "max_completion_tokens"):
        v = _int_field(payload, name)
        if v is not None and not 1 <= v <= min(limits.max_tokens, context_len):
            raise GatewayError(
                400,
                f"'{name}' is {v}; it must be between 1 and {min(limits.max_tokens, context_len)}",
                param=name,
                code="invalid_value",
            )
    n = _int_field(payload, "n")
    if n is not None and not 1 <= n <= limits.max_n:
        raise GatewayError(
            400, f"'n' is {n}; at most {limits.max_n} is allowed", param="n", code="invalid_value"
        )
    top = _int_field(payload, "top_logprobs")
    if top is not None and not 0 <= top <= limits.max_logprobs:
        raise GatewayError(
            400,
            f"'top_logprobs' is {top}; at most {limits.max_logprobs} is allowed",
            param="top_logprobs",
            code="invalid_value",
        )
    if route == "/v1/completions":
        lp = _int_field(payload, "logprobs")
        if lp is not None and not 0 <= lp <= limits.max_logprobs:
            raise GatewayError(
                400,
                f"'logprobs' is {lp}; at most {limits.max_logprobs} is allowed",
                param="logprobs",
                code="invalid_value",
            )
        if "prompt" not in payload:
            raise GatewayError(400, "'prompt' is required", param="prompt", code="missing_required_parameter")
    if route == "/v1/chat/completions":
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            raise GatewayError(
                400,
                "'messages' must be a non-empty list",
                param="messages",
                code="missing_required_parameter" if messages is None else "invalid_type",
            )
        if len(messages) > limits.max_messages:
            raise GatewayError(
                400,
                f"{len(messages)} messages; at most {limits.max_messages} are allowed",
                param="messages",
                code="invalid_value",
            )
    if route == "/v1/embeddings":
        inputs = payload.get("input")
        if inputs is None or inputs == [] or inputs == "":
            raise GatewayError(
                400,
                "'input' is required: a string or a list of strings or token lists",
                param="input",
                code="missing_required_parameter",
            )
        if (
            isinstance(inputs, list)
            and inputs
            and not isinstance(inputs[0], int)
            and len(inputs) > limits.max_embedding_inputs
        ):
            raise GatewayError(
                400,
                f"{len(inputs)} inputs; at most {limits.max_embedding_inputs} are allowed",
                param="input",
                code="invalid_value",
            )
