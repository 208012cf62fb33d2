"""What every command shares."""

from __future__ import annotations

import os
from pathlib import Path


def home_from_args(args) -> Path:
    """The Sekisho home: `--home`, else $SEKISHO_HOME, else ./.sekisho."""
    if getattr(args, "home", None):
        os.environ["SEKISHO_HOME"] = str(Path(args.home).resolve())
    from foundation import sekisho_home

    return sekisho_home()


def command_group(groups, name: str, help: str):
    """A `sekisho NAME COMMAND` group: its subcommands' parser set."""
    return groups.add_parser(name, help=help).add_subparsers(dest="command", required=True, metavar="COMMAND")


def add_command(group, name: str, fn):
    """A command of `group` that runs `fn(args)`, its help taken from `fn`'s docstring."""
    parser = group.add_parser(name, help=fn.__doc__)
    parser.set_defaults(fn=fn)
    return parser
