"""Request limits, checked before a request reaches an engine. Each violation
names the request field (`param`) and uses OpenAI's status conventions.

A request may carry only the fields listed for its route (FIELDS: OpenAI's, as
vLLM documents them, and a few of vLLM's sampling parameters); any other field
is refused rather than passed to vLLM unchecked. Risky families of fields
(structured outputs: grammars, JSON schemas, regexes) pass only where the
app's limits switch them on.
"""

from __future__ import annotations

from pydantic import Field, model_validator

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
    default_max_tokens: int | None = Field(
        None,
        ge=1,
        description="max_tokens put into a request that sends no token limit (default: the max_tokens cap).",
    )
    max_json_depth: int = Field(
        32, ge=4, le=256, description="Deepest nesting of JSON objects and lists a request body may have."
    )
    allow_structured_outputs: bool = Field(
        False,
        description="Accept structured outputs (structured_outputs, guided_*, response_format beyond text): "
        "per-request grammars cost engine CPU no token count shows.",
    )

    @model_validator(mode="after")
    def _default_within_cap(self):
        if self.default_max_tokens is not None and self.default_max_tokens > self.max_tokens:
            raise ValueError(
                f"default_max_tokens ({self.default_max_tokens}) is above the max_tokens cap ({self.max_tokens})"
            )
        return self


SAMPLING = frozenset(
    {
        "model", "frequency_penalty", "presence_penalty", "logit_bias", "max_tokens", "n", "seed",
        "stop", "stream", "stream_options", "temperature", "top_p", "user",
        # vLLM's own sampling parameters (its docs: "Extra parameters")
        "top_k", "min_p", "repetition_penalty", "min_tokens", "stop_token_ids", "ignore_eos",
        "skip_special_tokens", "spaces_between_special_tokens", "include_stop_str_in_output",
    }
)  # fmt: skip
STRUCTURED_OUTPUTS = frozenset(
    {
        "structured_outputs", "guided_json", "guided_regex", "guided_choice", "guided_grammar",
        "guided_decoding_backend", "guided_whitespace_pattern",
    }
)  # fmt: skip
FIELDS = {
    "/v1/chat/completions": SAMPLING
    | STRUCTURED_OUTPUTS
    | {
        "messages", "max_completion_tokens", "logprobs", "top_logprobs", "response_format", "tools",
        "tool_choice", "parallel_tool_calls", "reasoning_effort", "functions", "function_call",
        "add_generation_prompt", "continue_final_message", "chat_template_kwargs",
    },
    "/v1/completions": SAMPLING | STRUCTURED_OUTPUTS | {"prompt", "logprobs", "echo", "response_format"},
    "/v1/embeddings": frozenset({"model", "input", "dimensions", "encoding_format", "user"}),
}  # fmt: skip
TEXT_FORMATS = ("text", None)  # response_format types that ask for no structure


FORBIDDEN = {
    "best_of": "best_of is not supported (it multiplies the work of one request)",
    "chat_template": "a client-supplied chat_template is not accepted",
}
# chat_template_kwargs reach the model's template as variables (they could rename
# roles or replace its system text): only the switches reasoning templates document.
TEMPLATE_SWITCHES = {
    "enable_thinking": "Qwen3's thinking on or off",
    "thinking": "thinking on or off (DeepSeek-V3.1 and other hybrid templates)",
}


def _int_field(payload: dict, name: str) -> int | None:
    v = payload.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise GatewayError(400, f"'{name}' must be an integer, got {v!r}", param=name, code="invalid_type")
    return v


def _check_template_switches(kwargs) -> None:
    if not isinstance(kwargs, dict):
        raise GatewayError(
            400, "'chat_template_kwargs' must be an object", param="chat_template_kwargs", code="invalid_type"
        )
    for key, value in kwargs.items():
        where = f"chat_template_kwargs.{key}"
        if key not in TEMPLATE_SWITCHES:
            known = ", ".join(f"{k} ({why})" for k, why in TEMPLATE_SWITCHES.items())
            raise GatewayError(
                400, f"'{where}' is not accepted; the template switches are: {known}", param=where,
                code="unsupported_parameter",
            )  # fmt: skip
        if not isinstance(value, bool):
            raise GatewayError(400, f"'{where}' must be true or false, got {value!r}", param=where,
                               code="invalid_type")  # fmt: skip


def check_fields(payload: dict, route: str, limits: RequestLimits) -> None:
    """Raise GatewayError (400, naming the field) for a field the route does not take
    or the app's limits switch off."""
    for name, why in FORBIDDEN.items():
        if name in payload:
            raise GatewayError(400, why, param=name, code="unsupported_parameter")
    allowed = FIELDS[route]
    for name in payload:
        if name not in allowed:
            raise GatewayError(
                400, f"Unrecognized request field '{name}' for {route}.", param=name, code="unknown_parameter"
            )
    if "chat_template_kwargs" in payload:
        _check_template_switches(payload["chat_template_kwargs"])
    if limits.allow_structured_outputs:
        return
    for name in STRUCTURED_OUTPUTS & payload.keys():
        raise GatewayError(
            400,
            f"'{name}' (structured outputs) is switched off for this app.",
            param=name,
            code="unsupported_parameter",
        )
    fmt = payload.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") not in TEXT_FORMATS):
        raise GatewayError(
            400,
            "'response_format' may only be {\"type\": \"text\"}: structured outputs are switched off for this app.",
            param="response_format",
            code="unsupported_parameter",
        )


def with_default_max_tokens(payload: dict, route: str, limits: RequestLimits, context_len: int) -> bool:
    """Insert max_tokens into a completion request that sends no token limit, so no
    request generates unbounded; returns whether `payload` changed."""
    if route == "/v1/embeddings" or payload.get("max_tokens") is not None:
        return False
    if payload.get("max_completion_tokens") is not None:
        return False
    payload["max_tokens"] = min(limits.default_max_tokens or limits.max_tokens, context_len)
    return True


def check(payload: dict, route: str, limits: RequestLimits, context_len: int) -> None:
    """Raise GatewayError for the first limit `payload` breaks."""
    check_fields(payload, route, limits)
    options = payload.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise GatewayError(
            400, "'stream_options' must be an object.", param="stream_options", code="invalid_type"
        )
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
