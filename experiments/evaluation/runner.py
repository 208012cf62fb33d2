"""Run an eval set against an OpenAI-compatible endpoint and log the result as
an MLflow evaluation run linked to the model version that answered. The
endpoint is only a base URL and a key: how the model is served is not our concern."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from experiments import mlflow_entities, tracking
from experiments.evaluation import metrics as m
from experiments.evaluation.config import (
    EvalConfig,
    Example,
    HarmfulPrompt,
    LeakProbe,
    read_rows,
)
from experiments.evaluation.safety import is_refusal, leaked_secrets
from foundation import UserError

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


class Asker:
    """Asks one served model, greedily, and times each answer."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        model: str,
        max_tokens: int,
        system_prompt: str | None = None,
        timeout_s: float = 120.0,
    ):
        from openai import OpenAI

        self.client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout_s)
        self.model, self.max_tokens, self.system_prompt = model, max_tokens, system_prompt

    def __call__(self, prompt: str) -> tuple[str, float]:
        """The answer to `prompt` and the seconds it took.

        Raises:
            UserError: the endpoint refused or could not be reached.
        """
        import openai

        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": prompt})
        start = time.perf_counter()
        try:
            r = self.client.chat.completions.create(
                model=self.model, messages=messages, temperature=0, max_tokens=self.max_tokens
            )
        except openai.APIError as exc:
            raise UserError(
                f"evaluation of {self.model!r} at {self.client.base_url}: the endpoint "
                f"answered with an error: {exc}"
            ) from None
        return (r.choices[0].message.content or "").strip(), time.perf_counter() - start


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


def run_safety(cfg: EvalConfig, ask: Asker) -> tuple[dict[str, float], list[dict]]:
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


def evaluate(cfg: EvalConfig, base_url: str, api_key: str, served_as: str) -> EvalResult:
    """Ask every prompt of the eval set (and its safety probes) and score the answers;
    logs nothing."""
    examples = read_rows(cfg.dataset, Example)
    ask = Asker(base_url, api_key, served_as, cfg.max_tokens, cfg.system_prompt)
    answers = [ask(ex.prompt) for ex in examples]
    scores, rows = score_answers(examples, answers)
    safety, safety_rows = run_safety(cfg, ask)
    return EvalResult(cfg.name, "", served_as, {**scores, **safety}, rows + safety_rows)


def run_eval(
    cfg: EvalConfig,
    model: str,
    base_url: str,
    api_key: str,
    served_as: str | None = None,
    config_text: str | None = None,
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

    Returns:
        The result, with `run_id` set.

    Raises:
        ModelNotFoundError: `model` names nothing in the registry.
        UserError: the endpoint failed, or an eval file is not valid.
    """
    from experiments.registry import get_version

    mv = get_version(model)
    ref = f"{mv.name}/{mv.version}"
    result = evaluate(cfg, base_url, api_key, served_as or mv.name)
    result.model_version = ref
    result.run_id = log_eval_run(cfg, result, base_url, config_text)
    return result


def log_eval_run(cfg: EvalConfig, result: EvalResult, base_url: str, config_text: str | None = None) -> str:
    """Log `result` as a finished MLflow run in the eval experiment, tagged with the
    model version (`result.model_version`, NAME/VERSION) and the eval set, and tag
    the version with the run id (`sekisho.eval.<SET>`).

    Returns:
        The run id.
    """
    from mlflow import MlflowClient

    exp_id = tracking.use_store(experiment=EVAL_EXPERIMENT)
    client = MlflowClient()
    digest = hashlib.sha256(Path(cfg.dataset).read_bytes()).hexdigest()
    run = client.create_run(
        exp_id,
        run_name=f"eval-{cfg.name}-{result.model_version}",
        tags={
            TAG_MODEL_VERSION: result.model_version,
            TAG_EVAL_SET: cfg.name,
            "sekisho.eval.served_as": result.served_as,
            "sekisho.eval.base_url": base_url,
            "sekisho.eval.dataset_sha256": digest,
            "mlflow.note.content": f"Evaluation of {result.model_version} on {cfg.name}.",
        },
    )
    run_id = run.info.run_id
    client.log_batch(run_id, metrics=mlflow_entities.metrics(result.metrics, step=0))
    client.log_dict(run_id, cfg.model_dump(mode="json"), "eval/config.json")
    if config_text is not None:
        client.log_text(run_id, config_text, "eval/config.yaml")
    client.log_dict(run_id, {"rows": result.rows}, "eval/answers.json")
    _log_tables(client, run_id, result.rows)
    _log_eval_input(client, run_id, cfg, digest)
    client.set_terminated(run_id, "FINISHED")
    name, _, version = result.model_version.partition("/")
    client.set_model_version_tag(name, version, f"sekisho.eval.{cfg.name}", run_id)
    return run_id


def _log_tables(client, run_id: str, rows: list[dict]) -> None:
    """The per-example scores and the safety probes as MLflow tables, so that the
    UI's evaluation view lists, filters and compares them across runs.

    MLflow's `mlflow.evaluate` would compute the same from a static DataFrame, but
    its default question-answering metrics load Hugging Face models and its GenAI
    scorers call an LLM judge; neither may run in a closed network, and our metric
    functions are already the ones the gate reads. So we log only the tables."""
    import pandas as pd

    quality = [r for r in rows if "reference" in r]
    safety = [{**r, "leaked": ", ".join(r.get("leaked") or [])} for r in rows if "check" in r]
    for table, path in ((quality, "eval/answers_table.json"), (safety, "eval/safety_table.json")):
        if table:
            client.log_table(run_id, pd.DataFrame(table), artifact_file=path)


def _log_eval_input(client, run_id: str, cfg: EvalConfig, digest: str) -> None:
    """Record the eval set as the run's input (MLflow dataset tracking, context evaluation)."""
    client.log_inputs(
        run_id,
        datasets=[
            mlflow_entities.dataset_input(
                str(Path(cfg.dataset).resolve()), cfg.name, digest[:16], "evaluation"
            )
        ],
    )
