"""The README's team path ("A team's day on the cluster") is a script a team
copies: every `sekisho` command in it parses with the CLI as it stands, the
configs it names exist and validate, and the files it points at are where
Sekisho writes them."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from cluster import Inventory
from cluster.scrape_config import scrape_key_file, write_scrape_config
from sekisho.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
SECTION = "## A team's day on the cluster"
SEPARATORS = {";", "|", "||", "&&", "(", ")", ">", ">>", "&"}


def block(readme: str, heading: str) -> str:
    """The first ```sh block after `heading`, continuation lines joined."""
    after = readme.split(heading + "\n", 1)
    assert len(after) == 2, f"README.md has no section {heading!r}"
    match = re.search(r"```sh\n(.*?)```", after[1], re.S)
    assert match, f"README.md: no ```sh block under {heading!r}"
    return match.group(1).replace("\\\n", " ")


def commands(script: str) -> list[tuple[int, list[str]]]:
    """(line in the block, words) of every simple command of the script."""
    out = []
    for number, line in enumerate(script.splitlines(), 1):
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.commenters = "#"
        lexer.whitespace_split = True
        words: list[str] = []
        for token in [*lexer, ";"]:
            if token in SEPARATORS:
                if words:
                    out.append((number, words))
                words = []
            else:
                words.append(token)
    return out


def parse(words: list[str]) -> argparse.Namespace:
    """The CLI's parse of `sekisho WORDS...`; argparse's own message on a mistake."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return build_parser().parse_args(words)
    except SystemExit:
        raise AssertionError(f"sekisho {shlex.join(words)}: {err.getvalue().strip()}") from None


@pytest.fixture(scope="module")
def team_path() -> list[tuple[int, list[str]]]:
    return commands(block((REPO / "README.md").read_text(encoding="utf-8"), SECTION))


def test_every_sekisho_command_of_the_team_path_parses(team_path):
    sekisho = [(n, w[1:]) for n, w in team_path if w[0] == "sekisho"]
    ran = set()
    for number, words in sekisho:
        args = parse(words)
        assert callable(getattr(args, "fn", None)), (
            f"block line {number}: {words} names a group, not a command"
        )
        ran.add(f"{args.group} {words[1]}")
    # The path the issue asks the README to show, in the order a team walks it.
    steps = ["cluster up", "train submit", "train logs", "serve up", "models promote", "keys create"]
    assert set(steps) <= ran, f"the team path lacks {set(steps) - ran}"
    order = [f"{parse(w).group} {w[1]}" for _, w in sekisho]
    assert [s for s in order if s in steps][: len(steps) - 1] == steps[:-1], order


def test_the_team_path_parse_catches_a_wrong_flag():
    with pytest.raises(AssertionError, match="unrecognized arguments: --gpus"):
        parse(["serve", "up", "configs/serve/demo.yaml", "--gpus", "8"])
    with pytest.raises(AssertionError, match="names a group|invalid choice"):
        args = parse(["train", "sumbit", "x.yaml"])
        assert callable(getattr(args, "fn", None)), "names a group"


def test_the_configs_it_names_exist_and_validate(team_path):
    from sekisho.commands.config import config_class

    named = sorted({w for _, words in team_path for w in words if w.startswith("configs/")})
    assert named, "the team path names no config"
    for rel in named:
        path = REPO / rel
        assert path.is_file(), f"README names {rel}, which does not exist"
        config_class(path).from_yaml(path)  # the file:line error of a config that no longer validates


def test_the_files_it_points_at_are_where_sekisho_writes_them(team_path, tmp_path):
    words = [w for _, ws in team_path for w in ws]
    home = "$SEKISHO_HOME"
    inventory = Inventory.from_yaml(REPO / "configs" / "cluster" / "reference.yaml")
    written = write_scrape_config(inventory, tmp_path)
    assert f"--config.file={home}/{written.relative_to(tmp_path)}" in words
    assert f"{home}/{scrape_key_file(tmp_path).relative_to(tmp_path)}" in words
    # The shared home it exports is the reference inventory's.
    exported = next(w.split("=", 1)[1] for _, ws in team_path for w in ws if w.startswith("SEKISHO_HOME="))
    assert exported == str(inventory.shared_storage.home_dir), exported


def test_make_install_takes_the_gpu_switch_it_shows(team_path):
    assert ["make", "install", "GPU=1"] in [w for _, w in team_path]
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert "ifeq ($(GPU),1)" in makefile and "constraints-gpu.txt" in makefile
