"""The main job end to end on embedded defaults: real Ray (Train + Serve), real
vLLM, real MLflow store, the official openai client. Runs once per session; the
whole suite runs in a loopback-only network namespace (see conftest)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def test_fine_tuned_answers_and_base_does_not(main_job):
    assert main_job.total == 30
    assert main_job.fine_tuned_matched / main_job.total >= 0.9, main_job.rows
    assert main_job.base_matched / main_job.total <= 0.1


def test_mlflow_run_has_config_metrics_and_lineage(main_job):
    from mlflow import MlflowClient

    client = MlflowClient()
    run = client.get_run(main_job.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["lora.r"] == "16" and run.data.params["optim.steps"] == "400"
    losses = client.get_metric_history(main_job.run_id, "loss")
    steps = [m.step for m in losses]
    assert steps == list(range(10, 401, 10))
    assert losses[-1].value < 0.2 < losses[0].value
    assert all(m.value > 0 for m in client.get_metric_history(main_job.run_id, "tokens_per_s"))
    assert run.data.tags["sekisho.base_model_version"] == f"sekisho-tiny-base/{main_job.base_version}"
    artifacts = {a.path for a in client.list_artifacts(main_job.run_id, "config")}
    assert artifacts == {"config/resolved.json", "config/job.yaml"}
    assert run.inputs.dataset_inputs[0].dataset.name == "demo_ja"


def test_registered_versions_and_aliases(main_job):
    from experiments import get_version

    adapter = get_version("demo-ja-adapter@production")
    assert str(adapter.version) == main_job.adapter_version and adapter.run_id == main_job.run_id
    assert adapter.tags["kind"] == "adapter"
    assert adapter.tags["base_model_version"] == f"sekisho-tiny-base/{main_job.base_version}"
    for key in ("dataset_version", "dataset_sha256", "config_sha256", "content_sha256"):
        assert adapter.tags[key]
    base = get_version("sekisho-tiny-base@production")
    assert str(base.version) == main_job.base_version and base.tags["kind"] == "base"


def test_served_model_list(main_job):
    from openai import OpenAI

    client = OpenAI(base_url=main_job.base_url, api_key=main_job.api_key, max_retries=0)
    assert sorted(m.id for m in client.models.list().data) == ["tiny-base", "tiny-ja"]
    assert httpx.get(main_job.base_url.removesuffix("/v1") + "/health").status_code == 200


def test_served_adapter_files_are_the_registered_version(main_job):
    """vLLM reports where it loaded the adapter from; those files hash to the
    content hash recorded in the registry for the `production` version."""
    from ray import serve

    from experiments import dir_sha256, get_version

    engine = serve.get_deployment_handle("engine-tiny-base", app_name="demo")
    engine_url = engine.url.remote().result()
    key = engine.api_key.remote().result()
    assert httpx.get(engine_url + "/v1/models").status_code == 401, "engines answer only the gateway"
    listed = {
        m["id"]: m
        for m in httpx.get(engine_url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).json()[
            "data"
        ]
    }
    version = get_version("demo-ja-adapter@production").version
    served_path = Path(listed[f"tiny-ja--v{version}"]["root"])
    registered = get_version("demo-ja-adapter@production").tags["content_sha256"]
    assert dir_sha256(served_path) == registered


def test_openai_errors_for_unknown_model_and_bad_body(main_job):
    import openai

    client = openai.OpenAI(base_url=main_job.base_url, api_key=main_job.api_key, max_retries=0)
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "q"}])
    assert e.value.body["code"] == "model_not_found"
    r = httpx.post(
        main_job.base_url + "/chat/completions",
        content=b"{oops",
        headers={"Authorization": f"Bearer {main_job.api_key}"},
    )
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]


def test_streaming_through_the_gateway(main_job, qa):
    from openai import OpenAI

    client = OpenAI(base_url=main_job.base_url, api_key=main_job.api_key, max_retries=0)
    question, expected = qa[0]
    stream = client.chat.completions.create(
        model="tiny-ja",
        messages=[{"role": "user", "content": question}],
        temperature=0,
        max_tokens=96,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == expected
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_corrupted_adapter_is_refused_before_deploy(main_job, sekisho_home):
    """A changed byte in the store copy Serve loads the production adapter from
    (same size, valid header): the app is refused before anything deploys."""
    from experiments import ModelIntegrityError, get_version
    from serve import ServeAppConfig, resolve_app

    mv = get_version("demo-ja-adapter@production")
    weights = Path(mv.tags["store_path"]) / "adapter_model.safetensors"
    original = weights.read_bytes()
    weights.parent.chmod(0o755)
    weights.chmod(0o644)
    try:
        weights.write_bytes(original[:-64] + bytes(64))  # same size, valid header, changed weights
        cfg = ServeAppConfig.from_yaml(REPO / "configs" / "serve" / "demo.yaml")
        with pytest.raises(
            ModelIntegrityError,
            match=r"adapter_model.safetensors: bytes .* changed since demo-ja-adapter/\d+ was stored; "
            "refusing to load it",
        ):
            resolve_app(cfg, sekisho_home / "corrupt-check")
    finally:
        weights.write_bytes(original)
        weights.chmod(0o444)
        weights.parent.chmod(0o555)


def test_alias_on_an_untrained_adapter_answers_like_the_base(main_job, sekisho_home, tiny_model_dir, qa):
    """Skipping training (an adapter registered straight from its initialisation)
    and moving an alias to it: N drops to the base model's level, while the
    production alias in the same engine still answers."""
    from airlock import load, register_trained
    from experiments import set_alias
    from sekisho.demo import ask_all
    from serve import AdapterSpec, ServeAppConfig, deploy, resolve_app
    from train import LoraJobConfig, LoraRecipe

    job = LoraJobConfig.from_yaml(REPO / "configs" / "train" / "demo_lora.yaml")
    base = load("sekisho-tiny-base@production")
    recipe = LoraRecipe(job)
    recipe.setup(base.path, sekisho_home / "jobs" / job.name / "data" / "tokens.parquet")
    untrained = recipe.save(sekisho_home / "untrained-adapter")
    version = register_trained(
        "demo-ja-adapter",
        untrained,
        kind="adapter",
        tags={"base_model_version": base.ref, "note": "untrained"},
    ).version
    set_alias("demo-ja-adapter", "candidate", version)

    cfg = ServeAppConfig.from_yaml(REPO / "configs" / "serve" / "demo.yaml")
    model = cfg.models[0]
    model = model.model_copy(
        update={
            "adapters": model.adapters
            + [AdapterSpec(name="tiny-ja-untrained", source="registry:demo-ja-adapter@candidate")]
        }
    )
    cfg = cfg.model_copy(
        update={"models": [model], "port": int(main_job.base_url.split(":")[2].split("/")[0])}
    )
    deploy(resolve_app(cfg, sekisho_home / "serve-cache-2"))

    untrained_cfg = cfg.model_copy(
        update={"models": [model.model_copy(update={"adapters": [model.adapters[1]]})]}
    )
    from serve.gateway import KeyStore

    key = KeyStore().create("untrained-check", ["tiny-base", "tiny-ja", "tiny-ja-untrained"])
    r = ask_all(main_job.base_url, untrained_cfg, qa, key)
    assert r.fine_tuned_matched / r.total <= 0.1, "an untrained adapter must not know the answers"
    r = ask_all(main_job.base_url, cfg, qa[:10], key)
    assert r.fine_tuned_matched >= 9, "production alias still serves the trained version"
