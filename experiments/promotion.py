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
from dataclasses import dataclass

from experiments import alias_log, tracking
from experiments.evaluation.config import GateConfig
from experiments.evaluation.runner import (
    EVAL_EXPERIMENT,
    TAG_EVAL_SET,
    TAG_MODEL_VERSION,
)
from experiments.registry import get_version
from foundation import UserError

GATED_BY_DEFAULT = ("production",)


class PromotionRefused(UserError):
    """The gate refused a promotion; the message says which metric failed or what is missing."""


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


def check_gate(name: str, version: str, alias: str, gates: list[tuple[str, GateConfig]]) -> tuple[str, ...]:
    """The eval runs that let `name/version` take `alias`.

    Args:
        gates: (eval set name, gate) pairs, e.g. from `load_gates("configs/eval")`.

    Returns:
        The ids of the passing eval runs (empty when `alias` is not gated).

    Raises:
        PromotionRefused: no gate is configured for a gated alias, no evaluation
            run is linked to the version, or the latest one misses a threshold.
    """
    gated = set(GATED_BY_DEFAULT) | {a for _, g in gates for a in g.aliases}
    if alias not in gated:
        return ()
    mine = [(s, g) for s, g in gates if name in g.models and alias in g.aliases]
    if not mine:
        raise PromotionRefused(
            f"{name}/{version} cannot take {alias!r}: no promotion gate is configured for {name!r} "
            f"(add a `gate:` with models: [{name}] and aliases: [{alias}] to an eval config in "
            "configs/eval/), or promote with --force --reason TEXT."
        )
    return tuple(_passing_run(name, version, alias, s, g) for s, g in mine)


def _passing_run(name: str, version: str, alias: str, eval_set: str, gate: GateConfig) -> str:
    from mlflow import MlflowClient

    ref = f"{name}/{version}"
    exp_id = tracking.use_store(experiment=EVAL_EXPERIMENT)
    tracking.use_store()
    runs = MlflowClient().search_runs(
        [exp_id],
        filter_string=f"tags.`{TAG_MODEL_VERSION}` = '{ref}' and tags.`{TAG_EVAL_SET}` = "
        f"'{eval_set}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise PromotionRefused(
            f"{ref} cannot take {alias!r}: no evaluation run on {eval_set!r} is linked to it; run "
            f"`sekisho eval run configs/eval/{eval_set}.yaml --model {ref} ...` first, or promote "
            "with --force --reason TEXT."
        )
    run = runs[0]
    failures = [
        f"{k} {why}"
        for k, t in gate.thresholds.items()
        if (why := t.failure(run.data.metrics.get(k))) is not None
    ]
    if failures:
        raise PromotionRefused(
            f"{ref} cannot take {alias!r}: its latest evaluation on {eval_set!r} (run {run.info.run_id}) "
            f"misses the gate: {'; '.join(failures)}. Improve the model, or promote with --force "
            "--reason TEXT."
        )
    return run.info.run_id


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
    runs = () if force else check_gate(name, version, alias, gates or [])
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
