"""Readers: internal files to a stream of raw rows, each with where it came from.

Supported: JSONL, JSON (a top-level array), Parquet, CSV/TSV, and plain text or
Markdown (one file is one raw-text row). A folder is read recursively in sorted
order; files with other suffixes in a folder are listed as ignored, never read.

Text is decoded line by line from the bytes, so memory stays flat on large JSONL
and CSV files, and a decoding error names the file and the byte offset. With
`encoding: auto` a file with a UTF-8 BOM is UTF-8; otherwise its first 64 KiB
decide between UTF-8 and CP932 (Shift_JIS as Windows writes it, a superset).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import orjson

from data.chat import DataValidationError

SUFFIXES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "text",
    ".md": "text",
}
ENCODINGS = ("auto", "utf-8", "utf-8-sig", "cp932", "shift_jis")
SNIFF_BYTES = 64 * 1024


@dataclass(frozen=True)
class RawRow:
    """One row as read: `value` is the parsed object (or an `Unparsed`, or a `JsonLine`)."""

    file: str
    line: int
    value: object
    unit: str = "line"  # "line" for text formats, "row" for Parquet and JSON arrays


@dataclass(frozen=True)
class Unparsed:
    """A line that did not parse (bad JSON, wrong CSV cell count); validation
    turns it into a row error with this reason code."""

    code: str
    message: str


def list_sources(path: str | Path) -> tuple[list[Path], list[Path]]:
    """The files to read under `path`, and the files a folder holds that are ignored.

    Raises:
        DataValidationError: the path does not exist, a named file has an
            unsupported suffix, or a folder holds no readable file.
    """
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() not in SUFFIXES:
            raise DataValidationError(
                f"{path}: unsupported file type {path.suffix!r}; expected one of {sorted(SUFFIXES)}."
            )
        return [path], []
    if not path.is_dir():
        raise DataValidationError(f"{path}: dataset file or folder not found.")
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    used = [p for p in files if p.suffix.lower() in SUFFIXES]
    if not used:
        raise DataValidationError(
            f"{path}: the folder holds no file of a supported type ({', '.join(sorted(SUFFIXES))})."
        )
    return used, [p for p in files if p not in used]


def detect_encoding(path: Path, encoding: str) -> str:
    """The codec to decode `path` with: `encoding` itself unless it is "auto".

    Raises:
        DataValidationError: "auto" and the start of the file is neither UTF-8 nor CP932.
    """
    if encoding != "auto":
        return encoding
    with path.open("rb") as f:
        head = f.read(SNIFF_BYTES)
    if head.startswith(b"\xef\xbb\xbf"):
        return "utf-8-sig"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in head:
        at = max(head.find(b"\x00"), 0)
        raise DataValidationError(
            f"{path}: byte {at}: UTF-16 or binary content (Excel's "
            f"'Unicode text' is UTF-16); save the file as UTF-8 (or CSV in CP932)."
        )
    try:
        head.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError as exc:
        if exc.start >= len(head) - 3 and exc.reason == "unexpected end of data":
            return "utf-8"  # a character cut by the sniff window
        utf8_error = exc
    try:
        head.decode("cp932")
        return "cp932"
    except UnicodeDecodeError as exc:
        if exc.start >= len(head) - 1 and len(head) == SNIFF_BYTES:
            return "cp932"
    raise DataValidationError(
        f"{path}: byte {utf8_error.start}: neither UTF-8 nor CP932/Shift_JIS "
        f"({utf8_error.reason}); set `encoding:` in the dataset config."
    )


def decoded_lines(path: Path, encoding: str) -> Iterator[str]:
    """The file's lines, decoded one at a time (newline 0x0A is never part of a
    multi-byte character in UTF-8 or CP932, so splitting bytes first is safe).

    Raises:
        DataValidationError: a line does not decode; names the file and byte offset.
    """
    codec = detect_encoding(path, encoding)
    with path.open("rb") as f:
        for _, text in _decode_lines(f, path, codec):
            yield text


def _decode_lines(
    lines: Iterable[bytes], path: Path | str, codec: str, line: int = 1, offset: int = 0
) -> Iterator[tuple[int, str]]:
    """(line number, text) of consecutive lines of a file, the first being line
    `line` at byte `offset` (a UTF-8 BOM at the file's start is not text).

    Raises:
        DataValidationError: a line does not decode; names the file and byte offset.
    """
    utf8 = "utf-8" if codec == "utf-8-sig" else codec
    for lineno, raw in enumerate(lines, start=line):
        if lineno == 1 and codec == "utf-8-sig" and raw.startswith(b"\xef\xbb\xbf"):
            raw, offset = raw[3:], offset + 3
        try:
            yield lineno, raw.decode(utf8)
        except UnicodeDecodeError as exc:
            raise DataValidationError(
                f"{path}: byte {offset + exc.start}: not valid {codec} "
                f"({exc.reason}); check the file's encoding or set "
                f"`encoding:` in the dataset config."
            ) from None
        offset += len(raw)


@dataclass
class JsonlChunk:
    """Consecutive lines of a JSONL file as bytes, not decoded yet: reading a
    large file only cuts it into chunks, and the (parallel) row stages decode
    and frame the rows (`rows`), so the reading process does almost no work a row.

    `line`: the first line's number (1-based); `offset`: its byte offset.
    """

    path: str
    codec: str
    line: int
    offset: int
    lines: list[bytes]

    def rows(self) -> list[RawRow]:
        """The chunk's rows (blank lines skipped), each a `JsonLine`.

        Raises:
            DataValidationError: a line does not decode; names the file and byte offset.
        """
        return [
            RawRow(self.path, lineno, JsonLine(text))
            for lineno, text in _decode_lines(self.lines, self.path, self.codec, self.line, self.offset)
            if text.strip()
        ]


def jsonl_chunks(path: Path, encoding: str, lines: int) -> Iterator[JsonlChunk]:
    """A JSONL file as chunks of `lines` lines (see `JsonlChunk`).

    Raises:
        DataValidationError: the encoding is neither configured nor recognised.
    """
    codec = detect_encoding(path, encoding)
    line, offset = 1, 0
    with path.open("rb") as f:
        while chunk := list(islice(f, lines)):
            yield JsonlChunk(str(path), codec, line, offset, chunk)
            line += len(chunk)
            offset += sum(map(len, chunk))


@dataclass(frozen=True)
class JsonLine:
    """A JSONL line not parsed yet: parsing is left to the (parallel) row stages."""

    text: str


def parse_json_line(line: str) -> object:
    """The parsed line, or an Unparsed("invalid_json", ...).

    orjson parses (several times faster); what it refuses (NaN, integers past
    64 bits, or broken JSON) goes to the standard parser, which accepts the same
    as before and words the error.
    """
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        return Unparsed("invalid_json", f"invalid JSON: {exc.msg} at column {exc.colno}")


def read_jsonl(path: Path, encoding: str, parse: bool = True) -> Iterator[RawRow]:
    for lineno, line in enumerate(decoded_lines(path, encoding), start=1):
        if line.strip():
            yield RawRow(str(path), lineno, parse_json_line(line) if parse else JsonLine(line))


def read_json(path: Path, encoding: str) -> Iterator[RawRow]:
    """A JSON file holding an array of records (loaded whole: JSON has no line framing)."""
    text = "".join(decoded_lines(path, encoding))
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataValidationError(
            f"{path}:{exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})."
        ) from None
    if not isinstance(doc, list):
        raise DataValidationError(
            f"{path}: expected a JSON array of records at the top level, "
            f"got {type(doc).__name__} (use JSONL for one record per line)."
        )
    for i, value in enumerate(doc):
        yield RawRow(str(path), i, value, unit="row")


def read_parquet(path: Path, encoding: str, batch_rows: int = 4096) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise DataValidationError(f"{path}: not a readable Parquet file ({exc}).") from None
    index = 0
    for batch in pf.iter_batches(batch_size=batch_rows):
        for value in batch.to_pylist():
            yield RawRow(str(path), index, value, unit="row")
            index += 1


def read_csv(path: Path, encoding: str) -> Iterator[RawRow]:
    """CSV/TSV with a header row; every value is text, an empty cell is missing."""
    reader = csv.reader(
        decoded_lines(path, encoding), delimiter="\t" if path.suffix.lower() == ".tsv" else ","
    )
    try:
        header = next(reader)
    except StopIteration:
        return
    start = reader.line_num
    try:
        for cells in reader:
            if not any(c.strip() for c in cells):
                start = reader.line_num
                continue
            if len(cells) != len(header):
                value = Unparsed(
                    "csv_cell_count", f"CSV row has {len(cells)} cells, the header has {len(header)}"
                )
            else:
                value = {k: v for k, v in zip(header, cells) if v != ""}
            yield RawRow(str(path), start + 1, value)
            start = reader.line_num
    except csv.Error as exc:
        raise DataValidationError(f"{path}:{reader.line_num}: not valid CSV ({exc}).") from None


def read_text(path: Path, encoding: str) -> Iterator[RawRow]:
    """A whole .txt/.md file as one raw-text row (continued pre-training)."""
    yield RawRow(str(path), 1, {"text": "".join(decoded_lines(path, encoding))})


READERS = {
    "jsonl": read_jsonl,
    "json": read_json,
    "parquet": read_parquet,
    "csv": read_csv,
    "text": read_text,
}


def read_rows(path: Path, encoding: str = "auto", parse: bool = True) -> Iterator[RawRow]:
    """Raw rows of one file, by its suffix.

    Args:
        parse: False leaves JSONL lines as `JsonLine` for the row stages to parse.

    Raises:
        DataValidationError: decoding or framing errors (bad JSON array, broken CSV).
    """
    kind = SUFFIXES[path.suffix.lower()]
    if kind == "jsonl":
        return read_jsonl(path, encoding, parse)
    return READERS[kind](path, encoding)
