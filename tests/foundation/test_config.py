"""Configs: strict, with errors that name file, line and field path."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from foundation import ConfigError
from sekisho.commands.config import CONFIG_KINDS, config_class

REPO = Path(__file__).resolve().parents[2]
ALL_CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def test_configs_folder_is_not_empty():
    kinds = {p.parent.name for p in ALL_CONFIGS}
    assert set(CONFIG_KINDS) <= kinds


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_config_loads_and_says_how_it_is_used(path):
    assert path.read_text(encoding="utf-8").startswith("# Used by: sekisho "), (
        "every shipped YAML starts with the command that uses it"
    )
    config_class(path).from_yaml(path)


def write(tmp_path, kind, text):
    d = tmp_path / "configs" / kind
    d.mkdir(parents=True, exist_ok=True)
    p = d / "x.yaml"
    p.write_text(text)
    return p


def test_unknown_key_is_reported_with_file_line_and_field(tmp_path):
    from train import LoraJobConfig

    p = write(
        tmp_path,
        "train",
        "name: j\nbase_model: b@production\ndataset: d.yaml\n"
        "register_as: a\noptim:\n  lr: 0.001\n  stpes: 10\n",
    )
    with pytest.raises(ConfigError) as e:
        LoraJobConfig.from_yaml(p)
    assert f"{p}:7: optim.stpes: unknown key" in str(e.value)


def test_wrong_type_names_field_and_value(tmp_path):
    from serve import ServeAppConfig

    p = write(tmp_path, "serve", "name: a\nmodels:\n  - name: m\n    source: /x\n    num_replicas: four\n")
    with pytest.raises(ConfigError) as e:
        ServeAppConfig.from_yaml(p)
    msg = str(e.value)
    assert f"{p}:5: models.0.num_replicas:" in msg and "'four'" in msg


def test_missing_required_field(tmp_path):
    from data import DatasetConfig

    p = write(tmp_path, "data", "name: d\n")
    with pytest.raises(ConfigError, match=r"x.yaml:1: path: required field is missing"):
        DatasetConfig.from_yaml(p)


def test_malformed_yaml_and_missing_file(tmp_path):
    from data import DatasetConfig

    p = write(tmp_path, "data", "name: d\npath: [unclosed\n")
    with pytest.raises(ConfigError, match=r"x.yaml:\d+: not valid YAML"):
        DatasetConfig.from_yaml(p)
    with pytest.raises(ConfigError, match="config file not found"):
        DatasetConfig.from_yaml(tmp_path / "nope.yaml")


def test_validators_reject_instead_of_rewriting():
    from train import OptimSettings

    with pytest.raises(ValidationError, match="warmup_steps"):
        OptimSettings(steps=10, warmup_steps=20)
    with pytest.raises(ValidationError):
        OptimSettings(lr=-1)
