"""The Sekisho home: `~/.sekisho` by default, so every folder finds the same state;
`--home` before the group or after the command; `sekisho --version`."""

from __future__ import annotations

import stat
import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest

from sekisho.cli import build_parser
from sekisho.cli import main as cli
from sekisho.cli_common import subcommands

SEKISHO = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "sekisho"


@pytest.fixture(autouse=True)
def _no_gateway_db(monkeypatch):
    monkeypatch.delenv("SEKISHO_GATEWAY_DB", raising=False)


def key_names(capsys) -> list[str]:
    return [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()]


def test_the_default_home_is_the_same_from_every_folder(tmp_path, monkeypatch, capsys):
    user, here, there = tmp_path / "user", tmp_path / "here", tmp_path / "there"
    for d in (user, here, there):
        d.mkdir()
    monkeypatch.setenv("HOME", str(user))
    monkeypatch.delenv("SEKISHO_HOME", raising=False)

    monkeypatch.chdir(here)
    assert cli(["keys", "create", "--name", "ops", "--models", "tiny"]) == 0
    capsys.readouterr()
    monkeypatch.chdir(there)
    assert cli(["keys", "list"]) == 0
    assert key_names(capsys) == ["ops"]

    home = user / ".sekisho"
    assert (home / "gateway.db").is_file()
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert not (here / ".sekisho").exists() and not (there / ".sekisho").exists()


@pytest.mark.parametrize("create_first", [True, False], ids=["before-then-after", "after-then-before"])
def test_home_before_the_group_or_after_the_command(tmp_path, capsys, create_first):
    home, other = str(tmp_path / "home"), str(tmp_path / "other")
    before = ["--home", home, "keys", "create", "--name", "ops", "--models", "tiny"]
    after = ["keys", "create", "--name", "ops", "--models", "tiny", "--home", home]
    assert cli(before if create_first else after) == 0
    capsys.readouterr()

    assert cli(["keys", "list", "--home", home] if create_first else ["--home", home, "keys", "list"]) == 0
    assert key_names(capsys) == ["ops"]
    assert cli(["keys", "list", "--home", other]) == 0
    assert key_names(capsys) == []
    assert (tmp_path / "home" / "gateway.db").is_file()


def test_home_after_the_command_wins_over_the_one_before(tmp_path):
    args = build_parser().parse_args(["--home", "a", "serve", "up", "app.yaml", "--home", "b"])
    assert args.home == "b"
    args = build_parser().parse_args(["--home", "a", "serve", "up", "app.yaml"])
    assert args.home == "a"  # the command's own --home, left unset, keeps the value before the group


def test_every_group_and_command_takes_home():
    missing = [
        name
        for name, parser, _ in subcommands(build_parser())
        if "--home" not in parser._option_string_actions
    ]
    assert missing == []


def test_version_prints_the_installed_version():
    r = subprocess.run([str(SEKISHO), "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"sekisho {version('sekisho')}"
