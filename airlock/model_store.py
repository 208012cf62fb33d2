"""The model store: imported models, content addressed and read-only, on storage
every node sees (`$SEKISHO_MODEL_STORE`, else `model-store` under the Sekisho home).

    <store>/sha256/<content_sha256>/   the model's files (mode 0444, folders 0555)
    <store>/records/<content_sha256>.json   what import recorded about each file
    <store>/.incoming/                   copies being checked; never served

The record holds every file's size and SHA-256, each safetensors header's hash and
hashes of sampled chunks, so a load can check a model in a fraction of a full
re-hash. The registry tags the version with the record's own hash, so a record
edited to match changed files is caught too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from airlock.safetensors_check import read_header
from foundation import sekisho_home
from foundation.hashing import file_sha256
from foundation.home import private_dir

SAMPLE_COUNT = 4
SAMPLE_BYTES = 1024 * 1024


def store_root() -> Path:
    """The model store folder (created 0700 if missing: its files are its owner's alone)."""
    root = Path(os.environ.get("SEKISHO_MODEL_STORE") or sekisho_home() / "model-store")
    return private_dir(root).resolve()


def staging_dir() -> Path:
    """A fresh folder inside the store for a copy under check (same file system, so
    moving it into place is one rename)."""
    incoming = store_root() / ".incoming"
    incoming.mkdir(exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="import-", dir=incoming))


def sample_spans(size: int, count: int = SAMPLE_COUNT, length: int = SAMPLE_BYTES) -> list[tuple[int, int]]:
    """(offset, length) of the chunks to sample: evenly spread, first and last
    included; the whole file when it is small."""
    if size <= count * length:
        return [(0, size)]
    step = (size - length) // (count - 1)
    return [(i * step, length) for i in range(count)]


def chunk_sha256(path: Path, offset: int, length: int) -> str:
    return file_sha256(path, offset, length)


def file_record(path: Path, sha256: str, size: int) -> dict:
    """What import records about one file (path is the store copy)."""
    rec = {
        "size": size,
        "sha256": sha256,
        "samples": [[o, n, chunk_sha256(path, o, n)] for o, n in sample_spans(size)],
    }
    if path.suffix == ".safetensors":
        rec["header_sha256"] = read_header(path).header_sha256
    return rec


def record_bytes(record: dict) -> bytes:
    """The canonical bytes of a record (their SHA-256 is the registry's tag)."""
    return json.dumps(record, sort_keys=True, indent=1).encode()


def _make_read_only(folder: Path) -> None:
    for p in sorted(folder.rglob("*"), reverse=True):
        p.chmod(0o555 if p.is_dir() else 0o444)
    folder.chmod(0o555)


def discard(folder: Path) -> None:
    """Remove a staging copy, read-only parts included."""

    def force(func, path, _exc_info):
        Path(path).parent.chmod(0o755)
        Path(path).chmod(0o755)
        func(path)

    shutil.rmtree(folder, onerror=force)


def commit(staged: Path, record: dict) -> tuple[Path, str]:
    """Move a checked copy into its content address, make it read-only and write
    its record.

    Returns:
        The store folder and the record's SHA-256.
    """
    root = store_root()
    sha = record["content_sha256"]
    final = root / "sha256" / sha
    data = record_bytes(record)
    record_path = root / "records" / f"{sha}.json"
    record_path.parent.mkdir(parents=True, exist_ok=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():  # same content imported before: keep the stored copy
        discard(staged)
    else:
        _make_read_only(staged)
        try:
            staged.rename(final)
        except OSError:
            if not final.exists():
                raise
            discard(staged)  # a concurrent import of the same content won
    if not record_path.exists() or record_path.read_bytes() != data:
        tmp = record_path.with_suffix(".tmp")
        if tmp.exists():
            tmp.unlink()
        tmp.write_bytes(data)
        if record_path.exists():
            record_path.chmod(0o644)
        tmp.chmod(0o444)
        tmp.replace(record_path)
    return final, hashlib.sha256(data).hexdigest()
