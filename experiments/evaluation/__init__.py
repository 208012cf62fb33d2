"""Evaluation: eval sets and promotion gates (configs/eval/), offline metrics
(exact match, chrF, ROUGE-L with Japanese-aware tokens, latency), safety checks
(refusals, planted-secret leaks), and evaluation runs logged to MLflow and
linked to the model version. It needs only a base URL and a key."""

from experiments.evaluation.config import (
    EvalConfig,
    Example,
    GateConfig,
    HarmfulPrompt,
    LeakProbe,
    Threshold,
    load_gates,
    read_rows,
)
from experiments.evaluation.metrics import (
    chrf,
    exact_match,
    percentile,
    rouge_l,
    tokenize_ja,
)
from experiments.evaluation.runner import (
    EVAL_EXPERIMENT,
    TAG_EVAL_SET,
    TAG_MODEL_VERSION,
    EvalResult,
    evaluate,
    log_eval_run,
    run_eval,
)
from experiments.evaluation.safety import is_refusal, leaked_secrets

__all__ = [
    "EVAL_EXPERIMENT",
    "TAG_EVAL_SET",
    "TAG_MODEL_VERSION",
    "EvalConfig",
    "EvalResult",
    "Example",
    "GateConfig",
    "HarmfulPrompt",
    "LeakProbe",
    "Threshold",
    "chrf",
    "evaluate",
    "exact_match",
    "is_refusal",
    "leaked_secrets",
    "load_gates",
    "log_eval_run",
    "percentile",
    "read_rows",
    "rouge_l",
    "run_eval",
    "tokenize_ja",
]
