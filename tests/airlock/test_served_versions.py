"""Serve and training load only versions with a valid store record: a training
export goes through the store like an import; a version registered straight
through MLflow, or whose record was edited or belongs to other content, is
refused with what to do."""

from __future__ import annotations

import json
import shutil

import pytest

from airlock import (
    ModelImportRefused,
    ModelNotInStoreError,
    load,
    register_trained,
    store_root,
    verify_all_bytes,
)
from experiments import ModelIntegrityError, dir_sha256, get_version, resolve


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    """A PEFT LoRA adapter of the tiny model, as training exports it (safetensors,
    adapter_config.json and PEFT's README)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    peft = get_peft_model(
        model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    peft.save_pretrained(str(out), safe_serialization=True)
    return out


@pytest.fixture
def own_adapter(adapter_dir, tmp_path):
    """A copy of the adapter with content of its own (no other test shares its store copy)."""
    folder = shutil.copytree(adapter_dir, tmp_path / "adapter")
    (folder / "notes.txt").write_text(f"exported for {tmp_path.name}\n")
    return folder


def _register_through_mlflow(name, folder, tags):
    """What anyone with write access to the registry can do: log files, register them."""
    import mlflow
    from mlflow import MlflowClient

    from experiments import use_store

    use_store()
    client = MlflowClient()
    with mlflow.start_run(run_name=f"direct-{name}") as run:
        client.log_artifacts(run.info.run_id, str(folder), "adapter")
    client.create_registered_model(name, tags={"kind": "adapter"})
    mv = client.create_model_version(
        name, source=f"runs:/{run.info.run_id}/adapter", run_id=run.info.run_id, tags=tags
    )
    return f"{name}/{mv.version}"


def test_version_registered_straight_through_mlflow_is_refused(sekisho_home, own_adapter):
    ref = _register_through_mlflow(
        "direct-adapter", own_adapter, {"kind": "adapter", "content_sha256": dir_sha256(own_adapter)}
    )
    assert resolve(ref).sha256 == dir_sha256(own_adapter)  # its own hash tag is right
    with pytest.raises(ModelNotInStoreError) as exc:
        load(ref)
    msg = str(exc.value)
    assert msg.startswith(f"{ref}: not in the model store")
    assert "`sekisho models import`" in msg and "re-run the training job" in msg


def test_training_export_is_stored_registered_and_loads(sekisho_home, own_adapter, capsys):
    import mlflow

    from sekisho.cli import main

    stored = register_trained(
        "trained-adapter", own_adapter, kind="adapter", tags={"base_model_version": "tiny-base/1"}
    )
    ref = stored.ref
    tags = get_version(ref).tags
    assert tags["kind"] == "adapter" and tags["base_model_version"] == "tiny-base/1"
    assert tags["store_path"] == str(stored.path) == str(store_root() / "sha256" / tags["content_sha256"])
    assert tags["content_sha256"] == dir_sha256(stored.path)
    assert sorted(p.name for p in stored.path.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "notes.txt",
    ]  # PEFT's README stays out of the store, as an import's documents do
    assert stored.source["kind"] == "training" and stored.origin.startswith("training export (run ")

    loaded = load(ref)
    assert loaded.path == stored.path and loaded.sha256 == tags["content_sha256"]
    assert verify_all_bytes(ref).source == stored.source
    # Researchers still download the files from the run's artifacts.
    downloaded = mlflow.artifacts.download_artifacts(f"runs:/{stored.source['run_id']}/model")
    assert dir_sha256(downloaded) == tags["content_sha256"]
    assert main(["models", "verify", ref]) == 0
    out = capsys.readouterr().out
    assert f"{ref}: OK, 3 files" in out
    assert f"store record from training export (run {stored.source['run_id']})" in out


def test_checked_copy_for_an_engine_cache(sekisho_home, own_adapter, tmp_path):
    ref = register_trained("cached-adapter", own_adapter, kind="adapter").ref
    cache = tmp_path / "cache" / "tiny-ja--v1"
    copied = load(ref, copy_to=cache)
    assert copied.path == cache and dir_sha256(cache) == copied.sha256
    assert load(ref, copy_to=cache).path == cache  # an earlier copy, checked and kept
    (cache / "notes.txt").write_text("changed in the cache\n")
    with pytest.raises(ModelIntegrityError, match=r"notes.txt: its SHA-256 changed"):
        load(ref, copy_to=cache)


def test_the_same_export_twice_keeps_both_versions_loadable(sekisho_home, own_adapter):
    first = register_trained("twice-adapter", own_adapter, kind="adapter")
    second = register_trained("twice-adapter", own_adapter, kind="adapter")
    assert first.path == second.path and first.version != second.version
    assert load(first.ref).sha256 == load(second.ref).sha256


def test_export_whose_record_was_edited_is_refused(sekisho_home, own_adapter):
    stored = register_trained("edited-adapter", own_adapter, kind="adapter")
    record = store_root() / "records" / f"{stored.content_sha256}.json"
    record.chmod(0o644)
    edited = json.loads(record.read_text())
    edited["source"]["run_id"] = "another-run"
    record.write_text(json.dumps(edited, sort_keys=True, indent=1))
    with pytest.raises(ModelNotInStoreError, match=rf"{stored.ref} was changed after it was stored"):
        load(stored.ref)


def test_tags_claiming_another_models_record_are_refused(sekisho_home, own_adapter, adapter_dir, tmp_path):
    genuine = register_trained("genuine-adapter", own_adapter, kind="adapter")
    genuine_tags = get_version(genuine.ref).tags
    forged = shutil.copytree(adapter_dir, tmp_path / "forged")
    (forged / "notes.txt").write_text("weights nobody checked\n")
    ref = _register_through_mlflow(
        "forged-adapter",
        forged,
        {
            "kind": "adapter",
            "content_sha256": dir_sha256(forged),
            "import_record_sha256": genuine_tags["import_record_sha256"],
            "store_path": genuine_tags["store_path"],
        },
    )
    with pytest.raises(ModelNotInStoreError, match=rf"{ref}: its store copy .* is missing"):
        load(ref)


def test_export_with_a_pickle_or_without_adapter_config_is_refused(own_adapter, nothing_left):
    (own_adapter / "optimizer.pt").write_bytes(b"\x80\x04N.")
    with pytest.raises(ModelImportRefused, match=r"optimizer.pt: refused: .pt is a pickle format"):
        register_trained("refused-adapter", own_adapter, kind="adapter")
    (own_adapter / "optimizer.pt").unlink()
    (own_adapter / "adapter_config.json").unlink()
    with pytest.raises(ModelImportRefused, match=r"no adapter_config.json"):
        register_trained("refused-adapter", own_adapter, kind="adapter")
    nothing_left("refused-adapter")
