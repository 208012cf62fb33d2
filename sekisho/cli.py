"""`sekisho <group> <command>`: one CLI, each command a plain function.

The zero-egress switches are applied before anything else is imported.
A user mistake prints one paragraph naming what is wrong and exits with 2.
"""

from __future__ import annotations

from foundation import offline

offline.apply()

import argparse  # noqa: E402
import importlib  # noqa: E402
import sys  # noqa: E402

from foundation import UserError  # noqa: E402
from sekisho.cli_common import HOME_HELP, home_option_everywhere  # noqa: E402
from sekisho.commands import GROUPS  # noqa: E402

DISTRIBUTION = "sekisho"  # pyproject.toml's project name


def version() -> str:
    """The installed distribution's version."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown (not installed; run `make install`)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sekisho", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"sekisho {version()}")
    p.add_argument("--home", help=HOME_HELP)
    groups = p.add_subparsers(dest="group", required=True, metavar="GROUP")
    for name in GROUPS:
        importlib.import_module(f"sekisho.commands.{name}").register(groups)
    home_option_everywhere(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args) or 0
    except UserError as exc:
        print(f"sekisho: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
