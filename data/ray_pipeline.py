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

from cluster.config_base import UserError
from data.chat import RowError
from data.config import DatasetConfig
from data.readers import JsonLine, RawRow, Unparsed, read_rows

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
            return [ReadTask(functools.partial(_read_file, str(p), encoding),
                             BlockMetadata(num_rows=None, size_bytes=p.stat().st_size, exec_stats=None,
                                           input_files=[str(p)]))
                    for p in files]

    return SourceFiles()


class RowStage:
    """Ray Data actor: the per-row stages of `data.pipeline.RowProcessor` on Arrow batches."""

    def __init__(self, cfg: dict, tokenizer_dir: str):
        from transformers import AutoTokenizer

        from data.pipeline import RowProcessor

        self.processor = RowProcessor(DatasetConfig.model_validate(cfg), AutoTokenizer.from_pretrained(tokenizer_dir))

    def __call__(self, batch):
        import pyarrow as pa

        results, pii = self.processor([_decode(r) for r in batch.to_pylist()])
        out = {k: [] for k in ("file", "line", "unit", "code", "reason", "key", "band_keys", "split",
                               "input_ids", "labels", "pii")}
        for i, p in enumerate(results):
            for k, v in zip(("file", "line", "unit"), p.where):
                out[k].append(v)
            out["code"].append(p.error.code if p.error else None)
            out["reason"].append(p.error.reason if p.error else None)
            out["key"].append(p.key)
            out["band_keys"].append(p.band_keys)
            out["split"].append(p.split)
            out["input_ids"].append(p.tokens["input_ids"] if p.tokens else None)
            out["labels"].append(p.tokens["labels"] if p.tokens else None)
            out["pii"].append(json.dumps(pii) if i == 0 else "")  # the batch's counts ride on its first row
        types = {"key": pa.binary(), "band_keys": pa.list_(pa.uint64()), "input_ids": pa.list_(pa.int32()),
                 "labels": pa.list_(pa.int32()), "line": pa.int64()}
        return pa.table({k: pa.array(v, type=types.get(k)) for k, v in out.items()})


def _results(batch) -> tuple[list, Counter]:
    from data.pipeline import Processed

    processed, pii = [], Counter()
    for r in batch.to_pylist():
        where = (r["file"], r["line"], r["unit"])
        error = RowError(*where[:2], r["reason"], r["code"], where[2]) if r["code"] else None
        tokens = {"input_ids": r["input_ids"], "labels": r["labels"]} if r["input_ids"] is not None else None
        processed.append(Processed(where, error, r["key"], r["band_keys"], r["split"], tokens))
        if r["pii"]:
            pii.update(json.loads(r["pii"]))
    return processed, pii


def ray_batch_results(cfg: DatasetConfig, tokenizer_dir: str | Path, files: list[Path],
                      batch_rows: int) -> Iterator[tuple[list, Counter]]:
    """(processed rows, PII counts) per batch, in read order, computed on the Ray cluster.

    Raises:
        UserError: Ray is not connected, or a source is unreadable (the reader's own error).
    """
    import ray

    if not ray.is_initialized():
        raise UserError("executor: ray needs a connected Ray cluster (start one with `sekisho cluster up` "
                        "and connect, or set executor: local).")
    ctx = ray.data.DataContext.get_current()
    keep_order, ctx.execution_options.preserve_order = ctx.execution_options.preserve_order, True
    try:
        ds = ray.data.read_datasource(_source_files(files, cfg.encoding)).map_batches(
            RowStage, fn_constructor_args=(cfg.model_dump(mode="json"), str(tokenizer_dir)),
            batch_size=batch_rows, batch_format="pyarrow", concurrency=cfg.workers, num_cpus=1)
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            yield _results(batch)
    except Exception as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, UserError):
            raise type(cause)(str(cause)) from None
        raise
    finally:
        ctx.execution_options.preserve_order = keep_order
