"""Safetensors headers are checked claim by claim, without loading a tensor."""

from __future__ import annotations

import json
import pickle
import struct

import pytest

from airlock import ModelImportRefused
from airlock.safetensors_check import read_header


def split(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def write(path, header_text: str, data: bytes, length: int | None = None):
    body = header_text.encode()
    path.write_bytes(struct.pack("<Q", len(body) if length is None else length) + body + data)


def first_tensor(header):
    return next(k for k in header if k != "__metadata__")


def test_real_file_passes_and_agrees_with_the_library(tiny_model_dir):
    from safetensors import safe_open

    path = tiny_model_dir / "model.safetensors"
    checked = read_header(path)
    with safe_open(str(path), "np") as f:
        assert checked.tensors == len(list(f.keys()))
    assert checked.data_start + checked.data_bytes == path.stat().st_size


def _shape_lies(h, data):
    t = first_tensor(h)
    h[t]["shape"] = [d * 2 for d in h[t]["shape"]]
    return json.dumps(h), data, f"tensor {t!r} claims"


def _overlap(h, data):
    a, b = [k for k in h if k != "__metadata__"][:2]
    h[b] = dict(h[a])
    return json.dumps(h), data, "overlap"


def _unknown_dtype(h, data):
    h[first_tensor(h)]["dtype"] = "PICKLE"
    return json.dumps(h), data, "unknown dtype 'PICKLE'"


def _trailing_bytes(h, data):
    return json.dumps(h), data + b"\0" * 64, "data section holds"


def _truncated(h, data):
    return json.dumps(h), data[:-4], "data section holds"


def _offset_past_end(h, data):
    t = first_tensor(h)
    begin, end = h[t]["data_offsets"]
    h[t]["data_offsets"] = [begin + 10**12, end + 10**12]
    return json.dumps(h), data, "gap"


def _duplicate_key(h, data):
    t = first_tensor(h)
    text = json.dumps(h)
    return text[:-1] + f', "{t}": {json.dumps(h[t])}}}', data, "duplicate keys"


def _not_json(h, data):
    return "{" + "x" * 40, data, "not valid JSON"


@pytest.mark.parametrize(
    "lie",
    [
        _shape_lies,
        _overlap,
        _unknown_dtype,
        _trailing_bytes,
        _truncated,
        _offset_past_end,
        _duplicate_key,
        _not_json,
    ],
)
def test_lying_header_is_refused(tmp_path, tiny_model_dir, lie):
    header, data = split(tiny_model_dir / "model.safetensors")
    text, data, reason = lie(header, data)
    path = tmp_path / "model.safetensors"
    write(path, text, data)
    with pytest.raises(ModelImportRefused) as exc:
        read_header(path)
    assert str(path) in str(exc.value) and reason in str(exc.value)


def test_header_length_beyond_file_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    write(path, "{}", b"", length=1 << 40)
    with pytest.raises(ModelImportRefused, match="header length 1099511627776 exceeds"):
        read_header(path)


def test_pickle_named_safetensors_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps({"weight": list(range(100))}, protocol=4))
    with pytest.raises(ModelImportRefused, match="not a valid safetensors file"):
        read_header(path)
