"""The Sekisho home: the folder of local state (MLflow store, model store, keys
and audit database, Ray token)."""

from __future__ import annotations

import os
from pathlib import Path


def sekisho_home() -> Path:
    """`$SEKISHO_HOME`, or `.sekisho` in the current directory, made absolute (and
    written back to the environment) so that workers started from here agree."""
    home = Path(os.environ.get("SEKISHO_HOME", ".sekisho")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["SEKISHO_HOME"] = str(home)
    return home
