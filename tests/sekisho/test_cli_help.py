"""Every group, command and positional argument of the CLI says what it is in `--help`."""

from __future__ import annotations

import argparse

from sekisho.cli import build_parser
from sekisho.cli_common import subcommands


def without_help(root: argparse.ArgumentParser) -> list[str]:
    """`PROG: ARG` of each positional argument, and `PROG` of each group or command, with no help text."""
    missing = []
    for parser in [root] + [p for _, p, _ in subcommands(root)]:
        missing += [
            f"{parser.prog}: {a.dest}"
            for a in parser._actions
            if not a.option_strings and not isinstance(a, argparse._SubParsersAction) and not a.help
        ]
    missing += [sub.prog for _, sub, help in subcommands(root) if not (help and help.strip())]
    return missing


def test_every_group_command_and_positional_has_help():
    missing = without_help(build_parser())
    assert missing == [], "no help text: " + ", ".join(missing)


def test_the_walk_finds_what_has_no_help():
    root = build_parser()
    sub = next(p for name, p, _ in subcommands(root) if p.prog == "sekisho keys revoke")
    sub.add_argument("reason")
    groups = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction))
    groups.add_parser("bare")
    assert without_help(root) == ["sekisho keys revoke: reason", "sekisho bare"]


def test_the_walk_sees_every_command():
    progs = {p.prog for _, p, _ in subcommands(build_parser())}
    assert {"sekisho keys revoke", "sekisho serve up", "sekisho tracking user add", "sekisho demo"} <= progs
