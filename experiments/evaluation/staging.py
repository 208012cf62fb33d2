"""Suite files come in from outside the closed network like models do: each is
hashed (SHA-256 in 1 MiB chunks, foundation.hashing, the airlock's hashing) and,
when the eval config names the SHA256SUMS it was carried in with (`manifest:`,
the same `sha256sum` format `models import --manifest` reads), checked against
it before a row is read. The hashes become the evaluation run's MLflow dataset
inputs, so a run says exactly which bytes it measured."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from foundation import ConfigError
from foundation.hashing import file_sha256

_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


@dataclass(frozen=True)
class StagedFile:
    """A suite file as measured: which suite, where, its SHA-256."""

    name: str  # suite name, SUITE.references, or the eval set's name for its `dataset`
    path: Path
    sha256: str
    is_dataset: bool = False  # the eval set's own `dataset` file, not a suite's


def read_sums(path: Path) -> dict[str, str]:
    """`sha256sum` output: file name (no leading ./) -> hex digest.

    Raises:
        ConfigError: a line not in that format (file:line).
    """
    if not path.is_file():
        raise ConfigError(f"{path}: manifest not found.")
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.match(line)
        if not m:
            raise ConfigError(f"{path}:{n}: not a sha256sum line (64 hex digits, two spaces, a file name).")
        out[m.group(2).removeprefix("./")] = m.group(1).lower()
    return out


def stage(cfg) -> list[StagedFile]:
    """Hash every suite file of `cfg` (and the legacy dataset), checking each against
    `cfg.manifest` when there is one.

    Raises:
        ConfigError: a file is missing, not in the manifest, or its hash differs.
    """
    wanted: list[tuple[str, Path, bool]] = []  # (name, path, checked against the manifest)
    if cfg.dataset:
        wanted.append((cfg.name, Path(cfg.dataset), False))
    for s in cfg.suites:
        wanted.append((s.name, Path(s.path), True))
        if s.references:
            wanted.append((f"{s.name}.references", Path(s.references), True))
    sums = read_sums(Path(cfg.manifest)) if cfg.manifest else None
    out = []
    for name, path, checked in wanted:
        if not path.is_file():
            raise ConfigError(f"{path}: eval file not found (suite {name}).")
        digest = file_sha256(path)
        if sums is not None and checked:
            listed = _listed(sums, path, Path(cfg.manifest).parent)
            if listed is None:
                raise ConfigError(
                    f"{path}: not listed in {cfg.manifest}; refusing a file that was not carried in with it."
                )
            if listed != digest:
                raise ConfigError(
                    f"{path}: SHA-256 {digest} differs from {listed} in {cfg.manifest}; the file changed after it was carried in."
                )
        out.append(StagedFile(name, path, digest, not checked))
    return out


def _listed(sums: dict[str, str], path: Path, root: Path) -> str | None:
    try:
        rel = path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        rel = path.name
    return sums.get(rel) or sums.get(path.name)
