"""The row stages of the pipeline, streamed in batches:

read (this process; a JSONL file is only cut into chunks of lines) -> [decode ->
validate -> normalise -> mask PII -> hash -> split -> tokenise -> length filters]
(a batch at a time, in `workers` processes) -> dedup (this process, in read order)

Only a bounded number of batches is in flight, so memory stays flat whatever
the input size; only the dedup index grows (10 keys a row, 5 bytes a key). Every row
that does not come out is counted by reason in `Accounting` and listed in
`dropped.jsonl`. Dedup decisions are made in read order in one place, so the
result does not depend on the number of workers.
"""

from __future__ import annotations

import json
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from data.chat import IGNORE_INDEX, DataValidationError, RowError
from data.config import DatasetConfig
from data.dedup import Deduplicator, content_key, exact_key
from data.memory import HeapTrimmer, fix_glibc_thresholds
from data.normalize import normalize_text
from data.pii import mask_pii
from data.readers import SUFFIXES, JsonlChunk, RawRow, jsonl_chunks, list_sources, read_rows
from data.records import Example, Problem, check_messages, to_example
from data.split import split_of
from data.tokenization import TokenizedBatch, tokenize_batch
from foundation.hashing import file_sha256

SHOWN_ERRORS = 20
BATCH_ROWS = 1024  # rows per task: fewer, larger hand-offs between processes


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
    dedup_index_bytes: int = 0
    template: Counter = field(default_factory=Counter)  # what labelling noted (`data.template_labels`)
    log: IO[str] | None = None  # dropped.jsonl, one line per dropped row
    on_batch: Callable[[Accounting], None] | None = None  # after each batch is counted (a progress display)

    def drop(self, error: RowError, invalid: bool = False) -> None:
        """Count a dropped row under its reason code (and list it when it is invalid)."""
        self.dropped[error.code] += 1
        if invalid:
            self.invalid_count += 1
            if len(self.invalid) < SHOWN_ERRORS:
                self.invalid.append(error)
        if self.log is not None:
            self.log.write(
                json.dumps(
                    {"file": error.file, error.unit: error.line, "code": error.code, "reason": error.reason},
                    ensure_ascii=False,
                )
                + "\n"
            )

    def raise_if_invalid(self, path: str) -> None:
        """Raise DataValidationError listing the invalid rows (on_error: fail)."""
        if not self.invalid_count:
            return
        shown = "\n".join(str(e) for e in self.invalid)
        more = (
            f"\n... and {self.invalid_count - len(self.invalid)} more"
            if self.invalid_count > len(self.invalid)
            else ""
        )
        raise DataValidationError(
            f"{self.invalid_count} invalid row(s) in {path} "
            f"(set on_error: skip to drop and count them):\n{shown}{more}"
        )


def register_sources(cfg: DatasetConfig, acc: Accounting) -> list[Path]:
    """The files to read; each is recorded in `acc.sources` (name, path, SHA-256, bytes).

    Raises:
        DataValidationError: the path is missing, unsupported or holds no readable file.
    """
    files, ignored = list_sources(cfg.path)
    root = Path(cfg.path)
    acc.ignored_files = [str(p) for p in ignored]
    for path in files:
        name = str(path.relative_to(root)) if root.is_dir() else path.name
        acc.sources.append(
            {
                "name": name,
                "path": str(path),
                "sha256": file_sha256(path),
                "bytes": path.stat().st_size,
                "rows_in": 0,
            }
        )
    return files


def raw_rows(cfg: DatasetConfig, acc: Accounting) -> Iterator[RawRow]:
    """Every row of every source, counted in `acc` (rows in, per source and in all).

    Raises:
        DataValidationError: unreadable sources (missing, undecodable, unsupported).
    """
    files = register_sources(cfg, acc)
    for path, source in zip(files, acc.sources):
        for row in read_rows(path, cfg.encoding, parse=False):
            acc.rows_in += 1
            source["rows_in"] += 1
            yield row


def validate(row: RawRow, cfg: DatasetConfig) -> Example | Problem:
    """A raw row as a valid, normalised Example, or the problem with it."""
    ex = to_example(row, cfg.format, cfg.columns)
    if isinstance(ex, Problem):
        return ex
    ex.map_text(lambda s: normalize_text(s, cfg.normalize.nfkc, cfg.normalize.whitespace))
    if ex.messages is not None:  # normalisation can empty a text
        return check_messages(ex.messages) or ex
    return ex if ex.text else Problem("empty_text", "'text': empty after normalisation")


def example_key(ex: Example) -> bytes | Problem:
    """The example's content key (`data.dedup.content_key`), or the problem with its text."""
    try:
        return content_key(ex.messages, ex.text)
    except UnicodeEncodeError as exc:
        return Problem(
            "invalid_text",
            f"text holds {exc.object[exc.start]!a}: half of a UTF-16 surrogate pair "
            f"(a JSON \\u escape), not a character",
        )


def validate_rows(cfg: DatasetConfig) -> Accounting:
    """Read and validate every row without tokenising (a quick check before a run).

    Raises:
        DataValidationError: unreadable sources, or invalid rows with on_error="fail".
    """
    acc = Accounting()
    for row in raw_rows(cfg, acc):
        ex = validate(row, cfg)
        problem = ex if isinstance(ex, Problem) else example_key(ex)
        if isinstance(problem, Problem):
            acc.drop(RowError(row.file, row.line, problem.message, problem.code, row.unit), invalid=True)
    if cfg.on_error == "fail":
        acc.raise_if_invalid(cfg.path)
    return acc


@dataclass
class ProcessedBatch:
    """A batch of rows after the per-row stages, column by column (cheap to pass
    between processes): where each row came from, its problem if any, its dedup
    keys and split, and the tokens of every row that got that far (an invalid
    row has none; a row too long or too short has tokens and a problem)."""

    where: list[tuple[str, int, str]]
    errors: list[RowError | None]
    exact_keys: np.ndarray  # uint64 (n,)
    band_keys: np.ndarray  # uint64 (n, bands)
    is_eval: np.ndarray  # bool (n,)
    has_tokens: np.ndarray  # bool (n,)
    offsets: np.ndarray  # int64 (n + 1,): row i's tokens are input_ids[offsets[i]:offsets[i + 1]]
    input_ids: np.ndarray  # int32
    labels: np.ndarray  # int32
    pii: Counter = field(default_factory=Counter)
    template: Counter = field(default_factory=Counter)  # tokenize_batch's notes

    def __len__(self) -> int:
        return len(self.where)

    def tokens(self, i: int) -> dict[str, np.ndarray]:
        a, b = self.offsets[i], self.offsets[i + 1]
        return {"input_ids": self.input_ids[a:b], "labels": self.labels[a:b]}


class RowProcessor:
    """The per-row stages for a batch of rows; pure, so batches can run in any process."""

    def __init__(self, cfg: DatasetConfig, tokenizer):
        self.cfg, self.tokenizer = cfg, tokenizer
        d = cfg.dedup
        self.hasher = Deduplicator(d.exact, d.near, d.threshold, d.num_perm, d.shingle)

    def __call__(self, rows: list[RawRow] | JsonlChunk) -> ProcessedBatch:
        if isinstance(rows, JsonlChunk):
            rows = rows.rows()
        cfg, pii, notes = self.cfg, Counter(), Counter()
        n = len(rows)
        errors: list[RowError | None] = [None] * n
        valid: list[tuple[int, Example]] = []
        keys: list[bytes] = []
        for i, row in enumerate(rows):
            ex = validate(row, cfg)
            if not isinstance(ex, Problem) and cfg.pii.enabled:
                ex.map_text(lambda s: mask_pii(s, cfg.pii.types, pii))
            key = ex if isinstance(ex, Problem) else example_key(ex)
            if isinstance(key, Problem):
                errors[i] = RowError(row.file, row.line, key.message, key.code, row.unit)
                continue
            valid.append((i, ex))
            keys.append(key)
        exact = np.zeros(n, dtype=np.uint64)
        is_eval = np.zeros(n, dtype=bool)
        has_tokens = np.zeros(n, dtype=bool)
        lengths = np.zeros(n, dtype=np.int64)
        input_ids = labels = np.empty(0, dtype=np.int32)
        band_keys = np.zeros((n, self.hasher.bands if self.hasher.near else 0), dtype=np.uint64)
        if valid:
            at = [i for i, _ in valid]
            exact[at] = [exact_key(k) for k in keys]
            is_eval[at] = [split_of(k, cfg.split.eval_fraction, cfg.split.seed) == "eval" for k in keys]
            band_keys[at] = self.hasher.band_keys_batch(["\n".join(ex.contents()) for _, ex in valid])
            tokens, refused = tokenize_batch(
                self.tokenizer, [ex for _, ex in valid], cfg.template_kwargs or None, notes
            )
            tokens, problems = length_filter(cfg, tokens)
            for k, problem in {**problems, **refused}.items():
                i, ex = valid[k]
                errors[i] = RowError(ex.file, ex.line, problem.message, problem.code, ex.unit)
            has_tokens[at] = True
            has_tokens[[valid[k][0] for k in refused]] = False  # refused by the template: an invalid row
            lengths[at] = tokens.lengths
            input_ids, labels = tokens.input_ids, tokens.labels
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return ProcessedBatch(
            [(r.file, r.line, r.unit) for r in rows],
            errors,
            exact,
            band_keys,
            is_eval,
            has_tokens,
            offsets,
            input_ids,
            labels,
            pii,
            notes,
        )


def length_filter(cfg: DatasetConfig, batch: TokenizedBatch) -> tuple[TokenizedBatch, dict[int, Problem]]:
    """The token-length filters over a tokenised batch.

    Returns:
        The batch (its overlong examples cut to max_length when overlength is
        "truncate"), and the problem of each example that fails a filter, by index.
    """
    n = batch.lengths
    problems: dict[int, Problem] = {}
    long = n > cfg.max_length
    if long.any():
        if cfg.overlength == "drop":
            for k in np.flatnonzero(long).tolist():
                problems[k] = Problem("too_long", f"{n[k]} tokens, more than max_length {cfg.max_length}")
        else:
            batch = _truncate(batch, cfg.max_length)
    for k in np.flatnonzero(n < cfg.min_tokens).tolist():
        problems.setdefault(k, Problem("too_short", f"{n[k]} tokens, fewer than min_tokens {cfg.min_tokens}"))
    trained = np.zeros(len(batch.labels) + 1, dtype=np.int64)
    np.cumsum(batch.labels != IGNORE_INDEX, out=trained[1:])
    for k in np.flatnonzero(trained[batch.offsets[1:]] == trained[batch.offsets[:-1]]).tolist():
        problems.setdefault(
            k, Problem("no_trained_tokens", f"no trained token left within max_length {cfg.max_length}")
        )
    return batch, problems


def _truncate(batch: TokenizedBatch, length: int) -> TokenizedBatch:
    """Every example cut to its first `length` tokens."""
    n = batch.lengths
    within = np.arange(len(batch.input_ids), dtype=np.int64) - np.repeat(batch.offsets[:-1], n)
    keep = within < length
    offsets = np.zeros_like(batch.offsets)
    np.cumsum(np.minimum(n, length), out=offsets[1:])
    return TokenizedBatch(batch.input_ids[keep], batch.labels[keep], offsets)


_PROCESSOR: RowProcessor | None = None  # inherited by forked workers


def _run_batch(rows: list[RawRow] | JsonlChunk) -> ProcessedBatch:
    return _PROCESSOR(rows)


def read_units(cfg: DatasetConfig, acc: Accounting) -> Iterator[list[RawRow] | JsonlChunk]:
    """What the row stages take, in read order, `BATCH_ROWS` rows at most each:
    a JSONL file as chunks of undecoded lines (decoded and framed where the rows
    are processed: reading only cuts the file), any other file as batches of raw rows.

    Raises:
        DataValidationError: unreadable sources.
    """
    for path in register_sources(cfg, acc):
        if SUFFIXES[path.suffix.lower()] == "jsonl":
            yield from jsonl_chunks(path, cfg.encoding, BATCH_ROWS)
        else:
            yield from batched(read_rows(path, cfg.encoding, parse=False), BATCH_ROWS)


def batched(rows: Iterable[RawRow], size: int) -> Iterator[list[RawRow]]:
    batch: list[RawRow] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _one_thread_each() -> None:
    """In a worker process: the Rust tokenizer encodes on this process's thread
    only (the workers already use every core; more threads would only contend)."""
    import os

    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def ordered_map(fn: Callable, batches: Iterable, workers: int) -> Iterator:
    """`fn` over `batches` in `workers` forked processes, results in input order,
    at most 2 x workers batches in flight (a plain map when workers is 1)."""
    if workers <= 1:
        yield from map(fn, batches)
        return
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(workers, initializer=_one_thread_each) as pool:
        fix_glibc_thresholds()  # in this process only, now that the workers are forked (see data.memory)
        pending: deque = deque()
        for batch in batches:
            pending.append(pool.apply_async(fn, (batch,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _batch_results(cfg: DatasetConfig, tokenizer, tokenizer_dir, acc: Accounting) -> Iterator[ProcessedBatch]:
    """Processed batches in read order, from the configured executor."""
    global _PROCESSOR
    if cfg.executor == "ray":
        from data.ray_pipeline import ray_batch_results

        batches = ray_batch_results(cfg, tokenizer_dir, register_sources(cfg, acc), BATCH_ROWS)
    else:
        _PROCESSOR = RowProcessor(cfg, tokenizer)
        batches = ordered_map(_run_batch, read_units(cfg, acc), cfg.workers)
    by_path: dict[str, dict] = {}
    try:
        for batch in batches:
            by_path = by_path or {s["path"]: s for s in acc.sources}  # all registered before the first batch
            # rows are framed where they are processed: count them as they come back
            for file, count in Counter(file for file, _, _ in batch.where).items():
                by_path[file]["rows_in"] += count
            acc.rows_in += len(batch)
            yield batch
    finally:
        _PROCESSOR = None


def processed_rows(
    cfg: DatasetConfig,
    tokenizer,
    acc: Accounting,
    tokenizer_dir: str | Path | None = None,
    spill_dir: str | Path | None = None,
) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """(split, tokens) of every row kept, in read order; every other row is counted in `acc`.

    Args:
        tokenizer_dir: where Ray workers load the tokenizer from (executor: ray).
        spill_dir: where the dedup index spills to (with `dedup.spill`).

    Raises:
        DataValidationError: unreadable sources.
    """
    d = cfg.dedup
    dedup = Deduplicator(
        d.exact,
        d.near,
        d.threshold,
        d.num_perm,
        d.shingle,
        str(spill_dir) if d.spill and spill_dir is not None else None,
    )
    trim = HeapTrimmer()  # the heap's free pages go back as the process grows (see data.memory)
    for batch in _batch_results(cfg, tokenizer, tokenizer_dir, acc):
        trim()
        acc.pii.update(batch.pii)
        acc.template.update(batch.template)
        tokenized = np.flatnonzero(batch.has_tokens).tolist()
        verdicts = dedup.check_batch(batch.exact_keys, batch.band_keys, tokenized)
        is_eval = batch.is_eval.tolist()
        for i, (has_tokens, reason, error) in enumerate(
            zip(batch.has_tokens.tolist(), verdicts, batch.errors)
        ):
            if not has_tokens:  # invalid row
                acc.drop(error, invalid=True)
            elif reason:
                acc.drop(_duplicate(batch.where[i], reason))
            elif error:
                acc.drop(error)
            else:
                yield ("eval" if is_eval[i] else "train"), batch.tokens(i)
        if acc.on_batch is not None:
            acc.on_batch(acc)
    acc.dedup_index_bytes = dedup.index_bytes


def _duplicate(where: tuple[str, int, str], reason: str) -> RowError:
    return RowError(where[0], where[1], f"{reason.replace('_', ' ')} of an earlier row", reason, where[2])
