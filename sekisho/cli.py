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
from sekisho.commands import GROUPS  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sekisho", description=__doc__.splitlines()[0])
    p.add_argument(
        "--home", help="state folder (MLflow store, models, Ray token); default $SEKISHO_HOME or ./.sekisho"
    )
    groups = p.add_subparsers(dest="group", required=True, metavar="GROUP")
    for name in GROUPS:
        importlib.import_module(f"sekisho.commands.{name}").register(groups)
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
