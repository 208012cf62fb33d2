"""Readers: every file type, encodings (UTF-8, BOM, CP932 configured and detected),
and decoding errors that name the file and byte offset."""

import json

import pytest

from data import DataValidationError
from data.readers import Unparsed, detect_encoding, list_sources, read_rows

QA = "第七倉庫の合言葉は何ですか。"


def values(path, encoding="auto"):
    return [(r.line, r.value) for r in read_rows(path, encoding)]


def test_jsonl_lines_are_numbered_and_bad_json_is_kept_for_validation(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"text": "一"}\n\n{broken\n{"text": "二"}\n', encoding="utf-8")
    rows = values(p)
    assert [line for line, _ in rows] == [1, 3, 4]
    assert rows[0][1] == {"text": "一"} and isinstance(rows[1][1], Unparsed)
    assert rows[1][1].code == "invalid_json"


def test_utf8_bom_is_not_part_of_the_first_row(tmp_path):
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps({"text": QA}, ensure_ascii=False).encode())
    assert detect_encoding(p, "auto") == "utf-8-sig"
    assert values(p) == [(1, {"text": QA})]


def test_json_array_rows_are_indexed(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(json.dumps([{"text": "一"}, {"text": "二"}], ensure_ascii=False), encoding="utf-8")
    rows = list(read_rows(p))
    assert [(r.line, r.unit) for r in rows] == [(0, "row"), (1, "row")]


def test_json_that_is_not_an_array_is_a_user_error(tmp_path):
    p = tmp_path / "a.json"
    p.write_text('{"text": "一"}', encoding="utf-8")
    with pytest.raises(DataValidationError, match="expected a JSON array"):
        list(read_rows(p))


def test_parquet_rows_stream_with_their_index(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "a.parquet"
    pq.write_table(
        pa.table({"prompt": [f"q{i}" for i in range(10)], "completion": ["a"] * 10}), p, row_group_size=3
    )
    rows = list(read_rows(p))
    assert [r.line for r in rows] == list(range(10)) and rows[7].value == {"prompt": "q7", "completion": "a"}


def test_corrupt_parquet_names_the_file(tmp_path):
    p = tmp_path / "bad.parquet"
    p.write_bytes(b"not parquet at all")
    with pytest.raises(DataValidationError, match="bad.parquet: not a readable Parquet file"):
        list(read_rows(p))


def cp932_csv(tmp_path):
    p = tmp_path / "faq.csv"
    p.write_bytes(
        "質問,回答\r\n".encode("cp932")
        + f'"{QA}","合言葉は①「青い灯台」です。"\r\n'.encode("cp932")
        + "髙橋さんの内線は,\"1234,5678\"\r\n".encode("cp932")
    )
    return p


def test_cp932_csv_detected_and_configured(tmp_path):
    p = cp932_csv(tmp_path)
    assert detect_encoding(p, "auto") == "cp932"
    expected = [
        (2, {"質問": QA, "回答": "合言葉は①「青い灯台」です。"}),
        (3, {"質問": "髙橋さんの内線は", "回答": "1234,5678"}),
    ]
    assert values(p) == expected  # ① and 髙 exist in CP932 only, not in plain Shift_JIS
    assert values(p, "cp932") == expected


def test_cp932_file_read_as_utf8_names_the_byte_offset(tmp_path):
    p = cp932_csv(tmp_path)
    with pytest.raises(DataValidationError, match=r"faq.csv: byte 0: not valid utf-8"):
        list(read_rows(p, "utf-8"))


def test_decoding_error_offset_points_at_the_bad_byte(tmp_path):
    p = tmp_path / "mixed.jsonl"
    good = '{"text": "一"}\n'.encode()
    p.write_bytes(good + b'{"text": "\x82\xa0"}\n')  # a Shift_JIS character in a UTF-8 file
    with pytest.raises(DataValidationError) as e:
        list(read_rows(p, "utf-8"))
    assert f"mixed.jsonl: byte {len(good) + 10}:" in str(e.value)


def test_undetectable_encoding_is_a_user_error(tmp_path):
    p = tmp_path / "x.txt"
    p.write_bytes(b"\x80\x81\xff\xfe" * 10)
    with pytest.raises(DataValidationError, match="neither UTF-8 nor CP932"):
        list(read_rows(p))


def test_csv_row_with_wrong_cell_count_is_a_row_problem(tmp_path):
    p = tmp_path / "a.tsv"
    p.write_text("prompt\tcompletion\nq\ta\nonly one\n", encoding="utf-8")
    rows = values(p)
    assert rows[0] == (2, {"prompt": "q", "completion": "a"})
    assert rows[1][0] == 3 and rows[1][1].code == "csv_cell_count"


def test_folder_reads_supported_files_sorted_and_lists_the_rest(tmp_path):
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / "b.md").write_text("# 見出し\n本文", encoding="utf-8")
    (tmp_path / "docs" / "sub" / "a.txt").write_bytes("シフトJISの文書".encode("cp932"))
    (tmp_path / "docs" / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / "docs" / ".hidden.txt").write_text("x")
    files, ignored = list_sources(tmp_path / "docs")
    assert [f.name for f in files] == ["b.md", "a.txt"] and [f.name for f in ignored] == ["image.png"]
    assert [r.value for f in files for r in read_rows(f)] == [
        {"text": "# 見出し\n本文"},
        {"text": "シフトJISの文書"},
    ]


def test_missing_path_and_unsupported_file(tmp_path):
    with pytest.raises(DataValidationError, match="not found"):
        list_sources(tmp_path / "nope")
    (tmp_path / "a.xlsx").write_bytes(b"PK")
    with pytest.raises(DataValidationError, match="unsupported file type '.xlsx'"):
        list_sources(tmp_path / "a.xlsx")


def test_utf16_export_is_named_not_misread(tmp_path):
    p = tmp_path / "excel.tsv"
    p.write_bytes("質問\t回答\n".encode("utf-16"))
    with pytest.raises(DataValidationError, match=r"excel.tsv: byte \d+: UTF-16 or binary content"):
        list(read_rows(p))


@pytest.mark.parametrize("lines", [1, 2, 3, 1000])
def test_jsonl_chunks_frame_the_same_rows_as_the_reader(tmp_path, lines):
    from data.readers import jsonl_chunks

    p = tmp_path / "c.jsonl"
    body = ['{"text": "一"}', "", "  ", "{broken", '{"text": "二"}', "", '{"text": "三"}']
    p.write_bytes(b"\xef\xbb\xbf" + "\n".join(body).encode())
    chunks = list(jsonl_chunks(p, "auto", lines))
    assert [len(c.lines) for c in chunks][:-1] == [lines] * (len(chunks) - 1)
    framed = [r for c in chunks for r in c.rows()]
    assert [(r.file, r.line, r.value.text) for r in framed] == [
        (r.file, r.line, r.value.text) for r in read_rows(p, "auto", parse=False)
    ]
    assert [r.line for r in framed] == [1, 4, 5, 7]


def test_jsonl_chunk_decoding_error_names_the_byte_in_the_file(tmp_path):
    from data.readers import jsonl_chunks

    p = tmp_path / "mixed.jsonl"
    good = '{"text": "一"}\n'.encode() * 5
    p.write_bytes(good + b'{"text": "\x82\xa0"}\n')
    *_, last = jsonl_chunks(p, "utf-8", 2)
    with pytest.raises(DataValidationError, match=rf"mixed.jsonl: byte {len(good) + 10}: not valid utf-8"):
        last.rows()
