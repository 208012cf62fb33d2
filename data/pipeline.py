"""The row stages of the pipeline, as generators over a stream of rows:

read -> validate -> normalise -> mask PII -> dedup -> split

Every stage is row-at-a-time, so memory stays flat whatever the input size;
only the dedup index grows (a few 64-bit keys a row). Every row that does not
come out is counted by reason in `Accounting`, and listed in `dropped.jsonl`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from data.chat import DataValidationError, RowError
from data.config import DatasetConfig
from data.dedup import Deduplicator, content_key
from data.manifest import file_sha256
from data.normalize import normalize_text
from data.pii import mask_pii
from data.readers import list_sources, read_rows
from data.records import Example, Problem, check_messages, to_example
from data.split import split_of

SHOWN_ERRORS = 20


@dataclass
class Accounting:
    """Rows in / out / dropped by reason, PII counts, and the sources read."""

    rows_in: int = 0
    dropped: Counter = field(default_factory=Counter)
    invalid: list[RowError] = field(default_factory=list)  # the first SHOWN_ERRORS validation errors
    invalid_count: int = 0
    pii: Counter = field(default_factory=Counter)
    sources: list[dict] = field(default_factory=list)
    ignored_files: list[str] = field(default_factory=list)
    log: IO[str] | None = None  # dropped.jsonl, one line per dropped row

    def drop(self, error: RowError, invalid: bool = False) -> None:
        """Count a dropped row under its reason code (and list it when it is invalid)."""
        self.dropped[error.code] += 1
        if invalid:
            self.invalid_count += 1
            if len(self.invalid) < SHOWN_ERRORS:
                self.invalid.append(error)
        if self.log is not None:
            self.log.write(json.dumps({"file": error.file, error.unit: error.line, "code": error.code,
                                       "reason": error.reason}, ensure_ascii=False) + "\n")

    def raise_if_invalid(self, path: str) -> None:
        """Raise DataValidationError listing the invalid rows (on_error: fail)."""
        if not self.invalid_count:
            return
        shown = "\n".join(str(e) for e in self.invalid)
        more = f"\n... and {self.invalid_count - len(self.invalid)} more" if self.invalid_count > len(self.invalid) else ""
        raise DataValidationError(f"{self.invalid_count} invalid row(s) in {path} "
                                  f"(set on_error: skip to drop and count them):\n{shown}{more}")


def _error(ex_or_row, problem: Problem) -> RowError:
    return RowError(ex_or_row.file, ex_or_row.line, problem.message, problem.code, ex_or_row.unit)


def valid_examples(cfg: DatasetConfig, acc: Accounting) -> Iterator[Example]:
    """Read every source and yield the valid, normalised examples.

    Raises:
        DataValidationError: unreadable sources (missing, undecodable, unsupported).
    """
    files, ignored = list_sources(cfg.path)
    root = Path(cfg.path)
    acc.ignored_files = [str(p) for p in ignored]
    for path in files:
        name = str(path.relative_to(root)) if root.is_dir() else path.name
        source = {"name": name, "path": str(path), "sha256": file_sha256(path),
                  "bytes": path.stat().st_size, "rows_in": 0}
        acc.sources.append(source)
        for row in read_rows(path, cfg.encoding):
            acc.rows_in += 1
            source["rows_in"] += 1
            result = to_example(row, cfg.format, cfg.columns)
            if isinstance(result, Example):
                result.map_text(lambda s: normalize_text(s, cfg.normalize.nfkc, cfg.normalize.whitespace))
                result = _recheck(result)
            if isinstance(result, Problem):
                acc.drop(_error(row, result), invalid=True)
                continue
            yield result


def _recheck(ex: Example) -> Example | Problem:
    """Normalisation can empty a text (a content of only spaces or format characters)."""
    if ex.messages is not None:
        return check_messages(ex.messages) or ex
    return ex if ex.text else Problem("empty_text", "'text': empty after normalisation")


def clean_examples(cfg: DatasetConfig, acc: Accounting) -> Iterator[tuple[str, Example, bytes]]:
    """Valid examples, masked and deduplicated, each with its split and content key."""
    dedup = Deduplicator(cfg.dedup.exact, cfg.dedup.near, cfg.dedup.threshold,
                         cfg.dedup.num_perm, cfg.dedup.shingle)
    for ex in valid_examples(cfg, acc):
        if cfg.pii.enabled:
            ex.map_text(lambda s: mask_pii(s, cfg.pii.types, acc.pii))
        key = content_key(ex.messages, ex.text)
        if cfg.dedup.exact or cfg.dedup.near:
            reason = dedup.check(key, "\n".join(ex.contents()))
            if reason:
                acc.drop(_error(ex, Problem(reason, f"{reason.replace('_', ' ')} of an earlier row")))
                continue
        yield split_of(key, cfg.split.eval_fraction, cfg.split.seed), ex, key


def validate_rows(cfg: DatasetConfig) -> Accounting:
    """Read and validate every row without tokenising (a quick check before a run).

    Raises:
        DataValidationError: unreadable sources, or invalid rows with on_error="fail".
    """
    acc = Accounting()
    for _ in valid_examples(cfg, acc):
        pass
    if cfg.on_error == "fail":
        acc.raise_if_invalid(cfg.path)
    return acc
