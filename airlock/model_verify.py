"""Check a stored model against its store record (written by `models import` or
by a training job's export): quickly at every load (sizes, safetensors headers,
sampled chunks), fully on demand (every byte). `load` serves nothing else: a
version registered straight through MLflow has no record and is refused."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from airlock.errors import ModelImportRefused, ModelNotInStoreError
from airlock.file_hashes import TreeHashes, hash_tree
from airlock.model_store import chunk_sha256, store_root
from airlock.safetensors_check import read_header
from experiments import registry
from experiments.registry import ModelIntegrityError, ResolvedModel


@dataclass(frozen=True)
class StoredModel:
    """A model version whose store copy matched its record; `source` says how it
    entered the store: {"kind": "import"}, {"kind": "training", "run_id": ...} or
    {"kind": "merge", "adapter": ..., "base": ..., "run_id": ...}."""

    name: str
    version: str
    path: Path
    content_sha256: str
    tags: dict[str, str]
    files: int
    total_bytes: int
    source: dict = field(default_factory=lambda: {"kind": "import"})

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"

    @property
    def origin(self) -> str:
        """How the version entered the store, in words (`models verify`, `models show`)."""
        if self.source.get("kind") == "training":
            return f"training export (run {self.source.get('run_id')})"
        if self.source.get("kind") == "merge":
            s = self.source
            return f"merge of {s.get('adapter')} into {s.get('base')} (run {s.get('run_id')})"
        return "import"


def _version(model_version):
    return registry.get_version(model_version) if isinstance(model_version, str) else model_version


HOW_TO_STORE = (
    "bring it in with `sekisho models import`, or re-run the training job that made it "
    "(`sekisho train run`), which stores and registers its output"
)


def load_record(mv) -> tuple[Path, dict]:
    """The store folder and record of a version, the record checked against the
    hashes the registry holds (the record's own SHA-256 and its content hash).

    Raises:
        ModelNotInStoreError: the version has no record (it was registered straight
            through MLflow), its store copy or record is gone, or the record is not
            the one the version was registered with.
    """
    ref = f"{mv.name}/{mv.version}"
    sha, rec_sha = mv.tags.get("content_sha256"), mv.tags.get("import_record_sha256")
    if not sha or not rec_sha:
        raise ModelNotInStoreError(
            f"{ref}: not in the model store (it has no import_record_sha256 tag: it was "
            f"registered straight through MLflow, not by `sekisho models import` or a "
            f"training job); refusing to load it. To serve it, {HOW_TO_STORE}."
        )
    folder = store_root() / "sha256" / sha
    record_path = store_root() / "records" / f"{sha}.json"
    if not folder.is_dir() or not record_path.is_file():
        raise ModelNotInStoreError(
            f"{ref}: its store copy {folder} or record {record_path} is "
            f"missing (store: {store_root()}); refusing to load it. To serve it, {HOW_TO_STORE}."
        )
    data = record_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != rec_sha:
        raise ModelNotInStoreError(
            f"{record_path}: the import record of {ref} was changed after it was stored "
            f"(or is not the record {ref} was registered with); refusing to trust the store "
            f"copy. To serve it, {HOW_TO_STORE}."
        )
    record = json.loads(data)
    if record.get("content_sha256") != sha:
        raise ModelNotInStoreError(
            f"{record_path}: the record is for content {str(record.get('content_sha256'))[:16]}..., "
            f"not the {sha[:16]}... the tags of {ref} claim; refusing to load it. "
            f"To serve it, {HOW_TO_STORE}."
        )
    return folder, record


def _changed(ref: str, path: Path, what: str) -> ModelIntegrityError:
    return ModelIntegrityError(
        f"{path}: {what} since {ref} was stored; refusing to load it "
        f"(run `sekisho models verify {ref}`, then re-import the model or re-run its training job)."
    )


def _same_file_set(ref: str, folder: Path, record: dict) -> None:
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()}
    for rel in sorted(present ^ set(record["files"])):
        raise _changed(ref, folder / rel, "added" if rel in present else "removed")


def verify_store_copy(model_version) -> StoredModel:
    """The check serve runs at every load: the version is in the store, and each
    file's size, safetensors header and sampled chunks match its record.

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
        record.get("source") or {"kind": "import"},
    )


def verify_all_bytes(model_version, progress: bool | None = None) -> StoredModel:
    """`sekisho models verify`: re-hash every byte of the store copy and compare
    each file's SHA-256 and the folder's content hash with its record.

    Raises:
        ModelNotInStoreError, ModelIntegrityError: as `verify_store_copy`, naming the file.
    """
    mv = _version(model_version)
    stored = verify_store_copy(mv)
    ref = stored.ref
    _, record = load_record(mv)
    files = sorted(stored.path / rel for rel in record["files"])
    _check_hashes(ref, stored.path, record, hash_tree(stored.path, files, progress=progress))
    return stored


def copy_checked(stored: StoredModel, dst: str | Path) -> Path:
    """A copy of a checked store folder at `dst`, every byte hashed as it is copied
    and compared with the record (for a process that may read only its own folder:
    an engine's adapter cache). A folder already at `dst` is checked the same way
    and kept.

    Raises:
        ModelIntegrityError: naming the file whose bytes differ from the record.
    """
    dst = Path(dst)
    _, record = load_record(stored)  # its name, version and tags are the version's
    files = sorted(stored.path / rel for rel in record["files"])
    if dst.exists():
        _same_file_set(stored.ref, dst, record)
        kept = sorted(dst / rel for rel in record["files"])
        _check_hashes(stored.ref, dst, record, hash_tree(dst, kept, progress=False))
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{dst.name}-", dir=dst.parent))
    try:
        copied = hash_tree(stored.path, files, copy_to=partial, progress=False)
        _check_hashes(stored.ref, stored.path, record, copied)
        os.replace(partial, dst)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return dst


def _check_hashes(ref: str, where: Path, record: dict, hashes: TreeHashes) -> None:
    """Each file's SHA-256 and the folder's content hash, as the record has them."""
    for rel, rec in record["files"].items():
        if hashes.files.get(rel) != rec["sha256"]:
            raise _changed(
                ref, where / rel, f"its SHA-256 changed from {rec['sha256']} to {hashes.files.get(rel)}"
            )
    if hashes.content_sha256 != record["content_sha256"]:
        raise _changed(ref, where, "the folder's content hash changed")


def load(ref: str, copy_to: str | Path | None = None) -> ResolvedModel:
    """The files to load for `ref`, checked in place against the version's store
    record (sizes, headers, sampled chunks). Only versions brought in with `sekisho
    models import` or stored by a training job have one; any other is refused.

    Args:
        ref: `name@alias` or `name/version`.
        copy_to: a folder for a private copy, every byte checked (`copy_checked`);
            None loads from the store folder itself.

    Raises:
        ModelNotFoundError: the reference names nothing.
        ModelNotInStoreError: the version has no valid store record, naming what to do.
        ModelIntegrityError: a stored file differs from the record, naming it.
    """
    stored = verify_store_copy(registry.get_version(ref))
    path = stored.path if copy_to is None else copy_checked(stored, copy_to)
    return ResolvedModel(stored.name, str(stored.version), path, stored.content_sha256, dict(stored.tags))
