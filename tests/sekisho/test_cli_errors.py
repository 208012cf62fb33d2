"""User mistakes: one paragraph naming file/line/field, exit status 2, no traceback."""

import subprocess
import sys

import pytest


def sekisho(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "sekisho", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


@pytest.fixture
def configs(tmp_path):
    for kind in ("data", "train", "serve"):
        (tmp_path / "configs" / kind).mkdir(parents=True)
    return tmp_path / "configs"


def assert_user_error(r, *needles):
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    assert "sekisho: error: " in r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


def test_unknown_key(configs):
    p = configs / "data" / "d.yaml"
    p.write_text("name: d\npath: x.jsonl\nmax_lenght: 10\n")
    assert_user_error(sekisho("config", "check", str(p)), f"{p}:3: max_lenght: unknown key")


def test_wrong_type(configs):
    p = configs / "train" / "t.yaml"
    p.write_text(
        "name: t\nbase_model: b@production\ndataset: d.yaml\nregister_as: a\nscaling:\n  num_workers: many\n"
    )
    assert_user_error(sekisho("config", "check", str(p)), f"{p}:6: scaling.num_workers", "'many'")


def test_missing_and_malformed_files(configs):
    assert_user_error(
        sekisho("config", "check", str(configs / "serve" / "none.yaml")), "config file not found"
    )
    p = configs / "serve" / "bad.yaml"
    p.write_text("name: a\nmodels: [\n")
    assert_user_error(sekisho("config", "check", str(p)), "not valid YAML")


def test_dataset_row_without_assistant_turn(configs, tmp_path):
    (tmp_path / "rows.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'
        '{"messages": [{"role": "user", "content": "only a question"}]}\n'
    )
    p = configs / "data" / "d.yaml"
    p.write_text("name: d\npath: ../../rows.jsonl\n")
    r = sekisho("--home", str(tmp_path / "home"), "data", "prepare", str(p), "--model", "nothing@production")
    assert_user_error(r, "rows.jsonl:2: no assistant turn")


def test_unknown_registry_model(configs, tmp_path):
    p = configs / "data" / "d.yaml"
    p.write_text("name: d\npath: samples:internal_faq_ja.jsonl\n")
    r = sekisho("--home", str(tmp_path / "home"), "data", "prepare", str(p), "--model", "nothing@production")
    assert_user_error(r, "model 'nothing@production' not found")


def test_bad_arguments_exit_2():
    r = sekisho("train")
    assert r.returncode == 2 and "Traceback" not in r.stderr
