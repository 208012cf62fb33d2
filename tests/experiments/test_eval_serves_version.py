"""`sekisho eval run` without --base-url, on the real main job: a second adapter
version, registered but not promoted, is served just for its evaluation (on the
base version its lineage names), evaluated through a temporary gateway key, and
the temporary app and key are gone afterwards. The evaluation run in MLflow is
linked to that exact version, and its answers are that version's."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
DEMO_EVAL = REPO / "configs" / "eval" / "demo_ja.yaml"
V2_PREFIX = "評価版-"  # NFKC-stable: data preparation normalises text


@pytest.fixture(scope="module")
def unpromoted_adapter(main_job, train_prefixed_adapter) -> str:
    """A second demo-ja-adapter version whose answers all start with V2_PREFIX,
    registered with its lineage and given no alias."""
    return train_prefixed_adapter(
        "eval-v2", V2_PREFIX, f"sekisho-tiny-base/{main_job.base_version}", "not promoted: eval serves it"
    )


def test_eval_serves_an_unpromoted_version_for_its_duration(main_job, unpromoted_adapter, capsys):
    from mlflow import MlflowClient
    from ray import serve

    from experiments import get_version
    from experiments.evaluation import TAG_MODEL_VERSION
    from sekisho.cli import main
    from serve.gateway import KeyStore

    version = f"demo-ja-adapter/{unpromoted_adapter}"
    production = str(get_version("demo-ja-adapter@production").version)
    assert production != str(unpromoted_adapter)
    apps_before = set(serve.status().applications)

    started = time.time()
    rc = main(["eval", "run", str(DEMO_EVAL), "--model", version])
    finished = time.time()
    out = capsys.readouterr().out
    print(out)
    assert rc == 0, out
    served = re.search(
        rf"serving {re.escape(version)} on sekisho-tiny-base/{main_job.base_version} "
        r"as 'demo-ja-adapter' at (\S+) \(temporary app (eval-[0-9a-f]+), key (\S+)\)",
        out,
    )
    assert served, out
    base_url, app_name, key_name = served.groups()
    assert base_url != main_job.base_url

    # The evaluation run, linked to the exact version, with its metrics.
    run_id = get_version(version).tags["sekisho.eval.demo_ja"]
    assert f"run {run_id}" in out
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[TAG_MODEL_VERSION] == version
    assert run.data.tags["sekisho.eval.served_as"] == "demo-ja-adapter"
    assert run.data.tags["sekisho.eval.base_url"] == base_url
    m = run.data.metrics
    assert {
        "exact_match",
        "chrf",
        "rouge_l",
        "latency_p50_s",
        "latency_p95_s",
        "safety.refusal_rate",
        "safety.leak_rate",
    } <= set(m)
    assert 0 < m["latency_p50_s"] <= m["latency_p95_s"]

    # The answers are that version's (trained to prefix every answer), not production's.
    answers = Path(MlflowClient().download_artifacts(run_id, "eval/answers.json"))
    quality = [r for r in json.loads(answers.read_text(encoding="utf-8"))["rows"] if "reference" in r]
    prefixed = sum(r["answer"].startswith(V2_PREFIX) for r in quality)
    assert prefixed >= len(quality) * 0.8, [r["answer"] for r in quality[:5]]
    assert m["exact_match"] <= 0.2  # the references carry no prefix

    # Torn down: the temporary app is gone, its key revoked, nothing else touched.
    apps_after = serve.status().applications
    assert app_name not in apps_after and set(apps_after) == apps_before
    # The app's only replica had no other listener on its port to hand clients to:
    # its gateway closed at once instead of draining (serve.gateway.embedded).
    from serve.vllm_process import engine_logs_dir

    drains = [
        line for log in engine_logs_dir(app_name).glob("*.log") for line in log.read_text().splitlines()
    ]
    drains = [line.split("draining for ")[1] for line in drains if "gateway draining for" in line]
    assert drains == ["0.0s"], drains
    key = next(k for k in KeyStore().list() if k.name == key_name)
    assert key.models == ("demo-ja-adapter",)
    assert key.revoked_at is not None and not key.usable()
    assert started + 2 * 3600 <= key.expires_at <= finished + 2 * 3600  # made after the deploy
    assert started <= key.revoked_at <= finished
    assert str(get_version("demo-ja-adapter@production").version) == production
    assert main_job.api_key  # the demo app still answers with production
    from openai import OpenAI

    r = OpenAI(base_url=main_job.base_url, api_key=main_job.api_key, max_retries=0).chat.completions.create(
        model="tiny-ja",
        temperature=0,
        max_tokens=32,
        messages=[{"role": "user", "content": quality[0]["prompt"]}],
    )
    assert not (r.choices[0].message.content or "").startswith(V2_PREFIX)


def test_eval_without_base_url_refuses_an_unknown_version(main_job, capsys):
    from sekisho.cli import main

    assert main(["eval", "run", str(DEMO_EVAL), "--model", "demo-ja-adapter/999"]) == 2
    err = capsys.readouterr().err
    assert "demo-ja-adapter/999" in err and "Traceback" not in err
