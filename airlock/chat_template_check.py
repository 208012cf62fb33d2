"""Check a model's chat templates before they enter the network.

A chat template is Jinja code that vLLM runs on every chat request. Each one the
model ships (in tokenizer_config.json, chat_template.jinja, chat_template.json or
additional_chat_templates/) must be bounded in size and must render a sample
conversation in Jinja's immutable sandbox, in a separate interpreter with a time
and memory limit, so a template that loops, explodes or raises is refused here
rather than hanging a serving replica later.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

from airlock.errors import ModelImportRefused

SAMPLE_CONVERSATION = [
    {"role": "user", "content": "就業規則はどこで確認できますか？"},
    {"role": "assistant", "content": "社内ポータルの「規程集」から確認できます。"},
    {"role": "user", "content": "Thank you. And the leave policy?"},
]

# Runs in a fresh `python -I` (no cwd, no user site): reads {"template", "messages",
# "tokens"} on stdin, writes the rendered text as JSON on stdout.
_RENDERER = r"""
import json, sys, datetime
from jinja2 import ext
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
req = json.load(sys.stdin)
def raise_exception(message):
    raise TemplateError(message)
def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[ext.loopcontrols])
env.filters["tojson"] = tojson
env.globals.update(raise_exception=raise_exception,
                   strftime_now=lambda f: datetime.datetime.now().strftime(f))
try:
    out = env.from_string(req["template"]).render(
        messages=req["messages"], add_generation_prompt=True, tools=None, **req["tokens"])
except Exception as exc:
    sys.stderr.write(f"{type(exc).__name__}: {exc}"[:500])
    sys.exit(3)
if len(out) > req["max_output"]:
    sys.stderr.write(f"rendered {len(out)} characters (limit {req['max_output']})")
    sys.exit(3)
json.dump(out, sys.stdout)
"""


def find_templates(folder: Path) -> dict[str, str]:
    """Every chat template a model folder ships, keyed by `file[:name]`."""
    found: dict[str, str] = {}
    cfg = folder / "tokenizer_config.json"
    if cfg.is_file():
        value = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(value, str):
            found[cfg.name] = value
        elif isinstance(value, list):
            for i, item in enumerate(value):
                item = item if isinstance(item, dict) else {}
                found[f"{cfg.name}:{item.get('name', i)}"] = str(item.get("template", ""))
    if (folder / "chat_template.json").is_file():
        value = json.loads((folder / "chat_template.json").read_text(encoding="utf-8"))
        found["chat_template.json"] = str(value.get("chat_template", "")) if isinstance(value, dict) else ""
    for p in [folder / "chat_template.jinja", *sorted(folder.glob("additional_chat_templates/*.jinja"))]:
        if p.is_file():
            found[p.relative_to(folder).as_posix()] = p.read_text(encoding="utf-8")
    return found


def special_tokens(folder: Path) -> dict[str, str]:
    """bos_token, eos_token, ... from tokenizer_config.json, as templates expect them."""
    cfg = folder / "tokenizer_config.json"
    raw = json.loads(cfg.read_text(encoding="utf-8")) if cfg.is_file() else {}
    tokens = {}
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        value = raw.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        tokens[key] = value if isinstance(value, str) else ""
    return tokens


def _limit_memory(max_bytes: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (max_bytes, max_bytes))

    return apply


def render_sandboxed(
    template: str,
    tokens: dict[str, str],
    timeout_s: float = 5.0,
    max_memory_bytes: int = 1 << 30,
    max_output_chars: int = 1 << 20,
    messages: list[dict] | None = None,
) -> str:
    """Render `template` on a sample conversation in a sandboxed, time- and
    memory-limited interpreter.

    Returns:
        The rendered prompt.

    Raises:
        RuntimeError: the template raised, timed out, ran out of memory or
            rendered too much; the message says which.
    """
    request = json.dumps(
        {
            "template": template,
            "messages": messages or SAMPLE_CONVERSATION,
            "tokens": tokens,
            "max_output": max_output_chars,
        }
    )
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-c", _RENDERER],
            input=request,
            text=True,
            capture_output=True,
            timeout=timeout_s,
            check=False,
            preexec_fn=_limit_memory(max_memory_bytes),
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"rendering did not finish within {timeout_s:g} s (a loop?)") from None
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        if "MemoryError" in done.stderr:
            detail = [f"ran out of its {max_memory_bytes >> 20} MiB memory limit"]
        raise RuntimeError(f"rendering failed: {detail[0]}")
    return json.loads(done.stdout)


def check_chat_templates(
    folder: str | Path, max_bytes: int = 64 * 1024, timeout_s: float = 5.0
) -> dict[str, int]:
    """Check every chat template in a model folder.

    Args:
        folder: the model folder.
        max_bytes: largest template accepted (UTF-8 bytes).
        timeout_s: longest a sample render may take.

    Returns:
        Template key -> size in bytes (empty when the model ships none).

    Raises:
        ModelImportRefused: naming the template's file and the reason.
    """
    folder = Path(folder)
    tokens = special_tokens(folder)
    sizes = {}
    for key, template in find_templates(folder).items():
        where = folder / key
        size = len(template.encode("utf-8"))
        if size > max_bytes:
            raise ModelImportRefused(
                f"{where}: refused: chat template is {size} bytes, over the {max_bytes}-byte limit."
            )
        try:
            render_sandboxed(template, tokens, timeout_s)
        except RuntimeError as exc:
            raise ModelImportRefused(
                f"{where}: refused: chat template does not render a sample "
                f"conversation in the sandbox: {exc}."
            ) from None
        sizes[key] = size
    return sizes
