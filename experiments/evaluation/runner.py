"""Run an eval set against an OpenAI-compatible endpoint and log the result as
an MLflow evaluation run linked to the model version that answered. The
endpoint is only a base URL and a key: how the model is served is not our concern."""

from __future__ import annotations

import dataclasses
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from experiments import mlflow_entities, tracking
from experiments.evaluation import metrics as m
from experiments.evaluation import scoring, suites
from experiments.evaluation.asking import AnswerCache, BatchAsker, question_key
from experiments.evaluation.config import (
    EvalConfig,
    Example,
    HarmfulPrompt,
    LeakProbe,
    read_rows,
)
from experiments.evaluation.judge import Judge
from experiments.evaluation.safety import DEFAULT_REFUSAL_KEYWORDS, is_refusal, leaked_secrets
from experiments.evaluation.staging import StagedFile, stage
from experiments.evaluation.suites import Item
from foundation import UserError
from foundation.hashing import file_sha256

EVAL_EXPERIMENT = "sekisho-eval"
TAG_MODEL_VERSION = "sekisho.eval.model_version"
TAG_EVAL_SET = "sekisho.eval.set"


@dataclass
class EvalResult:
    """What one evaluation measured; `run_id` is the MLflow run it was logged to."""

    eval_set: str
    model_version: str
    served_as: str
    metrics: dict[str, float]
    rows: list[dict] = field(default_factory=list)
    run_id: str = ""
    staged: list[StagedFile] = field(default_factory=list)  # the files asked, with their SHA-256
    judge: dict | None = None  # the judge's model, version, hash, endpoint and prompts


def score_answers(
    examples: list[Example], answers: list[tuple[str, float]]
) -> tuple[dict[str, float], list[dict]]:
    """Quality metrics (overall and per category) and latency percentiles.

    Returns:
        (metrics, rows): metric name -> value, and one row per example with its scores.
    """
    rows = []
    for ex, (answer, seconds) in zip(examples, answers, strict=True):
        rows.append(
            {
                "prompt": ex.prompt,
                "reference": ex.reference,
                "category": ex.category,
                "answer": answer,
                "latency_s": seconds,
                "exact_match": m.exact_match(answer, ex.reference),
                "chrf": m.chrf(answer, ex.reference),
                "rouge_l": m.rouge_l(answer, ex.reference),
            }
        )
    out = _means(rows, "")
    for cat in sorted({r["category"] for r in rows}):
        out.update(_means([r for r in rows if r["category"] == cat], f"category.{cat}."))
    lat = [r["latency_s"] for r in rows]
    out["latency_p50_s"], out["latency_p95_s"] = m.percentile(lat, 50), m.percentile(lat, 95)
    return out, rows


def _means(rows: list[dict], prefix: str) -> dict[str, float]:
    return {prefix + k: sum(r[k] for r in rows) / len(rows) for k in ("exact_match", "chrf", "rouge_l")}


def run_safety(cfg: EvalConfig, ask) -> tuple[dict[str, float], list[dict]]:
    """Refusal rate on harmful requests and leak rate of planted secrets."""
    out: dict[str, float] = {}
    rows: list[dict] = []
    if cfg.safety is None:
        return out, rows
    if cfg.safety.harmful:
        probes = read_rows(cfg.safety.harmful, HarmfulPrompt)
        refused = 0
        for p in probes:
            answer, _ = ask(p.prompt)
            ok = is_refusal(answer, cfg.safety.refusal_keywords)
            refused += ok
            rows.append({"check": "refusal", "prompt": p.prompt, "answer": answer, "passed": ok})
        out["safety.refusal_rate"] = refused / len(probes)
    if cfg.safety.leaks:
        probes = read_rows(cfg.safety.leaks, LeakProbe)
        leaks = 0
        for p in probes:
            answer, _ = ask(p.prompt)
            found = leaked_secrets(answer, p.secrets)
            leaks += bool(found)
            rows.append(
                {"check": "leak", "prompt": p.prompt, "answer": answer, "passed": not found, "leaked": found}
            )
        out["safety.leak_rate"] = leaks / len(probes)
        out["safety.leak_count"] = float(leaks)
    return out, rows


def _single_prompts(cfg: EvalConfig) -> list[str]:
    prompts = [ex.prompt for ex in read_rows(cfg.dataset, Example)] if cfg.dataset else []
    if cfg.safety and cfg.safety.harmful:
        prompts += [p.prompt for p in read_rows(cfg.safety.harmful, HarmfulPrompt)]
    if cfg.safety and cfg.safety.leaks:
        prompts += [p.prompt for p in read_rows(cfg.safety.leaks, LeakProbe)]
    return prompts


def load_items(cfg: EvalConfig) -> list[Item]:
    """Every item of the config's published suites.

    Raises:
        ConfigError: a suite file is malformed (file:line of each bad row).
        UserError: a suite needs the judge and the config has none.
    """
    items: list[Item] = []
    for s in cfg.suites:
        if s.format == "llm_jp_eval":
            got = suites.read_llm_jp_eval(s.path, s.name)
            got = [dataclasses.replace(i, few_shots=i.few_shots[: s.few_shots]) for i in got]
        elif s.format == "mt_bench":
            got = suites.read_mt_bench(s.path, s.name, s.references)
        elif s.format == "answer_carefully":
            got = suites.read_answer_carefully(s.path, s.name, harmful=not s.borderline)
        else:
            got = suites.read_lawqa_jp(s.path, s.name)
        needs_judge = s.format == "mt_bench" or (s.format == "answer_carefully" and not s.borderline)
        if needs_judge and cfg.judge is None:
            raise UserError(
                f"eval set {cfg.name}: suite {s.name!r} ({s.format}) is scored by a judge; add `judge:`."
            )
        items += got
    return items


def evaluate(
    cfg: EvalConfig,
    base_url: str,
    api_key: str,
    served_as: str,
    version: str = "",
    judge=None,
    cache: AnswerCache | None = None,
    pii_detector=None,
) -> EvalResult:
    """Ask every question of the eval set (its dataset, published suites and safety
    probes) `cfg.concurrency` at a time, and score the answers; logs nothing.

    Args:
        version: the model version answering (NAME/VERSION); part of each cached answer's key.
        judge: an `experiments.evaluation.judge.Judge`, needed by judged suites.
        cache: where answers are kept as they arrive (resume); default none kept.
        pii_detector: text -> the PII types found in it (sekisho passes data's masking).
    """
    staged = stage(cfg)
    items = load_items(cfg)
    if (
        items
        and cfg.judge is not None
        and judge is None
        and any(i.format == "mt_bench" or i.harmful for i in items)
    ):
        raise UserError(
            f"eval set {cfg.name}: its judged suites need a judge endpoint (judge.base_url or --judge-url)."
        )
    cache = cache or AnswerCache(None)
    asker = BatchAsker(base_url, api_key, served_as, cfg.concurrency)
    jobs, keys = [], {}
    for p in _single_prompts(cfg):
        k = question_key(version, cfg.system_prompt, (), (p,), cfg.max_tokens)
        keys[("prompt", p)] = k
        jobs.append((k, functools.partial(asker.converse, (p,), cfg.max_tokens, cfg.system_prompt)))
    limits = {s.name: s.max_tokens or cfg.max_tokens for s in cfg.suites}
    for it in items:
        system = it.system or cfg.system_prompt
        k = question_key(version, system, it.few_shots, it.turns, limits[it.suite])
        keys[("item", it.suite, it.id)] = k
        jobs.append((k, functools.partial(asker.converse, it.turns, limits[it.suite], system, it.few_shots)))
    started = time.perf_counter()
    answered = asker.ask_all(jobs, cache)
    took = time.perf_counter() - started

    def ask(prompt: str) -> tuple[str, float]:
        answers, seconds = answered[keys[("prompt", prompt)]]
        return answers[0], seconds

    out: dict[str, float] = {}
    rows: list[dict] = []
    if cfg.dataset:
        examples = read_rows(cfg.dataset, Example)
        out, rows = score_answers(examples, [ask(ex.prompt) for ex in examples])
    safety, safety_rows = run_safety(cfg, ask)
    out.update(safety)
    refusal_keywords = cfg.safety.refusal_keywords if cfg.safety else list(DEFAULT_REFUSAL_KEYWORDS)
    with ThreadPoolExecutor(cfg.concurrency) as pool:
        item_rows = list(
            pool.map(
                lambda it: scoring.score_item(
                    it, answered[keys[("item", it.suite, it.id)]][0], judge, refusal_keywords
                ),
                items,
            )
        )
    _merge_refusal_rates(out, scoring.aggregate(item_rows), safety_rows, item_rows)
    if cfg.safety is not None:
        every = [a for answers, _ in answered.values() for a in answers]
        leaks, leak_rows = scoring.leak_rates(
            every, cfg.safety.canaries, pii_detector if cfg.safety.pii else None
        )
        out.update(leaks)
        safety_rows += leak_rows
    out["eval.questions"] = float(len(jobs))
    out["eval.answers_resumed"] = float(cache.resumed)
    asked = len(jobs) - cache.resumed
    if asked and took > 0:
        out["eval.questions_per_s"] = asked / took
    result = EvalResult(cfg.name, version, served_as, out, rows + safety_rows + item_rows)
    result.staged = staged
    if judge is not None:
        result.judge = {
            "model": judge.cfg.model,
            "version": judge.version,
            "sha256": judge.sha256,
            "base_url": judge.base_url,
            "quality_prompt": judge.cfg.quality_prompt,
            "harm_prompt": judge.cfg.harm_prompt,
        }
    return result


def _merge_refusal_rates(out: dict, aggregated: dict, safety_rows: list[dict], item_rows: list[dict]) -> None:
    """Add the suites' means to `out`. `safety.refusal_rate` is over every harmful
    prompt asked: the safety probes' and AnswerCarefully's together, weighted by
    their counts (neither overwrites the other); the probes' own rate stays as
    `safety.probes.refusal_rate`."""
    probes = sum(r.get("check") == "refusal" for r in safety_rows)
    suites = sum("refusal_rate" in r["scores"] for r in item_rows)
    if probes and suites:
        rate = out["safety.refusal_rate"]
        out["safety.probes.refusal_rate"] = rate
        aggregated["safety.refusal_rate"] = (rate * probes + aggregated["safety.refusal_rate"] * suites) / (
            probes + suites
        )
    out.update(aggregated)


def cache_path(home: Path, version: str, eval_set: str) -> Path:
    """Where the answers of `version` (NAME/VERSION) on `eval_set` are kept for resuming."""
    return Path(home) / "eval-cache" / version.replace("/", "--v") / f"{eval_set}.jsonl"


def run_eval(
    cfg: EvalConfig,
    model: str,
    base_url: str,
    api_key: str,
    served_as: str | None = None,
    config_text: str | None = None,
    judge_url: str | None = None,
    judge_key: str | None = None,
    home: Path | None = None,
    pii_detector=None,
) -> EvalResult:
    """Evaluate the model version `model` (NAME@ALIAS or NAME/VERSION) as served at
    `base_url` under the name `served_as`, and log an MLflow evaluation run tagged
    with the version, so that the promotion gate can find it.

    Args:
        cfg: the eval set.
        model: registry reference; an alias is resolved to its version before asking.
        base_url: OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1.
        api_key: key for the endpoint.
        served_as: model name the endpoint serves it under; default the registry name.
        config_text: the YAML the config was read from, logged as an artifact.
        judge_url: the judge's endpoint (default `cfg.judge.base_url`, else `base_url`).
        judge_key: the judge endpoint's key (default `api_key`).
        home: the Sekisho home; answers are kept under it to resume an interrupted run.
        pii_detector: text -> PII types found (for safety.pii_leak_rate).

    Returns:
        The result, with `run_id` set.

    Raises:
        ModelNotFoundError: `model` names nothing in the registry.
        UserError: the endpoint failed, or an eval file is not valid.
    """
    from experiments.registry import get_version

    mv = get_version(model)
    ref = f"{mv.name}/{mv.version}"
    judge = None
    if cfg.judge is not None and any(
        s.format == "mt_bench" or (s.format == "answer_carefully" and not s.borderline) for s in cfg.suites
    ):
        judge = Judge(judge_url or cfg.judge.base_url or base_url, judge_key or api_key, cfg.judge)
    cache = AnswerCache(cache_path(home, ref, cfg.name) if home else None)
    result = evaluate(cfg, base_url, api_key, served_as or mv.name, ref, judge, cache, pii_detector)
    result.model_version = ref
    result.run_id = log_eval_run(cfg, result, base_url, config_text)
    return result


def log_eval_run(cfg: EvalConfig, result: EvalResult, base_url: str, config_text: str | None = None) -> str:
    """Log `result` as a finished MLflow run in the eval experiment, tagged with the
    model version (`result.model_version`, NAME/VERSION) and the eval set, and tag
    the version with the run id (`sekisho.eval.<SET>`). The suite files' hashes are
    the run's dataset inputs; the judge's prompts, version and raw verdicts, the
    answers, the per-category tables and an HTML report are its artifacts.

    Returns:
        The run id.
    """
    from mlflow import MlflowClient

    from experiments.evaluation.report import render_run_report

    exp_id = tracking.use_store(experiment=EVAL_EXPERIMENT)
    client = MlflowClient()
    staged = result.staged or stage_legacy(cfg)
    tags = {
        TAG_MODEL_VERSION: result.model_version,
        TAG_EVAL_SET: cfg.name,
        "sekisho.eval.served_as": result.served_as,
        "sekisho.eval.base_url": base_url,
        "mlflow.note.content": f"Evaluation of {result.model_version} on {cfg.name}.",
    }
    for f in staged:
        key = "sekisho.eval.dataset_sha256" if f.is_dataset else f"sekisho.eval.sha256.{f.name}"
        tags[key] = f.sha256
    if result.judge:
        tags |= {
            "sekisho.eval.judge_model": result.judge["model"],
            "sekisho.eval.judge_version": result.judge["version"],
            "sekisho.eval.judge_sha256": result.judge["sha256"],
            "sekisho.eval.judge_base_url": result.judge["base_url"],
        }
    run = client.create_run(exp_id, run_name=f"eval-{cfg.name}-{result.model_version}", tags=tags)
    run_id = run.info.run_id
    client.log_batch(run_id, metrics=mlflow_entities.metrics(result.metrics, step=0))
    client.log_dict(run_id, cfg.model_dump(mode="json"), "eval/config.json")
    if config_text is not None:
        client.log_text(run_id, config_text, "eval/config.yaml")
    client.log_dict(run_id, {"rows": result.rows}, "eval/answers.json")
    if result.judge:
        verdicts = [
            {"suite": r["suite"], "id": r["id"], "where": r["where"], **v}
            for r in result.rows
            if r.get("verdicts")
            for v in r["verdicts"]
        ]
        client.log_dict(run_id, result.judge | {"verdicts": verdicts}, "eval/judge.json")
    _log_tables(client, run_id, result.rows, result.metrics)
    client.log_text(run_id, render_run_report(result), "eval/report.html")
    client.log_inputs(
        run_id,
        datasets=[
            mlflow_entities.dataset_input(
                str(f.path.resolve()),
                cfg.name if f.is_dataset else f"{cfg.name}/{f.name}",
                f.sha256[:16],
                "evaluation",
            )
            for f in staged
        ],
    )
    client.set_terminated(run_id, "FINISHED")
    name, _, version = result.model_version.partition("/")
    client.set_model_version_tag(name, version, f"sekisho.eval.{cfg.name}", run_id)
    return run_id


def stage_legacy(cfg: EvalConfig) -> list[StagedFile]:
    """The hashes of a result made without staging (its dataset file alone, if it exists)."""
    if cfg.dataset and Path(cfg.dataset).is_file():
        return [StagedFile(cfg.name, Path(cfg.dataset), file_sha256(cfg.dataset), True)]
    return []


def _log_tables(client, run_id: str, rows: list[dict], metrics: dict[str, float] | None = None) -> None:
    """The per-example scores, the safety probes, the published suites' rows and
    the metrics as MLflow tables, so that the UI's evaluation view lists, filters and
    compares them across runs.

    MLflow's `mlflow.evaluate` would compute the same from a static DataFrame, but
    its default question-answering metrics load Hugging Face models and its GenAI
    scorers call an LLM judge we do not choose; neither may run in a closed network,
    and our metric functions are already the ones the gate reads. So we log only the tables."""
    import json

    import pandas as pd

    quality = [r for r in rows if "reference" in r and "suite" not in r]
    safety = [{**r, "leaked": ", ".join(r.get("leaked") or [])} for r in rows if "check" in r]
    suite_rows = [
        {
            **{k: v for k, v in r.items() if k not in ("scores", "verdicts")},
            **{f"score.{k}": v for k, v in r["scores"].items()},
            "verdicts": json.dumps([v["raw"] for v in r["verdicts"]], ensure_ascii=False),
        }
        for r in rows
        if "suite" in r
    ]
    table = [{"metric": k, "value": v} for k, v in sorted((metrics or {}).items())]
    for data, path in (
        (quality, "eval/answers_table.json"),
        (safety, "eval/safety_table.json"),
        (suite_rows, "eval/suites_table.json"),
        (table, "eval/metrics_table.json"),
    ):
        if data:
            client.log_table(run_id, pd.DataFrame(data), artifact_file=path)
