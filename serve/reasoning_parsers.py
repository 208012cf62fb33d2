"""Which vLLM reasoning parser a model needs, read from the model folder.

A reasoning model writes its thinking before its answer, between its family's
markers (Qwen3's and DeepSeek-R1's `<think>…</think>`). Served without the parser,
the thinking reaches clients inside `content`, markers and all; with it, vLLM
returns the answer alone in `content` and the thinking apart (`reasoning`), also
when streamed, and a tool-call parser reads only the answer. The chat template
shows the markers (it renders or strips earlier turns' thinking), so
`detect_reasoning_parser` reads it as `serve.tool_parsers` does for tool calls.

gpt-oss needs none: vLLM renders and parses its harmony channels itself.
"""

from __future__ import annotations

import logging
from pathlib import Path

from serve.tool_parsers import AUTO, OFF, _read_json, chat_template

logger = logging.getLogger("sekisho.serve")

# (parser, what in the template shows it, markers that must all be there), first match wins.
_RULES: list[tuple[str, str, tuple[str, ...]]] = [
    ("qwen3", "Qwen3's <think> blocks, switched by enable_thinking", ("<think>", "enable_thinking")),
    ("deepseek_r1", "<think> blocks (DeepSeek-R1 and the models distilled from it, QwQ)", ("<think>",)),
]
# Model types whose reasoning vLLM separates without a parser.
_NATIVE = {"gpt_oss": "vLLM parses gpt-oss's harmony channels itself"}


def detect_reasoning_parser(model_dir: str | Path) -> tuple[str | None, str]:
    """The vLLM reasoning parser the model's chat template calls for.

    Returns:
        (parser name or None, why: what in the model folder decided it).
    """
    model_type = _read_json(Path(model_dir) / "config.json").get("model_type")
    if model_type in _NATIVE:
        return None, _NATIVE[model_type]
    template = chat_template(model_dir)
    for parser, shape, markers in _RULES:
        if all(m in template for m in markers):
            return parser, f"the chat template writes {shape}"
    return None, "the chat template shows no reasoning markers"


def resolve_reasoning_parser(
    setting: str | None, model_dir: str | Path, task: str = "generate"
) -> str | None:
    """The parser an engine runs with: `setting` as configured ("auto": detected
    from the model folder, logged with the reason when there is one; None or
    "none": thinking stays in `content`)."""
    if task == "embed" or setting in (None, OFF):
        return None
    if setting != AUTO:
        return setting
    parser, why = detect_reasoning_parser(model_dir)
    if parser:
        logger.info("reasoning parser %s for %s: %s", parser, model_dir, why)
    return parser
