"""SHA-256 of every file of a model, read once in large chunks (optionally copied
as it is read), with a progress bar for multi-GB files, and `sha256sum`-format
manifests (SHA256SUMS) to check them against.
"""

from __future__ import annotations

import hashlib
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from airlock.errors import ModelImportRefused

CHUNK_BYTES = 8 * 1024 * 1024
_MANIFEST_LINE = re.compile(r"^(?:\\)?([0-9a-fA-F]{64}) [ *](.+)$")


@dataclass
class TreeHashes:
    """Hashes of a folder's files: each file's SHA-256 and size, and the folder's
    content hash (the same value as `registry.dir_sha256`)."""

    files: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    content_sha256: str = ""
    seconds: float = 0.0

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes.values())

    @property
    def mb_per_s(self) -> float:
        return self.total_bytes / 1e6 / self.seconds if self.seconds else 0.0


def _progress(enabled: bool | None):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    enabled = sys.stderr.isatty() if enabled is None else enabled
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        console=Console(stderr=True),
        transient=False,
    )


def hash_tree(
    root: str | Path,
    files: list[Path],
    copy_to: str | Path | None = None,
    progress: bool | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> TreeHashes:
    """Hash `files` (under `root`, in `registry.dir_sha256` order), copying each to
    the same relative path under `copy_to` when given, in one read of each file.

    Args:
        root: folder the files are relative to.
        files: the files, sorted as Path objects.
        copy_to: folder to copy into (created), or None to hash only.
        progress: show a progress bar on stderr; None means only on a terminal.
        chunk_bytes: read size; large reads keep hashing at disk speed.

    Returns:
        Per-file hashes and sizes, the folder hash, and the time taken.
    """
    root = Path(root)
    out = TreeHashes()
    tree = hashlib.sha256()
    buf = memoryview(bytearray(chunk_bytes))
    total = sum(f.stat().st_size for f in files)
    start = time.perf_counter()
    with _progress(progress) as bar, ThreadPoolExecutor(1) as pool:
        task = bar.add_task("hashing", total=total)
        for f in files:
            rel = f.relative_to(root).as_posix()
            bar.update(task, description=f"sha256 {rel}")
            h = hashlib.sha256()
            tree.update(rel.encode() + b"\0")
            dst = None
            if copy_to is not None:
                (Path(copy_to) / rel).parent.mkdir(parents=True, exist_ok=True)
                dst = (Path(copy_to) / rel).open("xb")
            size = 0
            with f.open("rb", buffering=0) as fh:
                while n := fh.readinto(buf):
                    # Two digests of the same bytes: the folder's on a second core
                    # (hashlib releases the GIL), so the pass runs at one digest's speed.
                    folder_digest = pool.submit(tree.update, buf[:n])
                    h.update(buf[:n])
                    if dst is not None:
                        dst.write(buf[:n])
                    folder_digest.result()  # before the buffer is refilled
                    size += n
                    bar.advance(task, n)
            if dst is not None:
                dst.close()
            tree.update(b"\0")
            out.files[rel], out.sizes[rel] = h.hexdigest(), size
    out.content_sha256 = tree.hexdigest()
    out.seconds = time.perf_counter() - start
    return out


def read_manifest(path: str | Path) -> dict[str, str]:
    """Parse `sha256sum` output: `HASH  NAME` or `HASH *NAME` per line.

    Returns:
        Relative path (without a leading `./`) -> lower-case hex digest.

    Raises:
        ModelImportRefused: a line that is not in that format, or a name listed twice.
    """
    path = Path(path)
    entries: dict[str, str] = {}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        m = _MANIFEST_LINE.match(line)
        if not m:
            raise ModelImportRefused(
                f"{path}:{i}: refused: not a sha256sum line "
                "(expected 64 hex digits, two spaces, a file name)."
            )
        name = m.group(2).removeprefix("./")
        if name in entries:
            raise ModelImportRefused(f"{path}:{i}: refused: {name} is listed twice.")
        entries[name] = m.group(1).lower()
    return entries


def check_manifest_names(
    manifest: dict[str, str], root: Path, files: list[Path], manifest_path: Path
) -> None:
    """Before any byte is hashed: the folder holds exactly the files the manifest lists.

    Raises:
        ModelImportRefused: naming the first file unlisted or missing.
    """
    present = {f.relative_to(root).as_posix() for f in files}
    for rel in sorted(present - set(manifest)):
        raise ModelImportRefused(f"{root / rel}: refused: not listed in the manifest {manifest_path}.")
    missing = sorted(set(manifest) - present)
    if missing:
        raise ModelImportRefused(
            f"{root / missing[0]}: refused: listed in the manifest "
            f"{manifest_path} but not in the folder ({len(missing)} missing)."
        )


def check_manifest(manifest: dict[str, str], hashes: TreeHashes, root: Path, manifest_path: Path) -> None:
    """Every file hashed must be listed with the same hash, and every listed file present.

    Raises:
        ModelImportRefused: naming the first file that differs, is unlisted or is missing.
    """
    for rel, digest in hashes.files.items():
        if rel not in manifest:
            raise ModelImportRefused(f"{root / rel}: refused: not listed in the manifest {manifest_path}.")
        if manifest[rel] != digest:
            raise ModelImportRefused(
                f"{root / rel}: refused: SHA-256 {digest} does not match {manifest[rel]} in the "
                f"manifest {manifest_path}; the file was changed or damaged on the way."
            )
    missing = sorted(set(manifest) - set(hashes.files))
    if missing:
        raise ModelImportRefused(
            f"{root / missing[0]}: refused: listed in the manifest "
            f"{manifest_path} but not in the folder ({len(missing)} missing)."
        )
