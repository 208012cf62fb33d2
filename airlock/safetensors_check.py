"""Check a safetensors file's header without loading a tensor.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON
describing every tensor (dtype, shape, [begin, end) offsets into the data
section), then the data section. A header that lies about any of these can make
a loader read out of bounds or alias tensors, so every claim is checked against
the others and against the file size.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from airlock.errors import ModelImportRefused

# Bits per element of every dtype safetensors 0.8 defines.
DTYPE_BITS = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "F64": 64,
    "I64": 64,
    "U64": 64,
    "C64": 64,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the limit the safetensors library itself enforces


@dataclass(frozen=True)
class SafetensorsHeader:
    """What a checked header says: its size and hash, the tensors, the data length
    and the number of elements (parameters) the tensors hold."""

    header_bytes: int
    header_sha256: str
    names: frozenset[str]
    data_bytes: int
    elements: int = 0

    @property
    def tensors(self) -> int:
        return len(self.names)

    @property
    def data_start(self) -> int:
        return 8 + self.header_bytes


def _refuse(path: Path, reason: str) -> ModelImportRefused:
    return ModelImportRefused(f"{path}: refused: not a valid safetensors file: {reason}.")


def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"duplicate keys {dup} in the header")
    return dict(pairs)


def _tensor_bytes(path: Path, name: str, info) -> tuple[int, int]:
    """Validate one tensor entry; returns its (begin, end) offsets."""
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise _refuse(path, f"tensor {name!r} must have exactly dtype, shape and data_offsets")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in DTYPE_BITS:
        raise _refuse(path, f"tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise _refuse(path, f"tensor {name!r} has a bad shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(o) is int and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise _refuse(path, f"tensor {name!r} has bad data_offsets {offsets!r}")
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if bits % 8 or offsets[1] - offsets[0] != bits // 8:
        raise _refuse(
            path,
            f"tensor {name!r} claims {dtype}{shape} ({bits / 8:g} bytes) but its "
            f"data_offsets {offsets} span {offsets[1] - offsets[0]} bytes",
        )
    return offsets[0], offsets[1]


def read_header(path: str | Path, max_header_bytes: int = MAX_HEADER_BYTES) -> SafetensorsHeader:
    """Read and check the header of a safetensors file (no tensor data is read).

    Args:
        path: the file.
        max_header_bytes: largest header accepted.

    Returns:
        The checked header's summary.

    Raises:
        ModelImportRefused: naming the file and the first claim that does not hold.
    """
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as fh:
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise _refuse(path, f"only {size} bytes, shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", prefix)
        if n > max_header_bytes or n > size - 8:
            raise _refuse(
                path,
                f"header length {n} exceeds the limit ({max_header_bytes}) or the file size ({size} bytes)",
            )
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _refuse(path, f"header is not valid JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(header, dict):
        raise _refuse(path, "header is not a JSON object")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _refuse(path, "__metadata__ must map strings to strings")
    spans = sorted(_tensor_bytes(path, name, info) for name, info in header.items())
    data_bytes = size - 8 - n
    cursor = 0
    for begin, end in spans:
        if begin != cursor:
            kind = "overlap" if begin < cursor else "a gap"
            raise _refuse(path, f"tensor data has {kind} at byte {min(begin, cursor)} of the data section")
        cursor = end
    if cursor != data_bytes:
        raise _refuse(path, f"tensors cover {cursor} bytes but the data section holds {data_bytes}")
    elements = sum(math.prod(info["shape"]) for info in header.values())
    return SafetensorsHeader(
        n, hashlib.sha256(prefix + raw).hexdigest(), frozenset(header), data_bytes, elements
    )
