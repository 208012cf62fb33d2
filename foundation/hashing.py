"""SHA-256 of files and folders, read in 1 MiB chunks."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 20


def update_from_file(h, path: str | Path, offset: int = 0, length: int | None = None) -> None:
    """Feed `length` bytes of `path` from `offset` (to the end when None) into `h`."""
    with Path(path).open("rb") as f:
        f.seek(offset)
        left = length
        while left is None or left > 0:
            block = f.read(CHUNK if left is None else min(CHUNK, left))
            if not block:
                break
            h.update(block)
            if left is not None:
                left -= len(block)


def file_sha256(path: str | Path, offset: int = 0, length: int | None = None) -> str:
    """Hex SHA-256 of a file, or of `length` bytes of it from `offset`."""
    h = hashlib.sha256()
    update_from_file(h, path, offset, length)
    return h.hexdigest()
