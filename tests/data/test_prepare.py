"""The whole pipeline on real files with the real tiny tokenizer: accounting,
masking, dedup, split, packing, manifest and version."""

import json

import pyarrow.parquet as pq
import pytest

from data import DatasetConfig, DataValidationError, prepare, read_manifest
from data.chat import IGNORE_INDEX
from foundation.hashing import file_sha256

SAMPLE = "samples:internal_faq_ja.jsonl"


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def cp932_faq(folder):
    folder.mkdir()
    lines = [
        "質問,回答",
        "当直の連絡先は,内線ではなく03-1234-5678へ電話してください。",
        "様式の番号は,様式K-204です。",
        "様式の番号は,様式K-204です。",  # exact duplicate
        "空の回答,",  # completion missing
        "ＦＡＱの担当は,ｶﾀｶﾅ表記の総務課です。",
    ]
    (folder / "faq.csv").write_bytes(("\r\n".join(lines) + "\r\n").encode("cp932"))
    (folder / "notes.docx").write_bytes(b"PK")
    return folder


def test_cp932_folder_end_to_end(tmp_path, tiny_model_dir, tok):
    src = cp932_faq(tmp_path / "src")
    cfg = DatasetConfig(
        name="faq",
        path=str(src),
        format="prompt_completion",
        on_error="skip",
        columns={"prompt": "質問", "completion": "回答"},
    )
    m = prepare(cfg, tiny_model_dir, tmp_path / "out")
    assert m["rows"] == {
        "in": 5,
        "out": 3,
        "train": 3,
        "eval": 0,
        "dropped": {"exact_duplicate": 1, "missing_field": 1},
    }
    assert m["pii"]["PHONE"] == 1 and sum(m["pii"].values()) == 1
    assert m["sources"][0]["sha256"] == file_sha256(src / "faq.csv") == m["source"]["sha256"]
    assert m["ignored_files"] == [str(src / "notes.docx")]
    table = pq.read_table(tmp_path / "out" / "tokens.parquet").to_pydict()
    texts = [tok.decode(ids) for ids in table["input_ids"]]
    assert "<PHONE>へ電話" in texts[0] and "1234" not in texts[0]
    assert "FAQの担当は" in texts[2] and "カタカナ表記" in texts[2]  # NFKC
    assert m["tokens"] == sum(map(len, table["input_ids"]))
    dropped = [json.loads(line) for line in (tmp_path / "out" / "dropped.jsonl").read_text().splitlines()]
    assert {(d["line"], d["code"]) for d in dropped} == {(4, "exact_duplicate"), (5, "missing_field")}


def test_every_row_is_accounted_for(tmp_path, tiny_model_dir):
    rows = [{"text": "同じ文書です。" * 5}] * 3 + [{"text": "短"}, {"text": "長い文書。" * 200}, {"oops": 1}]
    (tmp_path / "d.jsonl").write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8"
    )
    cfg = DatasetConfig(
        name="t",
        path=str(tmp_path / "d.jsonl"),
        format="text",
        on_error="skip",
        max_length=64,
        overlength="drop",
        min_tokens=8,
    )
    m = prepare(cfg, tiny_model_dir, tmp_path / "out")
    assert m["rows"]["dropped"] == {"exact_duplicate": 2, "too_long": 1, "too_short": 1, "unknown_field": 1}
    assert m["rows"]["in"] == m["rows"]["out"] + sum(m["rows"]["dropped"].values()) == 6
    table = pq.read_table(tmp_path / "out" / "tokens.parquet").to_pydict()
    assert table["labels"] == table["input_ids"]  # raw text trains every token


def test_truncate_keeps_long_examples_at_max_length(tmp_path, tiny_model_dir):
    (tmp_path / "d.jsonl").write_text(
        json.dumps({"text": "長い文書。" * 200}, ensure_ascii=False), encoding="utf-8"
    )
    m = prepare(
        DatasetConfig(name="t", path=str(tmp_path / "d.jsonl"), format="text", max_length=64),
        tiny_model_dir,
        tmp_path / "out",
    )
    assert m["rows"]["out"] == 1 and m["tokens"] == 64


def test_fail_writes_nothing(tmp_path, tiny_model_dir):
    (tmp_path / "d.jsonl").write_text('{"messages": [{"role": "user", "content": "q"}]}\n', encoding="utf-8")
    with pytest.raises(DataValidationError, match=r"d.jsonl:1: no assistant turn"):
        prepare(DatasetConfig(name="t", path=str(tmp_path / "d.jsonl")), tiny_model_dir, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []  # not even the partial files


def test_eval_split_and_packing(tmp_path, tiny_model_dir, tok):
    plain = prepare(DatasetConfig(name="d", path=SAMPLE), tiny_model_dir, tmp_path / "plain")
    cfg = DatasetConfig(
        name="d",
        path=SAMPLE,
        split={"eval_fraction": 0.3, "seed": 1},
        packing={"enabled": True, "length": 512},
    )
    m = prepare(cfg, tiny_model_dir, tmp_path / "packed")
    assert m["rows"]["train"] + m["rows"]["eval"] == 30 and 0 < m["rows"]["eval"] < 20
    train = pq.read_table(tmp_path / "packed" / "tokens.parquet").to_pydict()
    evals = pq.read_table(tmp_path / "packed" / "eval.parquet").to_pydict()
    assert set(train) == {"input_ids", "labels", "position_ids", "example_lengths"}
    assert sum(map(len, train["example_lengths"])) == m["rows"]["train"] == m["splits"]["train"]["examples"]
    assert len(train["input_ids"]) < m["rows"]["train"] and max(map(len, train["input_ids"])) <= 512
    for ids, labels, pos, lens in zip(
        *(train[k] for k in ("input_ids", "labels", "position_ids", "example_lengths"))
    ):
        starts = [i for i, p in enumerate(pos) if p == 0]
        assert [b - a for a, b in zip(starts, starts[1:] + [len(ids)])] == lens
        assert all(labels[s] == IGNORE_INDEX for s in starts)
    # Packing changes neither the tokens nor what is trained, except each example's first label.
    assert m["tokens"] == plain["tokens"]
    assert m["trained_tokens"] == plain["trained_tokens"]
    assert m["version"] != plain["version"]
    assert sum(map(len, evals["example_lengths"])) == m["rows"]["eval"]


def test_appended_rows_leave_old_rows_on_their_side(tmp_path, tiny_model_dir):
    sample = DatasetConfig(name="d", path=SAMPLE).path
    rows = open(sample, encoding="utf-8").read().splitlines()
    (tmp_path / "d.jsonl").write_text("\n".join(rows[:20]) + "\n", encoding="utf-8")
    cfg = DatasetConfig(name="d", path=str(tmp_path / "d.jsonl"), split={"eval_fraction": 0.3})
    first = prepare(cfg, tiny_model_dir, tmp_path / "v1")
    (tmp_path / "d.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    second = prepare(cfg, tiny_model_dir, tmp_path / "v2")
    sides = {}
    for run in ("v1", "v2"):
        for split, file in (("train", "tokens.parquet"), ("eval", "eval.parquet")):
            for ids in pq.read_table(tmp_path / run / file).column("input_ids").to_pylist():
                sides.setdefault(tuple(ids), set()).add(split)
    assert all(len(s) == 1 for s in sides.values())
    assert second["rows"]["eval"] >= first["rows"]["eval"] > 0 and second["version"] != first["version"]


def test_version_is_stable_and_manifest_is_readable(tmp_path, tiny_model_dir):
    cfg = DatasetConfig(name="d", path=SAMPLE)
    m = prepare(cfg, tiny_model_dir, tmp_path / "a")
    assert (
        prepare(cfg, tiny_model_dir, tmp_path / "b")["version"]
        == m["version"]
        == read_manifest(tmp_path / "a")["version"]
    )
    masked_off = prepare(
        DatasetConfig(name="d", path=SAMPLE, pii={"enabled": False}), tiny_model_dir, tmp_path / "c"
    )
    assert masked_off["version"] != m["version"]  # settings are part of the version


def test_workers_do_not_change_the_result(tmp_path, tiny_model_dir, monkeypatch):
    rows = open(DatasetConfig(name="d", path=SAMPLE).path, encoding="utf-8").read().splitlines()
    (tmp_path / "d.jsonl").write_text(
        "\n".join(rows * 3) + "\n", encoding="utf-8"
    )  # duplicates across batches
    cfg = DatasetConfig(
        name="d", path=str(tmp_path / "d.jsonl"), on_error="skip", split={"eval_fraction": 0.2}
    )
    monkeypatch.setattr("data.pipeline.BATCH_ROWS", 7)  # several batches per worker
    one = prepare(cfg, tiny_model_dir, tmp_path / "one")
    two = prepare(cfg.model_copy(update={"workers": 2}), tiny_model_dir, tmp_path / "two")
    assert one["rows"]["dropped"] == {"exact_duplicate": 60} and one["version"] == two["version"]
    assert one["content_sha256"] == two["content_sha256"]


def test_shipped_example_config_prepares(tiny_model_dir, tmp_path):
    from pathlib import Path

    cfg = DatasetConfig.from_yaml(
        Path(__file__).resolve().parents[2] / "configs" / "data" / "demo_ja_packed.yaml"
    )
    m = prepare(cfg, tiny_model_dir, tmp_path / "out")
    assert (
        m["rows"]["out"] == 30 and m["rows"]["eval"] > 0 and m["packing"] == {"enabled": True, "length": 1024}
    )
    assert m["splits"]["train"]["sequences"] < m["rows"]["train"]


def test_a_large_split_is_written_as_shards_of_one_table(tmp_path, tiny_model_dir, monkeypatch):
    import sys

    monkeypatch.setattr(sys.modules["data.prepare"], "WRITE_TOKENS", 32)  # small row groups: shards turn over
    cfg = DatasetConfig(name="d", path=SAMPLE, split={"eval_fraction": 0.2})
    whole = prepare(cfg, tiny_model_dir, tmp_path / "whole")
    sharded = prepare(cfg.model_copy(update={"shard_tokens": 64}), tiny_model_dir, tmp_path / "sharded")
    parts = sorted(p.name for p in (tmp_path / "sharded" / "tokens.parquet").iterdir())
    assert len(parts) == sharded["splits"]["train"]["shards"] > 2 and parts[0] == "part-00000.parquet"
    assert whole["splits"]["train"]["shards"] == 1
    assert (
        pq.read_table(tmp_path / "sharded" / "tokens.parquet").to_pydict()
        == pq.read_table(tmp_path / "whole" / "tokens.parquet").to_pydict()
    )
    assert sharded["version"] == whole["version"]  # the shard size is layout, not content
    # A second run into the same folder replaces the split whole, with no shard of the first left behind.
    again = prepare(cfg.model_copy(update={"shard_tokens": 256}), tiny_model_dir, tmp_path / "sharded")
    assert (
        len(list((tmp_path / "sharded" / "tokens.parquet").iterdir()))
        == again["splits"]["train"]["shards"]
        < len(parts)
    )
    assert not list(tmp_path.glob("sharded/*.partial")) and not list(tmp_path.glob("sharded/*.old"))


def test_rows_are_counted_across_chunks_and_workers(tmp_path, tiny_model_dir, monkeypatch):
    """JSONL files are cut into chunks of lines that the worker processes decode:
    blank lines, chunk edges and two files still give every row's count and line,
    and a bad byte in a late chunk fails the run naming the file and byte."""
    import data.pipeline

    monkeypatch.setattr(data.pipeline, "BATCH_ROWS", 3)
    src = tmp_path / "src"
    src.mkdir()
    texts = ["".join(chr(0x4E00 + (i * 211 + j * j * 7) % 5000) for j in range(40)) for i in range(10)]
    lines = [json.dumps({"text": t}, ensure_ascii=False) for t in texts]
    (src / "a.jsonl").write_text("\n".join(lines[:4] + ["", ""] + lines[4:7]) + "\n", encoding="utf-8")
    (src / "b.jsonl").write_text("\n".join(lines[7:] + [lines[0]]) + "\n", encoding="utf-8")
    cfg = DatasetConfig(name="t", path=str(src), format="text", workers=2, on_error="skip")
    m = prepare(cfg, tiny_model_dir, tmp_path / "out")
    assert m["rows"]["in"] == 11 and m["rows"]["dropped"] == {"exact_duplicate": 1}
    assert [s["rows_in"] for s in m["sources"]] == [7, 4]
    dropped = [json.loads(line) for line in (tmp_path / "out" / "dropped.jsonl").read_text().splitlines()]
    assert dropped == [
        {
            "file": str(src / "b.jsonl"),
            "line": 4,
            "code": "exact_duplicate",
            "reason": "exact duplicate of an earlier row",
        }
    ]
    good = (src / "a.jsonl").read_bytes()
    (src / "a.jsonl").write_bytes(good + b'{"text": "\x82\xa0"}\n')
    with pytest.raises(DataValidationError, match=rf"a.jsonl: byte {len(good) + 10}: not valid utf-8"):
        prepare(cfg.model_copy(update={"encoding": "utf-8"}), tiny_model_dir, tmp_path / "out2")


def test_token_shards_are_delta_encoded_and_zstd_compressed(tmp_path, tiny_model_dir):
    """The shards' encoding (see data.prepare.PARQUET_OPTIONS) is one every Parquet reader knows."""
    src = cp932_faq(tmp_path / "src")
    cfg = DatasetConfig(
        name="faq",
        path=str(src),
        format="prompt_completion",
        on_error="skip",
        columns={"prompt": "質問", "completion": "回答"},
        max_length=64,
        packing={"enabled": True, "length": 64},
    )
    prepare(cfg, tiny_model_dir, tmp_path / "out")
    shard = next((tmp_path / "out" / "tokens.parquet").iterdir())
    meta = pq.ParquetFile(shard).metadata
    for i in range(meta.num_columns):
        column = meta.row_group(0).column(i)
        assert "DELTA_BINARY_PACKED" in column.encodings and column.compression == "ZSTD", column
    table = pq.read_table(tmp_path / "out" / "tokens.parquet").to_pydict()
    assert all(p[0] == 0 for p in table["position_ids"]) and sum(map(sum, table["example_lengths"])) == sum(
        map(len, table["input_ids"])
    )
