"""vLLM's own command-line parser and tool-parser registry, reached from this one
module: an engine's command line is checked against them when its config is
loaded, so an unknown flag or a bad value is refused naming the config field,
not found when the engine starts on the cluster.

Importing vLLM takes about 10 s, so nothing here imports it at module level; the
parser is built once per process, and only for a config that has extra_args.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import re
from pathlib import Path

# What Sekisho sets on the engine's command line itself (argparse dest -> what to
# set instead). A flag in extra_args that lands on one of these is refused.
OWNED = {
    "model": "the model's source (models[].source)",
    "model_tag": "the model's source (models[].source)",
    "served_model_name": "the model's name (models[].name)",
    "host": "nothing: each engine listens on its node's address; the app's own address is `host`",
    "port": "nothing: each engine listens on a free port; the app's own port is `port`",
    "uds": "nothing: the gateway reaches engines over TCP",
    "api_key": "nothing: the engine's key is Sekisho's own (only the gateway holds it); "
    "clients use the gateway's keys",
    "middleware": "nothing: Sekisho mounts its gateway and load endpoint itself",
    "config": "the flags themselves in extra_args (a --config file would bypass this check)",
    "max_model_len": "engine.max_model_len",
    "max_num_seqs": "engine.max_num_seqs",
    "tensor_parallel_size": "engine.tensor_parallel_size",
    "pipeline_parallel_size": "engine.pipeline_parallel_size",
    "dtype": "engine.dtype",
    "generation_config": "engine.generation_config",
    "enforce_eager": "engine.enforce_eager",
    "gpu_memory_utilization": "engine.gpu_memory_utilization",
    "quantization": "engine.quantization",
    "kv_cache_dtype": "engine.kv_cache_dtype",
    "max_num_batched_tokens": "engine.max_num_batched_tokens",
    "enable_prefix_caching": "engine.enable_prefix_caching",
    "enable_auto_tool_choice": "engine.tool_call_parser",
    "tool_call_parser": "engine.tool_call_parser",
    "reasoning_parser": "engine.reasoning_parser",
    "runner": "the model's task (models[].task)",
    "convert": "the model's task (models[].task)",
    "enable_lora": "the model's adapters (models[].adapters)",
    "lora_modules": "the model's adapters (models[].adapters)",
    "max_loras": "engine.max_loras",
    "max_cpu_loras": "engine.max_cpu_loras",
    "max_lora_rank": "engine.max_lora_rank",
    "uvicorn_log_level": "nothing: Sekisho keeps the engine's HTTP log quiet",
    "disable_uvicorn_access_log": "nothing: Sekisho keeps the engine's HTTP log quiet",
}
_NUMBER = re.compile(r"-\d+(\.\d+)?([eE][-+]?\d+)?")


class EngineArgsError(ValueError):
    """A command line vLLM would refuse, or a flag Sekisho sets itself."""


@functools.cache
def vllm_parser():
    """vLLM's OpenAI server argument parser, built as its api_server builds it,
    raising instead of exiting; without abbreviations (`--enable-prefix` must be
    written out), so a flag is always the one it names."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    class _Parser(FlexibleArgumentParser):
        def error(self, message: str):
            raise EngineArgsError(message)

    return make_arg_parser(_Parser(prog="vllm", allow_abbrev=False, add_help=False))


def flag_key(token: str) -> str | None:
    """The option string a command-line token names (None for a value), spelled as
    vLLM's parser spells it: `--max_num_seqs=4` -> `--max-num-seqs`,
    `--compilation-config.mode` -> `--compilation-config`, `-O3` -> `--optimization-level`."""
    if not token.startswith("-") or token == "-" or _NUMBER.fullmatch(token):
        return None
    if token.startswith("-O") and not token.startswith("--"):
        return "--optimization-level"
    if token.startswith("--"):
        return token.split("=", 1)[0].split(".", 1)[0].replace("_", "-")
    return token.split("=", 1)[0]


def check_extra_args(command: list[str], extra_args: list[str]) -> None:
    """Check `extra_args` as vLLM would see them at the end of `command` (the
    flags Sekisho builds, without the interpreter and module).

    Raises:
        EngineArgsError: an unknown flag, a flag Sekisho sets itself (saying which
            field sets it), a value on its own, or a value vLLM's parser refuses.
    """
    parser = vllm_parser()
    options = parser._option_string_actions
    for token in extra_args:
        key = flag_key(token)
        if key is None:
            continue
        if key not in options:
            raise EngineArgsError(f"unknown vLLM flag {token.split('=', 1)[0]!r}")
        dest = options[key].dest
        if dest in OWNED:
            raise EngineArgsError(f"{key!r} is set by Sekisho: use {OWNED[dest]}")
    try:
        args = parser.parse_args([*command, *extra_args])
    except EngineArgsError as exc:
        raise EngineArgsError(f"vLLM's parser refuses them: {exc}") from None
    if args.model_tag is not None:
        raise EngineArgsError(
            f"{args.model_tag!r} is not a flag or a flag's value (extra_args holds flags, "
            "each followed by its value, e.g. ['--swap-space', '4'])"
        )


def tool_parser_names() -> list[str]:
    """The tool-call parsers vLLM registers, read from vLLM's registry source
    without importing vLLM (`vllm/tool_parsers/__init__.py`'s table of lazily
    registered parsers); where that table is not found, from ToolParserManager."""
    names = _registry_table()
    if names:
        return names
    from vllm.tool_parsers import ToolParserManager

    return ToolParserManager.list_registered()


def reasoning_parser_names() -> list[str]:
    """The reasoning parsers vLLM registers, read as `tool_parser_names` reads the
    tool-call parsers (`vllm/reasoning/__init__.py`), else from ReasoningParserManager."""
    names = _registry_table("reasoning", "_REASONING_PARSERS_TO_REGISTER")
    if names:
        return names
    from vllm.reasoning import ReasoningParserManager

    return ReasoningParserManager.list_registered()


@functools.cache
def _registry_table(package: str = "tool_parsers", table: str = "_TOOL_PARSERS_TO_REGISTER") -> list[str]:
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return []
    source = Path(next(iter(spec.submodule_search_locations)), package, "__init__.py")
    if not source.is_file():
        return []
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        targets = node.targets if isinstance(node, ast.Assign) else []
        if any(getattr(t, "id", None) == table for t in targets):
            if isinstance(node.value, ast.Dict):
                return sorted(k.value for k in node.value.keys if isinstance(k, ast.Constant))
    return []
