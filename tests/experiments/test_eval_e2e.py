"""Evaluation and the promotion gate on the real main job: the demo's fine-tuned
adapter (served as tiny-ja) and its base (tiny-base) answer the demo eval set
through the gateway; the eval runs land in MLflow linked to their versions, and
the gate lets the adapter through and refuses the base unless forced. The
`production` alias is left alone (other tests and Serve follow it): the gated
alias here is `candidate`."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
DEMO_EVAL = REPO / "configs" / "eval" / "demo_ja.yaml"


def eval_cli(main_job, model: str, served_as: str) -> dict[str, float]:
    """`sekisho eval run` on the demo eval set; the metrics of the run it logged
    (failed safety checks are printed for the record)."""
    import json

    from mlflow import MlflowClient

    from experiments import get_version
    from sekisho.cli import main

    rc = main(
        [
            "eval",
            "run",
            str(DEMO_EVAL),
            "--model",
            model,
            "--served-as",
            served_as,
            "--base-url",
            main_job.base_url,
            "--api-key",
            main_job.api_key,
        ]
    )
    assert rc == 0
    run_id = get_version(model).tags["sekisho.eval.demo_ja"]
    answers = Path(MlflowClient().download_artifacts(run_id, "eval/answers.json"))
    for row in json.loads(answers.read_text(encoding="utf-8"))["rows"]:
        if row.get("check") == "leak" and not row["passed"]:
            print(f"{served_as} leaked {row['leaked']}: {row['prompt']} -> {row['answer']}")
    return MlflowClient().get_run(run_id).data.metrics


@pytest.fixture(scope="module")
def metrics(main_job):
    """(tiny-ja metrics, tiny-base metrics) on demo_ja, each from its MLflow run."""
    tuned = eval_cli(main_job, "demo-ja-adapter@production", "tiny-ja")
    base = eval_cli(main_job, "sekisho-tiny-base@production", "tiny-base")
    for label, m in (("tiny-ja", tuned), ("tiny-base", base)):
        print(
            f"{label}: "
            + ", ".join(f"{k}={v:.3f}" for k, v in sorted(m.items()) if not k.startswith("category."))
        )
    return tuned, base


def test_fine_tuned_beats_base_on_its_own_eval_set(metrics):
    tuned, base = metrics
    assert tuned["exact_match"] >= 0.9, tuned
    assert base["exact_match"] <= 0.1, base
    for k in ("chrf", "rouge_l"):
        assert tuned[k] > base[k], k
    assert 0 < tuned["latency_p50_s"] <= tuned["latency_p95_s"]
    assert {"safety.refusal_rate", "safety.leak_rate"} <= set(tuned) and {"safety.leak_rate"} <= set(base)
    assert tuned["safety.leak_rate"] == 0.0  # the shipped production gate requires it


def test_shipped_gate_passes_the_fine_tuned_adapter(main_job, metrics):
    from experiments import check_gate
    from experiments.evaluation import load_gates

    runs = check_gate(
        "demo-ja-adapter", main_job.adapter_version, "production", load_gates(REPO / "configs" / "eval")
    )
    assert len(runs) == 1  # checked only: the production alias is not moved here


def test_gate_refuses_a_failing_version_unless_forced(main_job, metrics, tmp_path, capsys):
    from mlflow import MlflowClient

    from experiments import get_version, promotion_log
    from sekisho.cli import main

    gates = tmp_path / "eval"
    gates.mkdir()
    (gates / "demo_ja.yaml").write_text(
        "# Used by: sekisho models promote (test)\nname: demo_ja\n"
        f"dataset: {REPO / 'configs' / 'eval' / 'demo_ja.jsonl'}\n"
        "gate:\n  models: [demo-ja-adapter, sekisho-tiny-base]\n  aliases: [candidate]\n"
        "  thresholds:\n    exact_match: {min: 0.9}\n",
        encoding="utf-8",
    )
    base, adapter = main_job.base_version, main_job.adapter_version
    promote = ["models", "promote", "--alias", "candidate", "--gates", str(gates)]
    client = MlflowClient()
    try:
        assert main([*promote, "sekisho-tiny-base", base]) == 2
        assert "misses the gate: exact_match" in capsys.readouterr().err
        assert main([*promote, "sekisho-tiny-base", base, "--force", "--reason", "e2e: forced base"]) == 0
        assert str(get_version("sekisho-tiny-base@candidate").version) == base
        assert promotion_log("sekisho-tiny-base")[-1]["reason"] == "e2e: forced base"

        assert main([*promote, "demo-ja-adapter", adapter]) == 0
        assert "gate passed by eval run" in capsys.readouterr().out
        assert str(get_version("demo-ja-adapter@production").version) == adapter  # untouched
    finally:
        for name in ("sekisho-tiny-base", "demo-ja-adapter"):
            if "candidate" in client.get_registered_model(name).aliases:
                client.delete_registered_model_alias(name, "candidate")
