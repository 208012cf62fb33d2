"""Promotion: move an alias to a model version only through the gate (an
evaluation run linked to that version whose metrics meet the thresholds
configured for the model), or by force with a recorded reason; remember each
alias's history so that `rollback` moves it back to the previous version.

State lives in the registry itself: one registered-model tag per alias move (see
experiments/alias_log.py, which keeps it exact when several people promote or roll
back the same model at once); a forced promotion also tags the version."""

from __future__ import annotations

import getpass
import json
import os
import time
from dataclasses import dataclass, field

from experiments import alias_log, tracking
from experiments.evaluation.config import GateConfig, matching
from experiments.evaluation.runner import (
    EVAL_EXPERIMENT,
    TAG_EVAL_SET,
    TAG_MODEL_VERSION,
)
from experiments.registry import get_version
from foundation import UserError

GATED_BY_DEFAULT = ("production",)


class PromotionRefused(UserError):
    """The gate refused a promotion; the message says which metric failed or what is
    missing, and `report` (when the gate got that far) holds the side-by-side table."""

    def __init__(self, message: str, report: GateReport | None = None):
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class Promotion:
    """An alias move that happened."""

    name: str
    alias: str
    version: str
    previous: str | None
    forced: bool
    reason: str | None
    eval_runs: tuple[str, ...]


def alias_history(name: str, alias: str) -> list[str]:
    """The versions `name@alias` has pointed at (through `promote`, `rollback`,
    `set_alias`), oldest first; rolled-back versions are gone from it."""
    return alias_log.history(name, alias)


def promotion_log(name: str) -> list[dict]:
    """Every recorded promotion, rollback and alias move of `name`, oldest first, each
    with the version it left the alias at and the one before."""
    return [
        s.event | {"version": s.version, "previous": s.previous} | ({} if s.applied else {"applied": False})
        for s in alias_log.steps(name)
        if s.event["action"] != "observed"
    ]


@dataclass
class GateRow:
    """One gated metric of one eval set: the candidate's value beside the baseline's."""

    eval_set: str
    metric: str
    candidate: float | None
    baseline: float | None
    threshold: str
    failure: str | None


@dataclass
class GateReport:
    """What the gate saw for `name/version` taking `alias`: every gated metric beside
    the baseline (the version the alias points at now, or the gate's `baseline`)."""

    name: str
    version: str
    alias: str
    rows: list[GateRow] = field(default_factory=list)
    runs: dict[str, str] = field(default_factory=dict)  # eval set -> candidate's run id
    baselines: dict[str, str] = field(default_factory=dict)  # eval set -> baseline NAME/VERSION
    baseline_runs: dict[str, str] = field(default_factory=dict)
    candidate_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    baseline_metrics: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def failures(self) -> list[GateRow]:
        return [r for r in self.rows if r.failure]

    def table(self) -> str:
        """The side-by-side table as text (what `models promote` prints before moving the alias)."""
        head = ("eval set", "metric", "candidate", "baseline", "delta", "threshold", "verdict")
        body = []
        for r in self.rows:
            delta = None if r.candidate is None or r.baseline is None else r.candidate - r.baseline
            body.append(
                (
                    r.eval_set,
                    r.metric,
                    _fmt(r.candidate),
                    _fmt(r.baseline),
                    _fmt(delta, sign=True),
                    r.threshold,
                    "FAIL: " + r.failure if r.failure else "ok",
                )
            )
        widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
        lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in (head, *body)]
        return "\n".join(lines)

    def html(self) -> str:
        from experiments.evaluation.report import render_gate_report

        cand = {k: v for m in self.candidate_metrics.values() for k, v in m.items()}
        base = {k: v for m in self.baseline_metrics.values() for k, v in m.items()}
        baseline = ", ".join(sorted(set(self.baselines.values()))) or None
        return render_gate_report(
            f"Promotion gate: {self.name}/{self.version} -> {self.alias}",
            f"{self.name}/{self.version}",
            baseline,
            [r.__dict__ for r in self.rows],
            cand,
            base,
        )


def _fmt(v: float | None, sign: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:+.4g}" if sign else f"{v:.4g}"


def _gates_for(name: str, version: str, alias: str, gates) -> list[tuple[str, GateConfig]]:
    gated = set(GATED_BY_DEFAULT) | {a for _, g in gates for a in g.aliases}
    if alias not in gated:
        return []
    mine = [(s, g) for s, g in gates if name in g.models and alias in g.aliases]
    if not mine:
        raise PromotionRefused(
            f"{name}/{version} cannot take {alias!r}: no promotion gate is configured for {name!r} "
            f"(add a `gate:` with models: [{name}] and aliases: [{alias}] to an eval config in "
            "configs/eval/), or promote with --force --reason TEXT."
        )
    return mine


def baseline_of(name: str, alias: str, gate: GateConfig) -> str | None:
    """NAME/VERSION of the version a gate compares with: its `baseline`, else the
    version `name@alias` points at now; None when that alias is not set yet."""
    from experiments.registry import ModelNotFoundError

    try:
        mv = get_version(gate.baseline or f"{name}@{alias}")
    except ModelNotFoundError:
        if gate.baseline:
            raise PromotionRefused(f"gate baseline {gate.baseline!r} names no model version.") from None
        return None
    return f"{mv.name}/{mv.version}"


def latest_eval_run(ref: str, eval_set: str):
    """The newest finished evaluation run of NAME/VERSION on `eval_set`, or None."""
    from mlflow import MlflowClient

    exp_id = tracking.use_store(experiment=EVAL_EXPERIMENT)
    tracking.use_store()
    runs = MlflowClient().search_runs(
        [exp_id],
        filter_string=f"tags.`{TAG_MODEL_VERSION}` = '{ref}' and tags.`{TAG_EVAL_SET}` = "
        f"'{eval_set}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def missing_evaluations(name: str, version: str, alias: str, gates) -> list[tuple[str, str]]:
    """(eval set, NAME/VERSION) pairs the gate needs and the store lacks: the
    candidate's evaluations, and the baseline's where a threshold compares with it."""
    out = []
    for eval_set, gate in _gates_for(name, version, alias, gates):
        refs = [f"{name}/{version}"]
        if any(t.max_drop is not None for t in gate.thresholds.values()):
            base = baseline_of(name, alias, gate)
            if base and base not in refs:
                refs.append(base)
        out += [(eval_set, ref) for ref in refs if latest_eval_run(ref, eval_set) is None]
    return out


def gate_report(name: str, version: str, alias: str, gates) -> GateReport:
    """Every gated metric of `name/version` beside its baseline, each with its verdict.

    Raises:
        PromotionRefused: no gate is configured for a gated alias, or no evaluation
            run of the candidate is linked to it.
    """
    ref = f"{name}/{version}"
    report = GateReport(name, version, alias)
    for eval_set, gate in _gates_for(name, version, alias, gates):
        run = latest_eval_run(ref, eval_set)
        if run is None:
            raise PromotionRefused(
                f"{ref} cannot take {alias!r}: no evaluation run on {eval_set!r} is linked to it; run "
                f"`sekisho eval run configs/eval/{eval_set}.yaml --model {ref} ...` first, or promote "
                "with --force --reason TEXT.",
                report,
            )
        report.runs[eval_set] = run.info.run_id
        cand = dict(run.data.metrics)
        report.candidate_metrics[eval_set] = cand
        base: dict[str, float] = {}
        base_ref = (
            baseline_of(name, alias, gate)
            if any(t.max_drop is not None for t in gate.thresholds.values())
            else None
        )
        base_run = latest_eval_run(base_ref, eval_set) if base_ref else None
        if base_ref:
            report.baselines[eval_set] = base_ref
        if base_run is not None:
            report.baseline_runs[eval_set] = base_run.info.run_id
            base = dict(base_run.data.metrics)
            report.baseline_metrics[eval_set] = base
        for key, t in gate.thresholds.items():
            keys = matching(key, set(cand) | set(base)) or [key]
            for k in keys:
                failure = t.failure(cand.get(k), base.get(k), k)
                if failure is None and t.max_drop is not None and base_ref and base_run is None:
                    failure = f"baseline {base_ref} has no evaluation on {eval_set!r} to compare with"
                report.rows.append(
                    GateRow(eval_set, k, cand.get(k), base.get(k), _threshold_text(t), failure)
                )
    return report


def _threshold_text(t) -> str:
    parts = []
    if t.min is not None:
        parts.append(f">= {t.min:g}")
    if t.max is not None:
        parts.append(f"<= {t.max:g}")
    if t.max_drop is not None:
        parts.append(f"worse than baseline by <= {t.max_drop:g}")
    return ", ".join(parts)


def check_gate(name: str, version: str, alias: str, gates: list[tuple[str, GateConfig]]) -> tuple[str, ...]:
    """The eval runs that let `name/version` take `alias`.

    Args:
        gates: (eval set name, gate) pairs, e.g. from `load_gates("configs/eval")`.

    Returns:
        The ids of the passing eval runs (empty when `alias` is not gated).

    Raises:
        PromotionRefused: no gate is configured for a gated alias, no evaluation
            run is linked to the version, or the latest one misses a threshold
            (the message names every failing metric, category by category; the
            exception's `report` holds the side-by-side table).
    """
    return decide(gate_report(name, version, alias, gates))


def decide(report: GateReport) -> tuple[str, ...]:
    """The candidate's eval run ids when every gated metric passes.

    Raises:
        PromotionRefused: naming every failing metric (category by category).
    """
    name, version, alias = report.name, report.version, report.alias
    if report.failures:
        by_set: dict[str, list[str]] = {}
        for r in report.failures:
            by_set.setdefault(r.eval_set, []).append(f"{r.metric} {r.failure}")
        detail = "; ".join(
            f"its latest evaluation on {s!r} (run {report.runs[s]}) misses the gate: {'; '.join(f)}"
            for s, f in by_set.items()
        )
        raise PromotionRefused(
            f"{name}/{version} cannot take {alias!r}: {detail}. Improve the model, or promote with --force --reason TEXT.",
            report,
        )
    return tuple(report.runs.values())


def log_gate_report(report: GateReport) -> None:
    """Attach the gate's table (MLflow table) and HTML page to the candidate's eval runs."""
    import pandas as pd
    from mlflow import MlflowClient

    client = MlflowClient()
    for eval_set, run_id in report.runs.items():
        rows = [r.__dict__ for r in report.rows if r.eval_set == eval_set]
        if rows:
            client.log_table(run_id, pd.DataFrame(rows), artifact_file=f"gate/{report.alias}_table.json")
        client.log_text(run_id, report.html(), f"gate/{report.alias}.html")


def promote(
    name: str,
    version: str,
    alias: str = "production",
    force: bool = False,
    reason: str | None = None,
    gates: list[tuple[str, GateConfig]] | None = None,
) -> Promotion:
    """Point `name@alias` at `version` if the gate lets it, and remember the move.

    Args:
        name: registered model name.
        version: the version to promote.
        alias: the alias to move; `production` (and any alias a gate names) is gated.
        force: skip the gate; needs `reason`, which is recorded on the version and
            in the model's promotion log.
        reason: why the gate was skipped.
        gates: (eval set name, gate) pairs; see `check_gate`.

    Returns:
        What happened, with the previous version of the alias.

    Raises:
        ModelNotFoundError: no such model or version.
        PromotionRefused: the gate refused, or `force` was given without a reason.
    """
    from mlflow import MlflowClient

    version = str(version)
    get_version(f"{name}/{version}")
    if force and not (reason and reason.strip()):
        raise PromotionRefused(
            f"{name}/{version} -> {alias!r}: --force needs --reason TEXT, which is "
            "recorded with the promotion."
        )
    runs: tuple[str, ...] = ()
    if not force:
        report = gate_report(name, version, alias, gates or [])
        if report.runs:
            log_gate_report(report)
        runs = decide(report)
    event = {
        "action": "promote",
        "version": version,
        "forced": force,
        "reason": reason if force else None,
        "eval_runs": list(runs),
    } | _who()
    previous = alias_log.move(name, alias, event).previous
    if force:
        MlflowClient().set_model_version_tag(
            name, version, f"sekisho.forced.{alias}", json.dumps({"reason": reason} | _who())
        )
    return Promotion(name, alias, version, previous, force, reason if force else None, runs)


def rollback(name: str, alias: str = "production") -> Promotion:
    """Move `name@alias` back to the version it pointed at before the last promotion.

    The previous version passed its gate (or was forced) when it was promoted, so
    rollback does not ask the gate again: it must work in seconds.

    Raises:
        ModelNotFoundError: no such model.
        UserError: the alias has no earlier version to go back to.
    """
    history = alias_log.history(name, alias)
    if len(history) < 2:
        raise UserError(
            f"{name}@{alias}: nothing to roll back to (history: {history or 'empty'}); "
            f"promote a version with `sekisho models promote {name} VERSION --alias {alias}`."
        )
    step = alias_log.move(name, alias, {"action": "rollback"} | _who())
    if not step.applied:
        raise UserError(
            f"{name}@{alias}: nothing left to roll back to: rollbacks made at the same "
            f"time took the alias back to version {step.version}, the first in its history."
        )
    return Promotion(name, alias, step.version, step.previous, False, None, ())


def _who() -> dict[str, str]:
    """Who is moving the alias: the tracking server login, else the local user."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    try:
        user = user or getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return {"by": user, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
