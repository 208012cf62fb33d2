"""`sekisho cluster up|down --dry-run`: the token is created 0600 before the
config is written, the config is the one rendered from the inventory (valid for
`ray up`), and the command line is one Ray's own CLI accepts. Nothing is faked:
the real `ray up` is not run because it would SSH to the nodes."""

import json
import stat
from pathlib import Path

import yaml
from ray.scripts.scripts import down as ray_down
from ray.scripts.scripts import up as ray_up

from sekisho.cli import main

REPO = Path(__file__).resolve().parents[2]


def _inventory(tmp_path) -> Path:
    doc = yaml.safe_load((REPO / "configs" / "cluster" / "reference.yaml").read_text())
    doc["ray"]["auth_token_file"] = str(tmp_path / "launcher" / "auth_token")
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _printed(out: str) -> tuple[Path, list[str]]:
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    return Path(lines["config"]), lines["command"].split()


def test_up_dry_run_makes_the_token_writes_the_config_and_prints_ray_up(tmp_path, capsys):
    inventory = _inventory(tmp_path)
    home = tmp_path / "home"
    assert main(["--home", str(home), "cluster", "up", str(inventory), "--dry-run"]) == 0
    config_file, command = _printed(capsys.readouterr().out)
    assert config_file == home / "cluster" / "sekisho-ref.ray-up.yaml"
    assert Path(command[0]).name == "ray" and command[1:] == [
        "up",
        "-y",
        "--no-config-cache",
        "--disable-usage-stats",
        str(config_file),
    ]
    ray_up.make_context("ray up", command[2:])  # Ray's own CLI parses the arguments

    token = tmp_path / "launcher" / "auth_token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and len(token.read_text()) == 64
    config = yaml.safe_load(config_file.read_text())
    assert config["provider"]["type"] == "local" and config["provider"]["head_ip"] == "10.20.0.10"
    assert config["file_mounts"] == {"~/.sekisho/ray/auth_token": str(token)}
    assert "chmod 600 ~/.sekisho/ray/auth_token" in config["setup_commands"][0]
    assert token.read_text() not in json.dumps(config)

    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(config))  # what `ray up` checks first

    # a second `up` keeps the token (the nodes already have it)
    first = token.read_text()
    assert main(["--home", str(home), "cluster", "up", str(inventory), "--dry-run"]) == 0
    assert token.read_text() == first


def test_down_dry_run_prints_ray_down_on_the_same_config(tmp_path, capsys):
    inventory = _inventory(tmp_path)
    home = tmp_path / "home"
    assert main(["--home", str(home), "cluster", "down", str(inventory), "--dry-run"]) == 0
    config_file, command = _printed(capsys.readouterr().out)
    assert command[1:] == ["down", "-y", str(config_file)] and config_file.exists()
    ray_down.make_context("ray down", command[2:])


def test_up_with_a_broken_inventory_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "inventory.yaml"
    bad.write_text(_inventory(tmp_path).read_text().replace("gcs_port: 6379", "gcs_port: 99999"))
    assert main(["--home", str(tmp_path), "cluster", "up", str(bad), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:" in err and "ray.gcs_port" in err and "Traceback" not in err
