"""Which vLLM tool-call parser a model needs, read from the model folder.

A chat model writes tool calls in its family's own format, and its chat
template shows that format (the template renders earlier tool calls back into
the prompt). `detect_tool_call_parser` reads the template (tokenizer_config.json's
`chat_template`, or `chat_template.jinja` / `chat_template.json` beside it) and
config.json's `model_type`, and names the parser of that format, or None where
the template takes no tools (vLLM then refuses requests that offer tools).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger("sekisho.serve")

AUTO = "auto"
OFF = "none"

# (parser, what in the template or config shows it), first match wins: gpt-oss's
# harmony template also mentions tools, so it comes before the generic markers.
_RULES: list[tuple[str, str, tuple[str, ...]]] = [
    ("openai", "the harmony format (<|channel|>, gpt-oss)", ("<|channel|>",)),
    ("mistral", "Mistral's [TOOL_CALLS]", ("[TOOL_CALLS]",)),
    ("hermes", "<tool_call> blocks (Qwen, Hermes)", ("<tool_call>",)),
    (
        "llama3_json",
        "Llama-3's JSON tool calls (<|python_tag|>, 'Environment: ipython')",
        ("<|python_tag|>", "Environment: ipython"),
    ),
]
_MODEL_TYPES = {"gpt_oss": "openai"}


def chat_template(model_dir: str | Path) -> str:
    """The model's chat template text ('' when it has none); a tokenizer_config.json
    with named templates (a list of {name, template}) gives them all, joined."""
    folder = Path(model_dir)
    parts: list[str] = []
    config = _read_json(folder / "tokenizer_config.json")
    template = config.get("chat_template")
    if isinstance(template, str):
        parts.append(template)
    elif isinstance(template, list):
        parts += [t.get("template", "") for t in template if isinstance(t, dict)]
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        parts.append(jinja.read_text(encoding="utf-8", errors="replace"))
    named = _read_json(folder / "chat_template.json").get("chat_template")
    if isinstance(named, str):
        parts.append(named)
    return "\n".join(parts)


def detect_tool_call_parser(model_dir: str | Path) -> tuple[str | None, str]:
    """The vLLM tool-call parser the model's chat template calls for.

    Returns:
        (parser name or None, why: what in the model folder decided it).
    """
    model_type = _read_json(Path(model_dir) / "config.json").get("model_type")
    if model_type in _MODEL_TYPES:
        return _MODEL_TYPES[model_type], f"config.json model_type {model_type!r}"
    template = chat_template(model_dir)
    for parser, shape, markers in _RULES:
        if any(m in template for m in markers):
            return parser, f"the chat template writes tool calls as {shape}"
    if '"parameters"' in template and "<|eot_id|>" in template:
        return "llama3_json", "the chat template writes Llama-3 JSON tool calls ('parameters', <|eot_id|>)"
    if "tools" in template:
        return None, (
            "the chat template takes tools in a format Sekisho does not recognise: "
            "set engine.tool_call_parser to vLLM's parser for it"
        )
    if not template:
        return None, "the model has no chat template"
    return None, "the chat template takes no tools"


def resolve_tool_call_parser(
    setting: str | None, model_dir: str | Path, task: str = "generate"
) -> str | None:
    """The parser an engine runs with: `setting` as configured ("auto": detected
    from the model folder, logged with the reason; None or "none": no tools)."""
    if task == "embed" or setting in (None, OFF):
        return None
    if setting != AUTO:
        return setting
    parser, why = detect_tool_call_parser(model_dir)
    if parser:
        logger.info("tool-call parser %s for %s: %s", parser, model_dir, why)
    else:
        # A template that takes tools but whose format is not recognised: worth a warning.
        log = logger.warning if "tools" in chat_template(model_dir) else logger.info
        log("no tool-call parser for %s (%s): requests that offer tools are refused", model_dir, why)
    return parser


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
