"""Strict configs loaded from YAML.

Every config model is strict (unknown keys rejected, a description on every
field). Errors name the file, the line and the field path, in one paragraph.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Self, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from foundation.errors import ConfigError


class StrictConfig(BaseModel):
    """Base of every Sekisho config: unknown keys are errors, values are never
    quietly rewritten, and `from_yaml` reports problems with file and line."""

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)

    @classmethod
    def from_yaml(cls, path: str | Path) -> Self:
        """Load and validate a YAML file.

        Raises:
            ConfigError: the file is missing, is not YAML, or does not validate.
        """
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found (expected a YAML file for {cls.__name__}).")
        text = path.read_text(encoding="utf-8")
        try:
            root = yaml.compose(text)
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            problem = getattr(exc, "problem", None) or str(exc)
            raise ConfigError(f"{where}: not valid YAML ({problem}).") from None
        if not isinstance(raw, dict):
            raise ConfigError(
                f"{path}:1: expected a mapping of {cls.__name__} fields "
                f"at the top level, got {type(raw).__name__}."
            )
        try:
            return cls.model_validate(raw, context={"config_dir": path.parent})
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc, path, root)) from None

    @classmethod
    def field_help(cls) -> dict[str, str]:
        """Field name -> description, for `--help` and docs."""
        return {name: f.description or "" for name, f in cls.model_fields.items()}

    @classmethod
    def explain(cls, prefix: str = "") -> list[FieldDoc]:
        """Every field, nested configs included (as `parent.child`), in declaration order."""
        docs: list[FieldDoc] = []
        for name, f in cls.model_fields.items():
            nested = _nested_config(f.annotation)
            default = (
                "(required)" if f.is_required() else _show_default(f.get_default(call_default_factory=True))
            )
            docs.append(FieldDoc(prefix + name, _type_name(f.annotation), default, f.description or ""))
            if nested is not None:
                docs += nested.explain(prefix + name + _item_marker(f.annotation) + ".")
        return docs


@dataclass(frozen=True)
class FieldDoc:
    """One config field as `sekisho config explain` shows it."""

    path: str
    type: str
    default: str
    description: str


def _nested_config(annotation) -> type[StrictConfig] | None:
    """The StrictConfig class a field holds (directly or as `X | None`), if any."""
    for t in (annotation, *get_args(annotation)):
        if isinstance(t, type) and issubclass(t, StrictConfig):
            return t
    return None


def _item_marker(annotation) -> str:
    """`[]` when the field holds a list of configs, `{}` for a mapping to them."""
    for t in (annotation, *get_args(annotation)):
        origin = get_origin(t)
        if origin in (list, tuple):
            return "[]"
        if origin is dict:
            return "{}"
    return ""


def _type_name(annotation) -> str:
    if isinstance(annotation, type) and not get_args(annotation):
        return annotation.__name__
    return re.sub(r"\b(?:[a-z_][a-z0-9_]*\.)+(?=[A-Za-z_])", "", str(annotation))


def _show_default(value) -> str:
    if isinstance(value, BaseModel):
        return "(see below)"
    return "none" if value is None else repr(value.value if isinstance(value, Enum) else value)


def describe_validation_error(exc: ValidationError, path: Path | str, root: yaml.Node | None = None) -> str:
    """One paragraph: each problem as `file:line: field.path: message`."""
    lines = []
    for err in exc.errors():
        loc = [p for p in err["loc"] if not isinstance(p, str) or not p.startswith("function-")]
        field = ".".join(str(p) for p in loc) or "(top level)"
        line = _line_of(root, loc) if root is not None else None
        where = f"{path}:{line}" if line else str(path)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not a field of this config; check the spelling)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif "input" in err and err["type"] not in ("value_error", "assertion_error"):
            msg = f"{msg} (got {err['input']!r})"
        lines.append(f"{where}: {field}: {msg}")
    return " ".join(lines) if len(lines) == 1 else "\n".join(lines)


def _line_of(node: yaml.Node | None, loc: list[Any]) -> int | None:
    """The 1-based line of the YAML node at `loc`, or of its nearest parent."""
    line = node.start_mark.line + 1 if node is not None else None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if k.value == str(key)), None)
            if match is None:
                # An unknown or missing key: point at the key itself if present.
                key_node = next((k for k, _ in node.value if k.value == str(key)), None)
                return key_node.start_mark.line + 1 if key_node is not None else line
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            return line
        line = node.start_mark.line + 1
    return line
