"""Bring an open model into the closed network: check it, copy it into the model
store and register it as a base-model version.

Order matters: the name policy runs first (nothing is copied past a pickle), then
every content check on the source (fast refusals), then one pass copies and hashes
the files into a staging folder in the store, the manifest is compared, and the
content checks run again on the copy, so the bytes that were checked are the bytes
that are stored. Any refusal removes the copy and registers nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field

from airlock.chat_template_check import check_chat_templates
from airlock.errors import ModelImportRefused
from airlock.file_hashes import (
    TreeHashes,
    check_manifest,
    check_manifest_names,
    hash_tree,
    read_manifest,
)
from airlock.model_file_policy import check_file_content, model_files, select_files
from airlock.model_store import (
    commit,
    discard,
    file_record,
    record_bytes,
    staging_dir,
)
from airlock.safetensors_check import MAX_HEADER_BYTES, read_header
from airlock.vllm_architectures import check_architecture
from experiments import tracking
from foundation import StrictConfig, UserError

TOKENIZER_FILES = [
    ("tokenizer.json",),
    ("tokenizer.model",),
    ("vocab.json", "merges.txt"),
    ("tokenizer.tiktoken",),
]
MAX_TAG_CHARS = 100_000  # MLflow's limit for a model version tag value


class ImportPolicy(StrictConfig):
    """Limits applied to a model at import."""

    max_chat_template_bytes: int = Field(
        64 * 1024, gt=0, description="Largest chat template accepted (UTF-8 bytes)."
    )
    chat_template_timeout_s: float = Field(
        5.0, gt=0, le=60, description="Longest a chat template may take to render the sample conversation."
    )
    max_safetensors_header_bytes: int = Field(
        MAX_HEADER_BYTES, gt=0, le=MAX_HEADER_BYTES, description="Largest safetensors header accepted."
    )


@dataclass(frozen=True)
class ImportedModel:
    """A model imported into the store and registered."""

    name: str
    version: str
    path: Path
    content_sha256: str
    architectures: list[str]
    hashes: TreeHashes
    documents: list[str] = field(default_factory=list)
    left_out: dict[str, str] = field(default_factory=dict)
    alias: str | None = None


def check_tokenizer(folder: Path) -> None:
    """Raises ModelImportRefused unless the folder holds a tokenizer vLLM can load."""
    if not any(all((folder / n).is_file() for n in names) for names in TOKENIZER_FILES):
        wanted = " or ".join("+".join(names) for names in TOKENIZER_FILES)
        raise ModelImportRefused(
            f"{folder}: refused: no tokenizer ({wanted}); vLLM cannot serve a model without one."
        )


def check_weight_index(folder: Path, weights: list[Path]) -> None:
    """A sharded model's index (*.safetensors.index.json) may only name shards in
    the folder, and every shard it names must hold the tensors it lists.

    Raises:
        ModelImportRefused: naming the index and the entry that is wrong.
    """
    shards = {w.relative_to(folder).as_posix(): w for w in weights}
    for index in sorted(folder.glob("*.safetensors.index.json")):
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ModelImportRefused(f"{index}: refused: no weight_map object.")
        names: dict[str, frozenset[str]] = {}
        for tensor, shard in sorted(weight_map.items()):
            if shard not in shards:
                raise ModelImportRefused(
                    f"{index}: refused: tensor {tensor!r} is mapped to "
                    f"{shard!r}, which is not a safetensors file in the folder."
                )
            if shard not in names:
                names[shard] = read_header(shards[shard]).names
            if tensor not in names[shard]:
                raise ModelImportRefused(f"{index}: refused: tensor {tensor!r} is not in {shard}.")


def check_model_folder(folder: Path, files: list[Path], policy: ImportPolicy) -> list[str]:
    """Every content check on a folder whose names passed the policy.

    Returns:
        The architectures from config.json.

    Raises:
        ModelImportRefused: naming the file and the reason.
    """
    weights = [f for f in files if f.suffix == ".safetensors"]
    if not weights:
        raise ModelImportRefused(f"{folder}: refused: no .safetensors weights.")
    for f in files:
        check_file_content(f)
    for f in weights:
        read_header(f, policy.max_safetensors_header_bytes)
    check_weight_index(folder, weights)
    check_tokenizer(folder)
    check_chat_templates(folder, policy.max_chat_template_bytes, policy.chat_template_timeout_s)
    return check_architecture(folder)


def _recheck_copy(staged: Path, src: Path, policy: ImportPolicy) -> None:
    try:
        check_model_folder(staged, model_files(staged), policy)
    except ModelImportRefused as exc:  # the source changed while it was copied
        raise ModelImportRefused(str(exc).replace(str(staged), str(src))) from None


def import_model(
    src: str | Path,
    name: str,
    manifest: str | Path | None = None,
    policy: ImportPolicy | None = None,
    progress: bool | None = None,
    exclude: tuple[str, ...] | list[str] = (),
    alias: str | None = None,
) -> ImportedModel:
    """Check a model folder, copy it into the store and register a base-model version.

    Args:
        src: the model folder as carried in (safetensors, configs, tokenizer), e.g.
            made by `hf download --local-dir` (its metadata and documents stay out
            of the store; the documents are kept with the import's run).
        name: registered model name.
        manifest: SHA256SUMS (sha256sum output) every stored file must match, or None.
        policy: import limits.
        progress: progress bar while hashing; None means only on a terminal.
        exclude: globs on paths relative to `src` to leave out (`original/*`).
        alias: an alias to point at the new version (`production`).

    Returns:
        The new version, its store folder and the hashes recorded.

    Raises:
        ModelImportRefused: naming the file and the reason; nothing is stored or registered.
    """
    policy = policy or ImportPolicy()
    src = Path(src).resolve()
    manifest_path = Path(manifest).resolve() if manifest else None
    chosen = select_files(src, exclude)
    files = [f for f in chosen.files if f != manifest_path]
    expected = read_manifest(manifest_path) if manifest_path else None
    if expected is not None:  # documents and left-out files are not stored, so not checked
        kept_out = {d.relative_to(src).as_posix() for d in chosen.documents} | set(chosen.left_out)
        expected = {
            rel: h
            for rel, h in expected.items()
            if rel not in kept_out and not rel.startswith(tuple(chosen.left_out))
        }
        check_manifest_names(expected, src, files, manifest_path)
    _refuse_other_kind(name)
    archs = check_model_folder(src, files, policy)
    staged = staging_dir()
    try:
        hashes = hash_tree(src, files, copy_to=staged, progress=progress)
        if expected is not None:
            check_manifest(expected, hashes, src, manifest_path)
        _recheck_copy(staged, src, policy)
        record = {
            "format": 1,
            "content_sha256": hashes.content_sha256,
            "files": {
                rel: file_record(staged / rel, sha, hashes.sizes[rel]) for rel, sha in hashes.files.items()
            },
        }
        folder, record_sha = commit(staged, record)
    except BaseException:
        if staged.exists():
            discard(staged)
        raise
    tags = {
        "kind": "base",
        "content_sha256": hashes.content_sha256,
        "import_record_sha256": record_sha,
        "store_path": str(folder),
        "architecture": ",".join(archs),
        "file_count": str(len(files)),
        "total_bytes": str(hashes.total_bytes),
        "imported_from": str(src),
    }
    if manifest_path:
        tags["manifest"] = str(manifest_path)
    sums = "".join(f"{sha}  {rel}\n" for rel, sha in hashes.files.items())
    tags["files_sha256"] = sums if len(sums) <= MAX_TAG_CHARS else "(too many files: see the import record)"
    documents = [d for d in chosen.documents if d != manifest_path]
    version = _register(name, folder, tags, record, sums, hashes, src, documents)
    if alias:
        from experiments import set_alias

        set_alias(name, alias, version)
    return ImportedModel(
        name,
        version,
        folder,
        hashes.content_sha256,
        archs,
        hashes,
        [d.relative_to(src).as_posix() for d in documents],
        chosen.left_out,
        alias,
    )


def _refuse_other_kind(name: str) -> None:
    import mlflow
    from mlflow import MlflowClient

    tracking.use_store()
    try:
        kind = MlflowClient().get_registered_model(name).tags.get("kind", "base")
    except mlflow.exceptions.MlflowException:
        return
    if kind != "base":
        raise UserError(f"{name}: already registered as kind={kind}; import base models under another name.")


def _register(
    name: str,
    folder: Path,
    tags: dict[str, str],
    record: dict,
    sums: str,
    hashes: TreeHashes,
    src: Path,
    documents: list[Path],
) -> str:
    import mlflow
    from mlflow import MlflowClient

    tracking.use_store()
    client = MlflowClient()
    with mlflow.start_run(run_name=f"import-{name}") as run:
        mlflow.log_params({"source": tags["imported_from"], "files": tags["file_count"]})
        mlflow.log_metrics(
            {
                "total_bytes": hashes.total_bytes,
                "hash_seconds": hashes.seconds,
                "hash_mb_per_s": hashes.mb_per_s,
            }
        )
        mlflow.log_text(record_bytes(record).decode(), "import/record.json")
        mlflow.log_text(sums, "import/SHA256SUMS")
        for doc in documents:  # the licence and model card travel with the version, outside the store
            rel = doc.relative_to(src)
            mlflow.log_artifact(str(doc), f"import/documents/{rel.parent.as_posix()}".rstrip("/."))
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(name, tags={"kind": "base"})
    mv = client.create_model_version(name, source=str(folder), run_id=run.info.run_id, tags=tags)
    return str(mv.version)
