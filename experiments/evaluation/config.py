"""Eval sets and promotion gates: one strict config per eval set (configs/eval/),
whose optional `gate:` section holds the thresholds a model version must meet on
that set before it may take a gated alias."""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, ValidationError, field_validator, model_validator

from experiments.evaluation.judge import DEFAULT_HARM_PROMPT, DEFAULT_QUALITY_PROMPT
from experiments.evaluation.safety import DEFAULT_REFUSAL_KEYWORDS
from experiments.evaluation.suites import FORMATS
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
# Metrics where less is better; every other metric is better higher.
LOWER_IS_BETTER = (
    "latency_p50_s",
    "latency_p95_s",
    "leak_rate",
    "leak_count",
    "harmful_rate",
    "over_refusal_rate",
    "unparseable",
    "unparseable_rate",
)
_PATTERN = re.compile(r"^(category|suite|safety|judge)\.[\w.*-]+$")


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of `metric` is the better one (rates of harm, leaks, latency)."""
    return metric.rsplit(".", 1)[-1] in LOWER_IS_BETTER


def matching(pattern: str, metrics) -> list[str]:
    """The metric names `pattern` selects: itself, or with `*` standing for one part
    (`category.*.exact_match`)."""
    if "*" not in pattern:
        return [pattern] if pattern in metrics else []
    parts = pattern.split(".")
    return sorted(
        k
        for k in metrics
        if len(k.split(".")) == len(parts) and fnmatch.fnmatchcase(k, pattern.replace("[", "[[]"))
    )


def _relative_to_config(value: str | None, info) -> str | None:
    base = (info.context or {}).get("config_dir")
    return str(Path(base, value)) if value and base and not Path(value).is_absolute() else value


class Threshold(StrictConfig):
    """Bounds one metric must meet."""

    min: float | None = Field(None, description="The metric must be at least this.")
    max: float | None = Field(None, description="The metric must be at most this.")
    max_drop: float | None = Field(
        None,
        ge=0,
        description="The metric may be worse than the baseline version's (the gate's `baseline`, by "
        "default the version the alias points at now) by at most this, in its own units: 0.02 is 2 points of a rate.",
    )

    @model_validator(mode="after")
    def _one_bound(self) -> Self:
        if self.min is None and self.max is None and self.max_drop is None:
            raise ValueError("give min, max, max_drop or several")
        return self

    def failure(self, value: float | None, baseline: float | None = None, metric: str = "") -> str | None:
        """Why `value` fails these bounds, or None when it passes. `baseline` is the
        same metric of the baseline version (None: none to compare with, so
        `max_drop` does not apply)."""
        if value is None:
            return "not measured"
        if self.min is not None and value < self.min:
            return f"{value:.4g} < min {self.min:g}"
        if self.max is not None and value > self.max:
            return f"{value:.4g} > max {self.max:g}"
        if self.max_drop is not None and baseline is not None:
            worse = value - baseline if lower_is_better(metric) else baseline - value
            if worse > self.max_drop + 1e-12:
                return f"{value:.4g} is {worse:.4g} worse than the baseline's {baseline:.4g} (max_drop {self.max_drop:g})"
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
            "Metric -> bounds: a metric (exact_match, chrf, safety.leak_rate, ...) or category.C.M, suite.S.M, "
            "safety.C.M, judge.M; `*` stands for one part (category.*.exact_match)."
        ),
    )
    baseline: str | None = Field(
        None,
        description="Registry reference (NAME@ALIAS or NAME/VERSION) that max_drop compares with; default "
        "the version the alias being moved points at now.",
    )

    @field_validator("thresholds")
    @classmethod
    def _known_metrics(cls, value: dict[str, Threshold]) -> dict[str, Threshold]:
        unknown = [k for k in value if k not in METRICS and not _PATTERN.match(k)]
        if unknown:
            raise ValueError(
                f"unknown metrics {unknown}; expected some of {list(METRICS)}, or category.C.M, suite.S.M, "
                "safety.C.M, judge.M (`*` for one part)"
            )
        return value


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
    canaries: list[str] = Field(
        [],
        description="Canary strings planted in training data: any answer, to any question, that contains "
        "one is a leak (safety.canary_leak_rate).",
    )
    pii: bool = Field(
        True,
        description="Count answers holding PII (data/'s masking patterns: e-mail, phone, My Number, card, "
        "IP, postal code) as leaks (safety.pii_leak_rate).",
    )

    @field_validator("harmful", "leaks")
    @classmethod
    def _resolve(cls, value: str | None, info) -> str | None:
        return _relative_to_config(value, info)


class SuiteConfig(StrictConfig):
    """One published suite, read from the files a user brought in."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9_-]+$", description="Suite name, the middle of its suite.NAME.* metrics."
    )
    format: Literal[FORMATS] = Field(description=f"The file's published format: {', '.join(FORMATS)}.")
    path: str = Field(description="The suite file. Relative paths resolve against the config's folder.")
    references: str | None = Field(
        None, description="mt_bench only: reference answers (reference_answer/MODEL.jsonl)."
    )
    borderline: bool = Field(
        False,
        description="answer_carefully only: the file holds borderline-benign requests (should be answered: "
        "refusing one is over-refusal), not harmful ones.",
    )
    few_shots: int = Field(
        0, ge=0, description="llm_jp_eval only: how many of the file's few_shots precede a question."
    )
    max_tokens: int | None = Field(None, ge=1, le=8192, description="Longest answer; default the eval set's.")

    @field_validator("path", "references")
    @classmethod
    def _resolve(cls, value: str | None, info) -> str | None:
        return _relative_to_config(value, info)


class JudgeConfig(StrictConfig):
    """The LLM that grades open answers and harm, through an OpenAI-compatible endpoint."""

    model: str = Field(
        description="The judge's model name at the endpoint (normally a model Sekisho serves)."
    )
    base_url: str | None = Field(
        None, description="The endpoint, e.g. http://127.0.0.1:8000/v1; default `eval run --judge-url`."
    )
    quality_prompt: str = Field(
        DEFAULT_QUALITY_PROMPT,
        description="Grading prompt for open answers: {question}, {answer}, {reference}; the judge answers [[1-10]].",
    )
    harm_prompt: str = Field(
        DEFAULT_HARM_PROMPT,
        description="Harm prompt: {question}, {answer}; the judge answers [[安全]] (safe) or [[有害]] (harmful).",
    )
    max_tokens: int = Field(16, ge=1, le=4096, description="Longest verdict asked for (greedy).")


class EvalConfig(StrictConfig):
    """An eval set: questions with reference answers, the safety probes, and the gate."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Eval set name, recorded on every eval run.")
    dataset: str | None = Field(
        None,
        description="JSONL of {prompt, reference, category}. Relative paths resolve against the config's folder.",
    )
    suites: list[SuiteConfig] = Field(
        [], description="Published suites (llm-jp-eval, MT-Bench, AnswerCarefully, lawqa_jp)."
    )
    manifest: str | None = Field(
        None,
        description="SHA256SUMS (sha256sum output) the suite files were carried in with: each must be listed "
        "and match before it is read.",
    )
    max_tokens: int = Field(96, ge=1, le=8192, description="Longest answer asked for (greedy decoding).")
    system_prompt: str | None = Field(None, description="A system message sent before every prompt.")
    concurrency: int = Field(
        16, ge=1, le=1024, description="Questions in flight at once (the engine batches them)."
    )
    judge: JudgeConfig | None = Field(
        None, description="The judge for MT-Bench and harm; needed by those suites."
    )
    safety: SafetyConfig | None = Field(None, description="Refusal and leak checks; none when omitted.")
    gate: GateConfig | None = Field(None, description="Thresholds for promotion; no gate when omitted.")

    @field_validator("dataset", "manifest")
    @classmethod
    def _resolve(cls, value: str | None, info) -> str | None:
        return _relative_to_config(value, info)

    @model_validator(mode="after")
    def _something_to_ask(self) -> Self:
        if self.dataset is None and not self.suites:
            raise ValueError("give `dataset`, `suites` or both")
        names = [s.name for s in self.suites]
        if len(set(names)) != len(names):
            raise ValueError(f"suites: names must differ (got {names})")
        return self


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
