"""`sekisho data inspect`: examples as the model sees them, trained text marked."""

import subprocess
import sys

from data import DatasetConfig, prepare, render_example
from data.chat import IGNORE_INDEX
from data.preview import marked_text

SAMPLE = "samples:internal_faq_ja.jsonl"


def test_render_marks_exactly_the_trained_tokens(tiny_model_dir, sample_conversations):
    from transformers import AutoTokenizer

    from data import tokenize_conversation

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    conv = sample_conversations[0]
    ex = tokenize_conversation(tok, conv, 256)
    spans = render_example(tok, ex["input_ids"], ex["labels"])
    assert "".join(s.text for s in spans) == tok.decode(ex["input_ids"])
    assert [s.text for s in spans if s.trained] == [conv[1]["content"] + tok.eos_token]
    assert f"⟦{conv[1]['content']}{tok.eos_token}⟧" in marked_text(spans)


def test_render_shows_packed_boundaries(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    a, b = tok("一つ目")["input_ids"], tok("二つ目")["input_ids"]
    spans = render_example(tok, a + b, [IGNORE_INDEX] * len(a) + b, list(range(len(a))) + list(range(len(b))))
    assert [(s.example, s.trained) for s in spans] == [(0, False), (1, True)]
    assert "──── example 2 ────" in marked_text(spans)


def sekisho(*args):
    return subprocess.run(
        [sys.executable, "-m", "sekisho", *args], capture_output=True, text=True, timeout=120
    )


def test_inspect_prints_manifest_and_marked_examples(tmp_path, tiny_model_dir, sample_conversations):
    m = prepare(
        DatasetConfig(name="demo", path=SAMPLE, packing={"enabled": True, "length": 256}),
        tiny_model_dir,
        tmp_path / "datasets" / "demo",
    )
    r = sekisho("--home", str(tmp_path), "data", "inspect", "demo", "-n", "1", "--plain")
    assert r.returncode == 0, r.stderr
    assert f"dataset demo @ {m['version']}" in r.stdout and "rows in / out" in r.stdout
    assert f"⟦{sample_conversations[0][1]['content']}" in r.stdout and "──── example 2 ────" in r.stdout


def test_inspect_of_a_missing_dataset_is_a_user_error(tmp_path):
    r = sekisho("--home", str(tmp_path), "data", "inspect", "nothing")
    assert r.returncode == 2 and "no prepared dataset here" in r.stderr and "Traceback" not in r.stderr
