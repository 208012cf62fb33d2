"""`sekisho data prepare`'s progress on stderr: the last line's counts are the
manifest's (rows in, kept, dropped by reason); nothing is shown when stderr is not a
terminal unless --progress asks for it."""

from __future__ import annotations

import io
import json
import re

import pytest

from data import DatasetConfig, prepare
from sekisho.commands.data import PrepareProgress


@pytest.fixture(scope="module")
def rows_with_drops(tmp_path_factory, sample_conversations):
    """The sample conversations, every one twice (exact duplicates), and one invalid row."""
    folder = tmp_path_factory.mktemp("progress-data")
    rows = [json.dumps({"messages": c}, ensure_ascii=False) for c in sample_conversations]
    data = folder / "rows.jsonl"
    data.write_text("\n".join(rows + rows + ['{"messages": "not a list"}']) + "\n", encoding="utf-8")
    config = folder / "progress.yaml"
    config.write_text(f"name: progress\npath: {data}\nformat: chat\non_error: skip\n", encoding="utf-8")
    return config, len(rows)


def counts(line: str) -> tuple[int, int, dict[str, int]]:
    """(rows, kept, dropped by reason) of one progress line."""
    m = re.fullmatch(r"rows (\d+) \([\d,]+ rows/s\)  kept (\d+)  dropped (\d+)(?:: (.*))?", line)
    assert m, line
    by_reason = dict((code, int(n)) for code, n in (p.split() for p in (m.group(4) or "").split(", ") if p))
    assert sum(by_reason.values()) == int(m.group(3))
    return int(m.group(1)), int(m.group(2)), by_reason


def test_the_last_line_is_the_manifests_counts(rows_with_drops, tiny_model_dir, tmp_path):
    config, n = rows_with_drops
    stream = io.StringIO()
    progress = PrepareProgress(stream, terminal=False, every_s=0.0)
    manifest = prepare(DatasetConfig.from_yaml(config), tiny_model_dir, tmp_path / "out", progress=progress)
    progress.finish()
    lines = stream.getvalue().splitlines()
    rows, kept, dropped = counts(lines[-1])
    assert rows == manifest["rows"]["in"] == 2 * n + 1
    assert kept == manifest["rows"]["out"] == n
    assert dropped == manifest["rows"]["dropped"] and sorted(dropped) == [
        "exact_duplicate",
        "invalid_json",
    ]
    assert all(counts(line)[0] <= rows for line in lines)  # running counts, never past the total


def test_terminal_redraws_one_line(rows_with_drops, tiny_model_dir, tmp_path):
    config, _ = rows_with_drops
    stream = io.StringIO()
    progress = PrepareProgress(stream, terminal=True)
    prepare(DatasetConfig.from_yaml(config), tiny_model_dir, tmp_path / "out", progress=progress)
    progress.finish()
    text = stream.getvalue()
    assert text.startswith("\r") and text.endswith("\x1b[K\n") and text.count("\n") == 1
    counts(text.rsplit("\r", 1)[1].removesuffix("\x1b[K\n"))


def test_cli_is_quiet_off_a_terminal_unless_asked(rows_with_drops, tiny_model_dir, tmp_path, capsys):
    from airlock import import_model
    from sekisho.cli import main

    config, n = rows_with_drops
    version = import_model(tiny_model_dir, "progress-base").version
    args = ["data", "prepare", str(config), "--model", f"progress-base/{version}", "--out"]
    assert main([*args, str(tmp_path / "quiet")]) == 0
    assert "rows/s" not in capsys.readouterr().err
    assert main([*args, str(tmp_path / "shown"), "--progress"]) == 0
    rows, kept, _ = counts(capsys.readouterr().err.splitlines()[-1])
    assert (rows, kept) == (2 * n + 1, n)
