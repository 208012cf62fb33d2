"""Evaluation: eval sets and promotion gates (configs/eval/); the published
Japanese suites read in their own formats (llm-jp-eval, Japanese MT-Bench,
AnswerCarefully, lawqa_jp), hashed as they come in; offline metrics (exact match,
char F1, accuracy, chrF, ROUGE-L with Japanese-aware tokens, latency); a local
LLM judge; safety as measured rates per harm category (harmful answers,
refusals, over-refusal, PII and canary leaks); answers asked concurrently and
kept for resuming; evaluation runs logged to MLflow and linked to the model
version, with an HTML report. It needs only a base URL and a key."""

from experiments.evaluation.asking import AnswerCache, BatchAsker
from experiments.evaluation.config import (
    EvalConfig,
    Example,
    GateConfig,
    HarmfulPrompt,
    JudgeConfig,
    LeakProbe,
    SuiteConfig,
    Threshold,
    load_gates,
    read_rows,
)
from experiments.evaluation.judge import Judge, Verdict, parse_harm, parse_rating
from experiments.evaluation.metrics import (
    char_f1,
    chosen_label,
    chrf,
    exact_match,
    percentile,
    rouge_l,
    tokenize_ja,
)
from experiments.evaluation.report import render_gate_report, render_run_report
from experiments.evaluation.runner import (
    EVAL_EXPERIMENT,
    TAG_EVAL_SET,
    TAG_MODEL_VERSION,
    EvalResult,
    cache_path,
    evaluate,
    load_items,
    log_eval_run,
    run_eval,
)
from experiments.evaluation.safety import is_refusal, leaked_secrets
from experiments.evaluation.staging import StagedFile, stage
from experiments.evaluation.suites import (
    FORMATS,
    Item,
    read_answer_carefully,
    read_lawqa_jp,
    read_llm_jp_eval,
    read_mt_bench,
)

__all__ = [
    "AnswerCache",
    "BatchAsker",
    "EVAL_EXPERIMENT",
    "EvalConfig",
    "EvalResult",
    "Example",
    "FORMATS",
    "GateConfig",
    "HarmfulPrompt",
    "Item",
    "Judge",
    "JudgeConfig",
    "LeakProbe",
    "StagedFile",
    "SuiteConfig",
    "TAG_EVAL_SET",
    "TAG_MODEL_VERSION",
    "Threshold",
    "Verdict",
    "cache_path",
    "char_f1",
    "chosen_label",
    "chrf",
    "evaluate",
    "exact_match",
    "is_refusal",
    "leaked_secrets",
    "load_gates",
    "load_items",
    "log_eval_run",
    "parse_harm",
    "parse_rating",
    "percentile",
    "read_answer_carefully",
    "read_lawqa_jp",
    "read_llm_jp_eval",
    "read_mt_bench",
    "read_rows",
    "render_gate_report",
    "render_run_report",
    "rouge_l",
    "run_eval",
    "stage",
    "tokenize_ja",
]
