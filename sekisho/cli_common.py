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
