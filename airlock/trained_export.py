"""Bring a training job's output into the model store: check it, copy it in with a
record that names the run it came from, and register it as an adapter or merged
version. A LoRA adapter merged into its base (`sekisho models export --merge`)
comes in the same way, its record's source naming the merge.

A trained folder is checked like an import, where the checks apply: only
safetensors and plain data files (no pickle, no code, no symlinks), every JSON
free of remote-code keys, every safetensors header sound; a merged model also
needs what serving it as a base needs (tokenizer, chat template, an architecture
vLLM implements). One pass copies and hashes the files into the store's staging
folder and the checks run again on the copy, so the bytes checked are the bytes
stored. Serve loads only versions whose store copy matches such a record
(`airlock.load`); the files are also logged as the run's artifacts, where
researchers download them from MLflow.
"""

from __future__ import annotations

import json
from pathlib import Path

from airlock.errors import ModelImportRefused
from airlock.file_hashes import TreeHashes, hash_tree
from airlock.model_file_policy import check_file_content, select_files
from airlock.model_import import ImportPolicy, check_model_folder
from airlock.model_store import commit, discard, file_record, record_bytes, staging_dir, store_root
from airlock.model_verify import StoredModel, verify_store_copy
from airlock.safetensors_check import read_header
from experiments import tracking

KINDS = ("adapter", "merged")
ADAPTER_CONFIG = "adapter_config.json"


def check_trained_folder(folder: Path, files: list[Path], kind: str) -> None:
    """Every content check on a trained folder whose names passed the policy.

    Raises:
        ModelImportRefused: naming the file and the reason.
    """
    if kind == "merged":
        check_model_folder(folder, files, ImportPolicy())
        return
    if not any(f.suffix == ".safetensors" for f in files):
        raise ModelImportRefused(f"{folder}: refused: no .safetensors weights.")
    if not (folder / ADAPTER_CONFIG).is_file():
        raise ModelImportRefused(f"{folder}: refused: no {ADAPTER_CONFIG}; vLLM cannot load the adapter.")
    for f in files:
        check_file_content(f)
        if f.suffix == ".safetensors":
            read_header(f)


def register_trained(
    name: str,
    folder: str | Path,
    kind: str,
    tags: dict[str, str] | None = None,
    run_id: str | None = None,
    artifact_path: str = "model",
    progress: bool | None = False,
    source: dict | None = None,
) -> StoredModel:
    """Check a training job's output, copy it into the model store with its record
    and register it as a new version of `name`.

    Args:
        name: registered model name.
        folder: the exported folder (a PEFT adapter, or merged full weights).
        kind: "adapter" or "merged"; recorded as a tag.
        tags: lineage tags for the version (base model version, dataset hash, ...).
        run_id: the training run; its artifacts get the files, and the record names
            it. A new run is made when None.
        artifact_path: where the files go among the run's artifacts.
        progress: progress bar while hashing; None means only on a terminal.
        source: how the files came to be, kept in the store record; default a
            training run's export ({"kind": "training", "run_id", "export"}). A
            merge of an adapter into its base (`train.merge`) passes {"kind":
            "merge", "run_id", "adapter", "base", ...}.

    Returns:
        The registered version and its store folder, checked.

    Raises:
        ModelImportRefused: naming the file and the reason; nothing is stored or registered.
    """
    if kind not in KINDS:
        raise ValueError(f"register_trained: kind must be one of {KINDS}, not {kind!r}")
    src = Path(folder).resolve()
    chosen = select_files(src)
    check_trained_folder(src, chosen.files, kind)
    run_id = run_id or _new_run(name)
    staged = staging_dir()
    try:
        hashes = hash_tree(src, chosen.files, copy_to=staged, progress=progress)
        try:
            check_trained_folder(staged, select_files(staged).files, kind)
        except ModelImportRefused as exc:  # the source changed while it was copied
            raise ModelImportRefused(str(exc).replace(str(staged), str(src))) from None
        made = source or {"kind": "training", "run_id": run_id, "export": kind}
        record = _record(staged, hashes, made)
        store_folder, record_sha = commit(staged, record)
    except BaseException:
        if staged.exists():
            discard(staged)
        raise
    all_tags = {
        **(tags or {}),
        "kind": kind,
        "content_sha256": hashes.content_sha256,
        "import_record_sha256": record_sha,
        "store_path": str(store_folder),
        "file_count": str(len(hashes.files)),
        "total_bytes": str(hashes.total_bytes),
    }
    version = _register(name, kind, store_folder, run_id, artifact_path, all_tags)
    return verify_store_copy(f"{name}/{version}")


def _record(staged: Path, hashes: TreeHashes, source: dict) -> dict:
    """The record for the copy; an existing record of the same content (same files,
    byte for byte) is kept as it is, so versions registered with it stay valid."""
    files = {rel: file_record(staged / rel, sha, hashes.sizes[rel]) for rel, sha in hashes.files.items()}
    existing = store_root() / "records" / f"{hashes.content_sha256}.json"
    if existing.is_file():
        data = existing.read_bytes()
        try:
            old = json.loads(data)
        except ValueError:
            old = None
        if (
            isinstance(old, dict)
            and old.get("files") == files
            and old.get("content_sha256") == hashes.content_sha256
            and record_bytes(old) == data
        ):
            return old
    return {"format": 1, "content_sha256": hashes.content_sha256, "files": files, "source": source}


def _new_run(name: str) -> str:
    import mlflow

    tracking.use_store()
    with mlflow.start_run(run_name=f"register-{name}") as run:
        return run.info.run_id


def _register(
    name: str, kind: str, store_folder: Path, run_id: str, artifact_path: str, tags: dict[str, str]
) -> str:
    """Log the stored files as the run's artifacts and create the version."""
    import mlflow
    from mlflow import MlflowClient

    tracking.use_store()
    client = MlflowClient()
    client.log_artifacts(run_id, str(store_folder), artifact_path)
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(name, tags={"kind": kind})
    mv = client.create_model_version(name, source=f"runs:/{run_id}/{artifact_path}", run_id=run_id, tags=tags)
    return str(mv.version)
