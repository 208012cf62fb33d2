"""What every command shares: the Sekisho home, the command tree, and the
gateway database that `keys` and `audit` work on."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from foundation import ConfigError, UserError

HOME_HELP = (
    "Sekisho home: MLflow store, model store, keys and audit database, Ray token "
    "(default $SEKISHO_HOME, else ~/.sekisho)"
)


def home_from_args(args) -> Path:
    """The Sekisho home: `--home`, else $SEKISHO_HOME, else ~/.sekisho."""
    if getattr(args, "home", None):
        os.environ["SEKISHO_HOME"] = str(Path(args.home).expanduser().resolve())
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


def subcommands(parser: argparse.ArgumentParser):
    """(name, parser, help) of each group and command under `parser`, all the way down."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, sub, helps.get(name)
                yield from subcommands(sub)


def home_option_everywhere(parser: argparse.ArgumentParser) -> None:
    """`--home` on every group and command too, so it may follow the command
    (`sekisho serve up app.yaml --home X`); left unset there, it keeps the value
    given before the group."""
    for _, sub, _ in subcommands(parser):
        sub.add_argument("--home", default=argparse.SUPPRESS, help=HOME_HELP)


def add_gateway_db_options(parser) -> None:
    """Which gateway database (keys, quotas, audit chain): an app config's, a URL
    without a password, or one read from a file."""
    parser.add_argument(
        "--config",
        metavar="APP.yaml",
        help="the serve app config whose gateway database (gateway.db_url) to use; "
        "for `audit`, also its app name and anchor file",
    )
    parser.add_argument(
        "--db",
        help="gateway database URL without a password (default: the --config's gateway.db_url, "
        "else $SEKISHO_GATEWAY_DB, else SQLite in the Sekisho home); a URL with a password goes in "
        "$SEKISHO_GATEWAY_DB or --db-file",
    )
    parser.add_argument("--db-file", help="file holding the gateway database URL (keep it mode 0600)")


def app_config(args):
    """The serve app config named by --config, or None when none is given.

    Raises:
        UserError: the file is missing or is not a serve app config.
    """
    path = getattr(args, "config", None)
    if not path:
        return None
    from serve import ServeAppConfig

    if not Path(path).is_file():
        raise UserError(
            f"--config {path}: no such file (expected a serve app config, e.g. configs/serve/demo.yaml)"
        )
    try:
        return ServeAppConfig.from_yaml(path)
    except ConfigError as exc:
        raise UserError(f"--config {path}: not a valid serve app config:\n{exc}") from None


def gateway_db_url(args) -> str | None:
    """The gateway database URL from --db-file, --db or --config's gateway.db_url
    (None: $SEKISHO_GATEWAY_DB, else SQLite in the Sekisho home).

    Raises:
        UserError: the --db-file cannot be read or is empty, --db is not a URL, or
            the --config is missing or is not a serve app config.
    """
    cfg = app_config(args)  # checked even when --db or --db-file overrides its database
    if getattr(args, "db_file", None):
        try:
            url = Path(args.db_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UserError(f"--db-file {args.db_file}: {exc.strerror}") from None
        if not url:
            raise UserError(f"--db-file {args.db_file}: the file is empty")
        return url
    url = getattr(args, "db", None)
    if url:
        from sqlalchemy.engine import make_url

        try:
            has_password = make_url(url).password is not None
        except Exception:
            raise UserError(f"--db: not a database URL: {url!r}") from None
        if has_password:
            print(
                "warning: --db carries a password, which every user of this machine can read on the "
                "command line; use $SEKISHO_GATEWAY_DB or --db-file instead",
                file=sys.stderr,
            )
        return url
    return cfg.gateway.db_url if cfg else None
