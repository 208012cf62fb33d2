"""`sekisho config explain KIND`: every field of every config kind reaches the user,
with its type, default and a description of a line or two."""

import pytest

from sekisho.cli import main
from sekisho.commands.config import CONFIG_KINDS, config_models

MAX_DESCRIPTION = 200  # two lines of the explain output


@pytest.mark.parametrize("kind", sorted(CONFIG_KINDS))
def test_every_field_is_explained_in_a_line_or_two(kind):
    docs = [d for cls in config_models(kind).values() for d in cls.explain()]
    assert docs
    missing = [d.path for d in docs if not d.description.strip()]
    long = [f"{d.path} ({len(d.description)} chars)" for d in docs if len(d.description) > MAX_DESCRIPTION]
    assert missing == [] and long == []


def test_explain_prints_nested_fields_with_type_default_and_description(capsys):
    assert main(["config", "explain", "serve"]) == 0
    out = capsys.readouterr().out
    assert "  models[].engine.max_model_len: int = 512\n      Longest prompt + completion in tokens.\n" in out
    assert "  name: str = (required)\n" in out


def test_train_explains_each_recipe(capsys):
    assert main(["config", "explain", "train"]) == 0
    out = capsys.readouterr().out
    assert {"sft_lora", "sft_full", "cpt"} <= {
        line.split()[0] for line in out.splitlines() if line and not line.startswith(" ")
    }


def test_an_unknown_kind_is_refused_naming_the_kinds(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["config", "explain", "servve"])
    assert exc.value.code == 2 and "invalid choice: 'servve'" in capsys.readouterr().err
