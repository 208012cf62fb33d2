"""Merge a LoRA adapter version into its base model: one set of full weights that
serves without LoRA (no adapter slots, no per-request LoRA kernels).

Both versions are loaded from the model store, checked against their records
(`airlock.load`); PEFT folds the adapter into the base's linear layers
(`merge_and_unload`, with `safe_merge` refusing weights that turn NaN); the result
is saved as safetensors with the base's tokenizer and chat template, stored with a
record whose source says it is a merge (`airlock.register_trained(source=...)`)
and registered as a new version of the base model's name, with its lineage: the
adapter version, the base version and the adapter's dataset.

The merge runs in this process on the CPU, in the base's dtype: the whole base is
held in host memory once (about 2 bytes a parameter in bf16: 16 GB for an 8B
model), which a GPU node's host memory holds for any model it trains.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from airlock import StoredModel, load, register_trained
from experiments import tracking_uri, use_store
from foundation import UserError, sekisho_home

# The adapter's own lineage that the merged weights inherit as they are.
INHERITED_TAGS = ("dataset", "dataset_version", "dataset_sha256", "config_sha256", "git_commit")
MERGE_METHOD = "peft merge_and_unload (safe_merge)"


@dataclass(frozen=True)
class MergeResult:
    """The stored, registered merged version and the MLflow run that made it."""

    stored: StoredModel
    run_id: str
    adapter_ref: str
    base_ref: str


def merge_adapter(base_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the base with the adapter merged in (safetensors, the base's dtype) and
    the base's tokenizer and chat template to `out_dir`.

    Raises:
        UserError: the adapter does not fit the base (PEFT's own message).
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(out_dir)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype="auto")
    try:
        peft_model = PeftModel.from_pretrained(base, str(adapter_dir))
    except (ValueError, RuntimeError, KeyError) as exc:
        raise UserError(f"{adapter_dir}: the adapter does not load onto the base {base_dir}: {exc}") from None
    with torch.no_grad():
        merged = peft_model.merge_and_unload(safe_merge=True)
    merged.save_pretrained(str(out), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(base_dir)).save_pretrained(str(out))
    return out


def export_merged(adapter_ref: str, register_as: str | None = None) -> MergeResult:
    """Merge a registered adapter version into the base version it was trained on
    and register the result (module doc).

    Args:
        adapter_ref: the adapter, `name/version` or `name@alias`.
        register_as: registered name of the merged version (default: the base's name,
            so the merge becomes the base model's next version).

    Raises:
        UserError: the version is not a LoRA adapter, or names no base version.
        ModelNotFoundError, ModelNotInStoreError, ModelIntegrityError: from loading
            either version out of the store.
    """
    adapter = load(adapter_ref)
    kind = adapter.tags.get("kind")
    if kind != "adapter":
        raise UserError(
            f"{adapter.ref}: not a LoRA adapter (kind={kind}); only adapter versions are merged "
            f"into a base (`sekisho models show {adapter.ref}` shows its kind)."
        )
    base_ref = adapter.tags.get("base_model_version")
    if not base_ref:
        raise UserError(
            f"{adapter.ref}: has no base_model_version tag, so the base it was trained on is unknown."
        )
    base = load(base_ref)
    name = register_as or base.name
    run_id = _start_run(adapter.ref, base.ref, name)
    scratch = sekisho_home() / "exports"
    scratch.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="merge-", dir=scratch))
    try:
        merged = merge_adapter(base.path, adapter.path, work / "model")
        stored = register_trained(
            name,
            merged,
            kind="merged",
            run_id=run_id,
            artifact_path="model",
            tags={
                **{k: adapter.tags[k] for k in INHERITED_TAGS if k in adapter.tags},
                "base_model_version": base.ref,
                "base_model_sha256": base.sha256,
                "merged_adapter_version": adapter.ref,
                "merged_adapter_sha256": adapter.sha256,
                "merge": MERGE_METHOD,
            },
            source={
                "kind": "merge",
                "run_id": run_id,
                "adapter": adapter.ref,
                "adapter_sha256": adapter.sha256,
                "base": base.ref,
                "base_sha256": base.sha256,
                "method": MERGE_METHOD,
            },
        )
    except BaseException:
        _end_run(run_id, "FAILED")
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _end_run(run_id, "FINISHED")
    return MergeResult(stored, run_id, adapter.ref, base.ref)


def _start_run(adapter_ref: str, base_ref: str, name: str) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri())
    run = client.create_run(
        use_store(),
        run_name=f"merge-{adapter_ref.replace('/', '-v')}",
        tags={"sekisho.merged_adapter_version": adapter_ref, "sekisho.base_model_version": base_ref},
    )
    for key, value in {"adapter": adapter_ref, "base": base_ref, "register_as": name}.items():
        client.log_param(run.info.run_id, key, value)
    return run.info.run_id


def _end_run(run_id: str, status: str) -> None:
    from mlflow import MlflowClient

    MlflowClient(tracking_uri()).set_terminated(run_id, status)
