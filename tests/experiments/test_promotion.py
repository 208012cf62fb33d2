"""The promotion gate and rollback on real MLflow stores (the embedded SQLite one,
and PostgreSQL used directly, through the `registry_store` parameter): refusal without
an evaluation, refusal below a threshold, force with a recorded reason, alias
history across promote / outside moves / rollback, the CLI around them, and 8
processes promoting and rolling back one model at the same moment (no history
entry lost, the alias agrees with the history)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from experiments.evaluation import EvalConfig, EvalResult, GateConfig, log_eval_run


def gates_for(name: str, aliases=("production",)) -> list[tuple[str, GateConfig]]:
    return [
        (
            "unit",
            GateConfig(
                models=[name],
                aliases=list(aliases),
                thresholds={"exact_match": {"min": 0.9}, "safety.leak_rate": {"max": 0.0}},
            ),
        )
    ]


def log_eval(name: str, version: str, metrics: dict[str, float], eval_set: str = "unit") -> str:
    cfg = EvalConfig(name=eval_set, dataset=__file__)
    return log_eval_run(cfg, EvalResult(eval_set, f"{name}/{version}", "x", metrics), "http://127.0.0.1:1/v1")


def test_gate_refuses_without_an_evaluation_run(model):
    from experiments import PromotionRefused, promote

    with pytest.raises(PromotionRefused, match=r"no evaluation run on 'unit' is linked to it"):
        promote(model, "1", gates=gates_for(model))
    # an evaluation of another version or another set does not count
    log_eval(model, "2", {"exact_match": 1.0, "safety.leak_rate": 0.0})
    log_eval(model, "1", {"exact_match": 1.0, "safety.leak_rate": 0.0}, eval_set="other")
    with pytest.raises(PromotionRefused, match="no evaluation run"):
        promote(model, "1", gates=gates_for(model))


def test_gate_refuses_below_threshold_and_names_each_failure(model):
    from experiments import PromotionRefused, get_version, promote

    run_id = log_eval(model, "1", {"exact_match": 0.5, "safety.leak_rate": 0.25})
    with pytest.raises(PromotionRefused) as e:
        promote(model, "1", gates=gates_for(model))
    msg = str(e.value)
    assert run_id in msg and "exact_match 0.5 < min 0.9" in msg and "safety.leak_rate 0.25 > max 0" in msg
    # a missing metric fails too
    log_eval(model, "1", {"exact_match": 1.0})
    with pytest.raises(PromotionRefused, match="safety.leak_rate not measured"):
        promote(model, "1", gates=gates_for(model))
    with pytest.raises(Exception, match="not found"):
        get_version(f"{model}@production")


def test_gate_uses_the_latest_evaluation(model):
    from experiments import PromotionRefused, promote

    log_eval(model, "1", {"exact_match": 1.0, "safety.leak_rate": 0.0})
    log_eval(model, "1", {"exact_match": 0.1, "safety.leak_rate": 0.0})
    with pytest.raises(PromotionRefused, match="exact_match 0.1 < min"):
        promote(model, "1", gates=gates_for(model))
    passing = log_eval(model, "1", {"exact_match": 0.95, "safety.leak_rate": 0.0})
    p = promote(model, "1", gates=gates_for(model))
    assert (p.version, p.previous, p.forced, p.eval_runs) == ("1", None, False, (passing,))


def test_production_needs_a_configured_gate_other_aliases_do_not(model):
    from experiments import PromotionRefused, get_version, promote

    with pytest.raises(PromotionRefused, match="no promotion gate is configured"):
        promote(model, "1", gates=[])
    assert promote(model, "1", alias="staging", gates=[]).eval_runs == ()
    assert str(get_version(f"{model}@staging").version) == "1"
    # a gate can guard other aliases too
    with pytest.raises(PromotionRefused, match="no evaluation run"):
        promote(model, "2", alias="candidate", gates=gates_for(model, ["candidate"]))


def test_force_needs_a_reason_which_is_recorded(model):
    from experiments import PromotionRefused, get_version, promote, promotion_log

    with pytest.raises(PromotionRefused, match="--force needs --reason"):
        promote(model, "2", force=True, gates=gates_for(model))
    with pytest.raises(PromotionRefused, match="--force needs --reason"):
        promote(model, "2", force=True, reason="  ", gates=gates_for(model))
    p = promote(model, "2", force=True, reason="hotfix for incident 42", gates=gates_for(model))
    assert p.forced and p.reason == "hotfix for incident 42"
    mv = get_version(f"{model}@production")
    assert str(mv.version) == "2"
    forced = json.loads(mv.tags["sekisho.forced.production"])
    assert forced["reason"] == "hotfix for incident 42" and forced["by"] and forced["at"]
    last = promotion_log(model)[-1]
    assert last["action"] == "promote" and last["forced"] and last["reason"] == "hotfix for incident 42"


def test_rollback_walks_back_through_the_alias_history(model):
    from experiments import (
        PromotionRefused,
        alias_history,
        get_version,
        promote,
        rollback,
        set_alias,
    )
    from foundation import UserError

    for v in ("1", "2"):
        log_eval(model, v, {"exact_match": 1.0, "safety.leak_rate": 0.0})
        promote(model, v, gates=gates_for(model))
    set_alias(model, "production", "3")  # moved outside promote: still remembered
    log_eval(model, "1", {"exact_match": 1.0, "safety.leak_rate": 0.0})
    promote(model, "1", gates=gates_for(model))
    assert alias_history(model, "production") == ["1", "2", "3", "1"]

    steps = [rollback(model) for _ in range(3)]
    assert [(s.previous, s.version) for s in steps] == [("1", "3"), ("3", "2"), ("2", "1")]
    assert str(get_version(f"{model}@production").version) == "1"
    assert alias_history(model, "production") == ["1"]
    with pytest.raises(UserError, match="nothing to roll back to"):
        rollback(model)
    with pytest.raises(UserError, match="nothing to roll back to"):
        rollback(model, "never-set")
    with pytest.raises(Exception, match="not found"):
        rollback("no-such-model")
    assert issubclass(PromotionRefused, UserError)


def test_cli_promote_rollback_and_show(model, tmp_path, capsys):
    from sekisho.cli import main

    gates = tmp_path / "eval"
    gates.mkdir()
    (gates / "set.jsonl").write_text('{"prompt": "q", "reference": "a"}\n')
    (gates / "unit.yaml").write_text(
        f"# Used by: sekisho eval run (tests)\nname: unit\ndataset: set.jsonl\n"
        f"gate:\n  models: [{model}]\n  thresholds:\n    exact_match: {{min: 0.9}}\n"
    )
    log_eval(model, "1", {"exact_match": 1.0})
    log_eval(model, "2", {"exact_match": 0.0})
    assert main(["models", "promote", model, "1", "--gates", str(gates)]) == 0
    assert "gate passed by eval run" in capsys.readouterr().out

    assert main(["models", "promote", model, "2", "--gates", str(gates)]) == 2
    err = capsys.readouterr().err
    assert "exact_match 0 < min 0.9" in err and "--force --reason" in err and "\n" not in err.strip()

    assert (
        main(
            [
                "models",
                "promote",
                model,
                "2",
                "--gates",
                str(gates),
                "--force",
                "--reason",
                "known regression accepted",
            ]
        )
        == 0
    )
    assert "forced: known regression accepted" in capsys.readouterr().out

    assert main(["models", "show", model]) == 0
    out = capsys.readouterr().out
    assert f"{model} version 3" in out and "content_sha256:" in out and "kind: adapter" in out
    assert "alias production -> v2; history: v1 -> v2" in out and "known regression accepted" in out

    assert main(["models", "rollback", model]) == 0
    assert f"{model}@production -> version 1 (rolled back from 2)" in capsys.readouterr().out
    assert main(["models", "show", f"{model}/2"]) == 0
    out = capsys.readouterr().out
    assert "evaluation unit: run" in out and "forced to production" in out
    assert "alias production -> v1; history: v1" in out
    assert main(["models", "rollback", model]) == 2
    assert "nothing to roll back to" in capsys.readouterr().err


WORKERS = 8


def run_together(pool, ctx, calls: list[tuple]) -> list[tuple]:
    """Run `promote_or_rollback(*call)` for each call in its own process, all released at once."""
    from promoter import promote_or_rollback

    go = ctx.Manager().Barrier(len(calls))
    futures = [pool.submit(promote_or_rollback, *call, go) for call in calls]
    return [f.result(timeout=600) for f in futures]


def test_concurrent_promotions_and_rollbacks_lose_no_history(registry_store, tmp_path, monkeypatch):
    """8 processes promote 8 versions of one model at the same moment (half through the
    gate, half forced): the alias history holds all 8 in one order that agrees with
    the alias and with what each promotion reports as its previous version; then 3
    concurrent rollbacks take exactly 3 steps back, and single rollbacks walk the rest."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from experiments import (
        alias_history,
        get_version,
        promotion_log,
        register_folder,
        rollback,
    )
    from foundation import UserError

    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # `spawn` children start with this sys.path
    name = f"race-{uuid.uuid4().hex[:8]}"
    for i in range(WORKERS):
        folder = tmp_path / f"v{i}"
        folder.mkdir()
        (folder / "adapter_config.json").write_text(json.dumps({"i": i}))
        register_folder(name, folder, kind="adapter")
    versions = [str(i + 1) for i in range(WORKERS)]
    for v in versions[::2]:
        log_eval(name, v, {"exact_match": 1.0, "safety.leak_rate": 0.0})
    gates = gates_for(name)

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(WORKERS, mp_context=ctx) as pool:
        done = run_together(
            pool,
            ctx,
            [(name, v, None if i % 2 == 0 else f"worker {i}", gates) for i, v in enumerate(versions)],
        )
        history = alias_history(name, "production")
        assert sorted(history, key=int) == versions
        assert str(get_version(f"{name}@production").version) == history[-1]
        # each promotion's `previous` is the entry before it in the history
        assert sorted(done) == sorted(zip(history, [None, *history[:-1]]))
        log = promotion_log(name)
        assert [e["version"] for e in log] == history
        assert sorted(e["reason"] for e in log if e["forced"]) == [
            f"worker {i}" for i in range(1, WORKERS, 2)
        ]

        undone = run_together(pool, ctx, [(name, None, None, None)] * 3)
    assert alias_history(name, "production") == history[:-3]
    assert str(get_version(f"{name}@production").version) == history[-4]
    assert sorted(undone) == sorted(zip(history[-4:-1], history[-3:]))
    for k in range(WORKERS - 4):
        p = rollback(name)
        assert (p.previous, p.version) == (history[-4 - k], history[-5 - k])
    assert str(get_version(f"{name}@production").version) == history[0]
    with pytest.raises(UserError, match="nothing to roll back to"):
        rollback(name)
    assert len(promotion_log(name)) == WORKERS + 3 + WORKERS - 4


def test_a_writer_stalled_before_its_write_cannot_reorder_a_returned_promotion(model, monkeypatch):
    """A promotion that stamps its record key and then stalls (a loaded machine) must not
    land before a promotion that started after it and has already returned: what each
    reports as its previous version stays what the history says. The stall is injected:
    the slow writer waits (3 s at most) for the other promotion to return before it
    writes; under the store's writer lock the other cannot return first, so it waits
    its turn and records after the slow one."""
    import threading

    import mlflow

    from experiments import alias_history, promote, promotion_log

    promote(model, "1", force=True, reason="start")
    write = mlflow.MlflowClient.set_registered_model_tag
    stamped, fast_returned = threading.Event(), threading.Event()

    def stalling_write(self, name, key, value):
        if '"reason": "slow"' in value:
            stamped.set()
            fast_returned.wait(3)
        return write(self, name, key, value)

    monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_tag", stalling_write)
    reported = {}

    def run(version: str, reason: str) -> None:
        reported[version] = promote(model, version, force=True, reason=reason).previous
        if reason == "fast":
            fast_returned.set()

    slow = threading.Thread(target=run, args=("3", "slow"))
    slow.start()
    assert stamped.wait(60), "the slow promotion never reached its write"
    fast = threading.Thread(target=run, args=("2", "fast"))
    fast.start()
    slow.join(120)
    fast.join(120)
    assert set(reported) == {"2", "3"}, reported

    history = alias_history(model, "production")
    assert history == ["1", "3", "2"]
    assert reported == {"3": "1", "2": "3"}
    assert [(e["version"], e["previous"]) for e in promotion_log(model)][-2:] == [("3", "1"), ("2", "3")]
