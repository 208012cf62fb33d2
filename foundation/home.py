"""The Sekisho home: the folder of local state (MLflow store, model store, keys
and audit database, Ray token). Private to its owner: created 0700 whatever the
umask (the audit records, keys and tokens in it are nobody else's to read)."""

from __future__ import annotations

import os
from pathlib import Path


def private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) 0700 whatever the umask; an existing folder is left as it is."""
    if not path.is_dir():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)  # the umask can only take bits away
        path.chmod(0o700)
    return path


DEFAULT_HOME = "~/.sekisho"


def sekisho_home() -> Path:
    """`$SEKISHO_HOME`, or `~/.sekisho` (the same state from whatever folder a command
    runs in), made absolute (and written back to the environment) so that workers
    started from here agree."""
    home = private_dir(Path(os.environ.get("SEKISHO_HOME") or DEFAULT_HOME).expanduser().resolve())
    os.environ["SEKISHO_HOME"] = str(home)
    return home
