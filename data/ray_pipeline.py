"""The row stages on Ray Data (`executor: ray`), for the cluster over the shared
file server:

read_datasource(SourceFiles: one read task per file, blocks of raw rows)
  -> map_batches(RowStage actors: validate, normalise, mask, hash, split, tokenise)
  -> iter_batches in the driver (dedup, length filters, pack, write: `data.prepare`)

Ray Data streams with backpressure, so memory stays flat; `preserve_order` keeps
read order, so dedup keeps the same first occurrences and the output equals the
local executor's. Rows cross process boundaries as Arrow columns: a raw row's
value travels as JSON text (or its JSONL line, unparsed).
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from data.chat import RowError
from data.config import DatasetConfig
from data.readers import JsonLine, RawRow, Unparsed, read_rows
from foundation import UserError

BLOCK_ROWS = 1024


def _encode(row: RawRow) -> dict:
    if isinstance(row.value, JsonLine):
        kind, payload = "jsonl", row.value.text
    elif isinstance(row.value, Unparsed):
        kind, payload = f"unparsed:{row.value.code}", row.value.message
    else:
        kind, payload = "json", json.dumps(row.value, ensure_ascii=False, default=str)
    return {"file": row.file, "line": row.line, "unit": row.unit, "kind": kind, "payload": payload}


def _decode(r: dict) -> RawRow:
    kind, payload = r["kind"], r["payload"]
    if kind == "jsonl":
        value = JsonLine(payload)
    elif kind.startswith("unparsed:"):
        value = Unparsed(kind.removeprefix("unparsed:"), payload)
    else:
        value = json.loads(payload)
    return RawRow(r["file"], r["line"], value, r["unit"])


def _read_file(path: str, encoding: str) -> Iterator:
    import pyarrow as pa

    batch: list[dict] = []
    for row in read_rows(Path(path), encoding, parse=False):
        batch.append(_encode(row))
        if len(batch) >= BLOCK_ROWS:
            yield pa.Table.from_pylist(batch)
            batch = []
    if batch:
        yield pa.Table.from_pylist(batch)


def _source_files(files: list[Path], encoding: str):
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class SourceFiles(Datasource):
        """One read task per source file, streaming blocks of raw rows."""

        def estimate_inmemory_data_size(self) -> int:
            return sum(p.stat().st_size for p in files)

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            return [
                ReadTask(
                    functools.partial(_read_file, str(p), encoding),
                    BlockMetadata(
                        num_rows=None, size_bytes=p.stat().st_size, exec_stats=None, input_files=[str(p)]
                    ),
                )
                for p in files
            ]

    return SourceFiles()


class RowStage:
    """Ray Data actor: the per-row stages of `data.pipeline.RowProcessor` on Arrow batches."""

    def __init__(self, cfg: dict, tokenizer_dir: str):
        from transformers import AutoTokenizer

        from data.pipeline import RowProcessor

        self.processor = RowProcessor(
            DatasetConfig.model_validate(cfg), AutoTokenizer.from_pretrained(tokenizer_dir)
        )

    def __call__(self, batch):
        import pyarrow as pa

        b = self.processor([_decode(r) for r in batch.to_pylist()])
        tokens = [b.tokens(i) if b.has_tokens[i] else None for i in range(len(b))]
        cols = {
            "file": [w[0] for w in b.where],
            "line": [w[1] for w in b.where],
            "unit": [w[2] for w in b.where],
            "code": [e.code if e else None for e in b.errors],
            "reason": [e.reason if e else None for e in b.errors],
            "exact_key": b.exact_keys,
            "band_keys": list(b.band_keys),
            "is_eval": b.is_eval,
            "input_ids": [t["input_ids"] if t else None for t in tokens],
            "labels": [t["labels"] if t else None for t in tokens],
            "pii": [json.dumps(b.pii)] + [""] * (len(b) - 1),  # the batch's counts ride on its first row
            "template": [json.dumps(b.template)] + [""] * (len(b) - 1),
        }
        types = {
            "band_keys": pa.list_(pa.uint64()),
            "input_ids": pa.list_(pa.int32()),
            "labels": pa.list_(pa.int32()),
            "line": pa.int64(),
        }
        return pa.table({k: pa.array(v, type=types.get(k)) for k, v in cols.items()})


def _results(batch):
    """A ProcessedBatch from the Arrow table `RowStage` made."""
    import numpy as np

    from data.pipeline import ProcessedBatch

    c = batch.to_pydict()
    n = batch.num_rows
    where = list(zip(c["file"], c["line"], c["unit"]))
    errors = [
        RowError(w[0], w[1], reason, code, w[2]) if code else None
        for w, code, reason in zip(where, c["code"], c["reason"])
    ]
    ids = [x or [] for x in c["input_ids"]]
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum([len(x) for x in ids], out=offsets[1:])
    pii, template = Counter(), Counter()
    for p, t in zip(c["pii"], c["template"]):
        if p:
            pii.update(json.loads(p))
        if t:
            template.update(json.loads(t))
    return ProcessedBatch(
        where,
        errors,
        np.array(c["exact_key"], dtype=np.uint64),
        np.array(c["band_keys"], dtype=np.uint64).reshape(n, -1),
        np.array(c["is_eval"], dtype=bool),
        np.array([x is not None for x in c["input_ids"]]),
        offsets,
        np.array([t for x in ids for t in x], dtype=np.int32),
        np.array([t for x in c["labels"] if x for t in x], dtype=np.int32),
        pii,
        template,
    )


def ray_batch_results(
    cfg: DatasetConfig, tokenizer_dir: str | Path, files: list[Path], batch_rows: int
) -> Iterator:
    """Processed batches (`data.pipeline.ProcessedBatch`) in read order, computed on the Ray cluster.

    Raises:
        UserError: Ray is not connected, or a source is unreadable (the reader's own error).
    """
    import ray

    if not ray.is_initialized():
        raise UserError(
            "executor: ray needs a connected Ray cluster (start one with `sekisho cluster up` "
            "and connect, or set executor: local)."
        )
    ctx = ray.data.DataContext.get_current()
    keep_order, ctx.execution_options.preserve_order = ctx.execution_options.preserve_order, True
    try:
        ds = ray.data.read_datasource(_source_files(files, cfg.encoding)).map_batches(
            RowStage,
            fn_constructor_args=(cfg.model_dump(mode="json"), str(tokenizer_dir)),
            batch_size=batch_rows,
            batch_format="pyarrow",
            concurrency=cfg.workers,
            num_cpus=1,
        )
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            yield _results(batch)
    except Exception as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, UserError):
            raise type(cause)(str(cause)) from None
        raise
    finally:
        ctx.execution_options.preserve_order = keep_order
