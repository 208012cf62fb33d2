"""Check a stored model against what import recorded: quickly at every load
(sizes, safetensors headers, sampled chunks), fully on demand (every byte)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from airlock.errors import ModelImportRefused, ModelNotInStoreError
from airlock.file_hashes import hash_tree
from airlock.model_store import chunk_sha256, store_root
from airlock.safetensors_check import read_header
from experiments import registry
from experiments.registry import ModelIntegrityError, ResolvedModel


@dataclass(frozen=True)
class StoredModel:
    """A model version whose store copy matched its import record."""

    name: str
    version: str
    path: Path
    content_sha256: str
    tags: dict[str, str]
    files: int
    total_bytes: int

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"


def _version(model_version):
    return registry.get_version(model_version) if isinstance(model_version, str) else model_version


def load_record(mv) -> tuple[Path, dict]:
    """The store folder and import record of a version, the record checked against
    the hash the registry holds.

    Raises:
        ModelNotInStoreError: the version was not imported, or its store copy is gone.
        ModelIntegrityError: the record differs from what the registry holds.
    """
    ref = f"{mv.name}/{mv.version}"
    sha, rec_sha = mv.tags.get("content_sha256"), mv.tags.get("import_record_sha256")
    if not sha or not rec_sha:
        raise ModelNotInStoreError(
            f"{ref}: not in the model store (it was not brought in with "
            "`sekisho models import`); refusing to load it."
        )
    folder = store_root() / "sha256" / sha
    record_path = store_root() / "records" / f"{sha}.json"
    if not folder.is_dir() or not record_path.is_file():
        raise ModelNotInStoreError(
            f"{ref}: its store copy {folder} or record {record_path} is "
            f"missing (store: {store_root()}); refusing to load it."
        )
    data = record_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != rec_sha:
        raise ModelIntegrityError(
            f"{record_path}: the import record of {ref} was changed after "
            "import; refusing to trust the store copy."
        )
    return folder, json.loads(data)


def _changed(ref: str, path: Path, what: str) -> ModelIntegrityError:
    return ModelIntegrityError(
        f"{path}: {what} since {ref} was imported; refusing to load it "
        f"(run `sekisho models verify {ref}`, then re-import the model)."
    )


def _same_file_set(ref: str, folder: Path, record: dict) -> None:
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()}
    for rel in sorted(present ^ set(record["files"])):
        raise _changed(ref, folder / rel, "added" if rel in present else "removed")


def verify_store_copy(model_version) -> StoredModel:
    """The check serve runs at every load: the version is in the store, and each
    file's size, safetensors header and sampled chunks match the import record.

    Args:
        model_version: `name@alias`, `name/version`, or an MLflow ModelVersion.

    Returns:
        The version with the store folder to load from.

    Raises:
        ModelNotFoundError: the reference names nothing.
        ModelNotInStoreError: the version is not in the store.
        ModelIntegrityError: naming the first file that differs, and how.
    """
    mv = _version(model_version)
    ref = f"{mv.name}/{mv.version}"
    folder, record = load_record(mv)
    _same_file_set(ref, folder, record)
    for rel, rec in record["files"].items():
        path = folder / rel
        if path.stat().st_size != rec["size"]:
            raise _changed(ref, path, f"size changed from {rec['size']} to {path.stat().st_size} bytes")
        if "header_sha256" in rec:
            try:
                header = read_header(path)
            except ModelImportRefused as exc:
                raise _changed(ref, path, f"its safetensors header became invalid ({exc})") from None
            if header.header_sha256 != rec["header_sha256"]:
                raise _changed(ref, path, "its safetensors header changed")
        for offset, length, digest in rec["samples"]:
            if chunk_sha256(path, offset, length) != digest:
                raise _changed(ref, path, f"bytes {offset}..{offset + length} changed")
    return StoredModel(
        mv.name,
        str(mv.version),
        folder,
        record["content_sha256"],
        dict(mv.tags),
        len(record["files"]),
        sum(r["size"] for r in record["files"].values()),
    )


def verify_all_bytes(model_version, progress: bool | None = None) -> StoredModel:
    """`sekisho models verify`: re-hash every byte of the store copy and compare
    each file's SHA-256 and the folder's content hash with the import record.

    Raises:
        ModelNotInStoreError, ModelIntegrityError: as `verify_store_copy`, naming the file.
    """
    mv = _version(model_version)
    stored = verify_store_copy(mv)
    ref = stored.ref
    _, record = load_record(mv)
    files = sorted(stored.path / rel for rel in record["files"])
    hashes = hash_tree(stored.path, files, progress=progress)
    for rel, rec in record["files"].items():
        if hashes.files[rel] != rec["sha256"]:
            raise _changed(
                ref, stored.path / rel, f"its SHA-256 changed from {rec['sha256']} to {hashes.files[rel]}"
            )
    if hashes.content_sha256 != stored.content_sha256:
        raise _changed(ref, stored.path, "the folder's content hash changed")
    return stored


def load(ref: str, dst: str | Path | None = None) -> ResolvedModel:
    """The files to load for `ref`, checked: a version imported into the model store
    is checked in place against its import record (sizes, headers, sampled chunks);
    any other version (adapters registered by training) is downloaded and its hash
    verified.

    Raises:
        ModelNotFoundError, ModelIntegrityError: as `resolve` and `verify_store_copy`.
    """
    mv = registry.get_version(ref)
    if mv.tags.get("import_record_sha256"):
        stored = verify_store_copy(mv)
        return ResolvedModel(
            stored.name, str(stored.version), stored.path, stored.content_sha256, dict(stored.tags)
        )
    return registry.resolve(f"{mv.name}/{mv.version}", dst)
