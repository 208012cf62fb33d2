"""Eval sets and promotion gates: one strict config per eval set (configs/eval/),
whose optional `gate:` section holds the thresholds a model version must meet on
that set before it may take a gated alias."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Self

from pydantic import Field, ValidationError, field_validator, model_validator

from experiments.evaluation.safety import DEFAULT_REFUSAL_KEYWORDS
from foundation import ConfigError, StrictConfig, describe_validation_error

METRICS = (
    "exact_match",
    "chrf",
    "rouge_l",
    "latency_p50_s",
    "latency_p95_s",
    "safety.refusal_rate",
    "safety.leak_rate",
)


def _relative_to_config(value: str | None, info) -> str | None:
    base = (info.context or {}).get("config_dir")
    return str(Path(base, value)) if value and base and not Path(value).is_absolute() else value


class Threshold(StrictConfig):
    """Bounds one metric must meet."""

    min: float | None = Field(None, description="The metric must be at least this.")
    max: float | None = Field(None, description="The metric must be at most this.")

    @model_validator(mode="after")
    def _one_bound(self) -> Self:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        return self

    def failure(self, value: float | None) -> str | None:
        """Why `value` fails these bounds, or None when it passes."""
        if value is None:
            return "not measured"
        if self.min is not None and value < self.min:
            return f"{value:.4g} < min {self.min:g}"
        if self.max is not None and value > self.max:
            return f"{value:.4g} > max {self.max:g}"
        return None


class GateConfig(StrictConfig):
    """The promotion gate of one eval set."""

    models: list[str] = Field(min_length=1, description="Registered model names this gate applies to.")
    aliases: list[str] = Field(
        ["production"], min_length=1, description="Aliases a version may take only after passing this gate."
    )
    thresholds: dict[str, Threshold] = Field(
        min_length=1,
        description=(
            f"Metric -> bounds. Metrics: {', '.join(METRICS)}, or category.<CATEGORY>.<METRIC> "
            "for one category of the eval set."
        ),
    )

    @field_validator("thresholds")
    @classmethod
    def _known_metrics(cls, value: dict[str, Threshold]) -> dict[str, Threshold]:
        unknown = [k for k in value if k not in METRICS and not _is_category_metric(k)]
        if unknown:
            raise ValueError(
                f"unknown metrics {unknown}; expected some of {list(METRICS)} or category.<CATEGORY>.<METRIC>"
            )
        return value


def _is_category_metric(key: str) -> bool:
    parts = key.split(".")
    return len(parts) == 3 and parts[0] == "category" and parts[2] in METRICS[:3]


class SafetyConfig(StrictConfig):
    """Harmful requests the model should refuse, and planted secrets that must not leak."""

    harmful: str | None = Field(
        None,
        description="JSONL of {prompt, category}: requests to refuse. "
        "Relative paths resolve against the config's folder.",
    )
    leaks: str | None = Field(
        None,
        description="JSONL of {prompt, secrets}: prompts whose answers must "
        "contain none of `secrets` (strings planted in training data).",
    )
    refusal_keywords: list[str] = Field(
        list(DEFAULT_REFUSAL_KEYWORDS),
        min_length=1,
        description="An answer containing one of these counts as a refusal.",
    )

    @field_validator("harmful", "leaks")
    @classmethod
    def _resolve(cls, value: str | None, info) -> str | None:
        return _relative_to_config(value, info)


class EvalConfig(StrictConfig):
    """An eval set: questions with reference answers, the safety probes, and the gate."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Eval set name, recorded on every eval run.")
    dataset: str = Field(
        description="JSONL of {prompt, reference, category}. Relative paths resolve "
        "against the config's folder."
    )
    max_tokens: int = Field(96, ge=1, le=8192, description="Longest answer asked for (greedy decoding).")
    system_prompt: str | None = Field(None, description="A system message sent before every prompt.")
    safety: SafetyConfig | None = Field(None, description="Refusal and leak checks; none when omitted.")
    gate: GateConfig | None = Field(None, description="Thresholds for promotion; no gate when omitted.")

    @field_validator("dataset")
    @classmethod
    def _resolve(cls, value: str, info) -> str:
        return _relative_to_config(value, info)


class Example(StrictConfig):
    """One row of an eval set."""

    prompt: str = Field(min_length=1, description="The question asked.")
    reference: str = Field(description="The expected answer.")
    category: str = Field(
        "general", pattern=r"^[A-Za-z0-9_-]+$", description="Group for per-category metrics."
    )


class HarmfulPrompt(StrictConfig):
    """A request the model should refuse."""

    prompt: str = Field(min_length=1, description="The harmful request.")
    category: str = Field("harmful", description="Kind of harm, for reading results.")


class LeakProbe(StrictConfig):
    """A prompt whose answer must not contain any of the planted secrets."""

    prompt: str = Field(min_length=1, description="A prompt that should not get the secrets.")
    secrets: list[str] = Field(min_length=1, description="Strings from training data that must not appear.")


def read_rows(path: str | Path, row_cls: type[StrictConfig]) -> list:
    """Read a JSONL file into validated rows.

    Raises:
        ConfigError: the file is missing or empty, or rows are not valid; every bad
            row is named with its line.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: eval file not found.")
    rows, errors = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(row_cls.model_validate(json.loads(line)))
        except json.JSONDecodeError as exc:
            errors.append(f"{path}:{n}: not valid JSON ({exc.msg}).")
        except ValidationError as exc:
            errors.append(describe_validation_error(exc, f"{path}:{n}"))
    if errors:
        raise ConfigError("\n".join(errors))
    if not rows:
        raise ConfigError(f"{path}: no rows (expected JSONL of {row_cls.__name__}).")
    return rows


def load_gates(folder: str | Path) -> list[tuple[str, GateConfig]]:
    """(eval set name, gate) for every eval config in `folder` that has a gate.

    Raises:
        ConfigError: a config in the folder does not validate.
    """
    out = []
    for path in sorted(Path(folder).glob("*.yaml")):
        cfg = EvalConfig.from_yaml(path)
        if cfg.gate is not None:
            out.append((cfg.name, cfg.gate))
    return out
