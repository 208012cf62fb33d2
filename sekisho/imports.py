"""Sekisho's top-level packages come from Sekisho's own folder, whatever else is on
`sys.path`.

The packages install under short names (`data`, `train`, `serve`, ...). A job's
working directory is put first on `sys.path` (`python -m`) and on `PYTHONPATH`
(Ray's `working_dir`), so a user whose project holds a `data/` package of its own
would otherwise shadow Sekisho's. `pin()` puts a finder first in
`sys.meta_path` that resolves exactly these top-level names to the folders beside
this package; submodules then follow the package's own `__path__`. Every other
import is untouched. It runs when `sekisho` is imported, and in every Ray worker
of a submitted job (`WORKER_SETUP_HOOK`, the job's `worker_process_setup_hook`).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

OWN_PACKAGES = ("foundation", "cluster", "experiments", "airlock", "data", "train", "serve")
WORKER_SETUP_HOOK = "sekisho.imports.pin"
ROOT = Path(__file__).resolve().parent.parent


class OwnPackageFinder(importlib.abc.MetaPathFinder):
    """Finds Sekisho's top-level packages in `root` and nothing else."""

    def __init__(self, root: Path):
        self.root = root

    def find_spec(self, fullname, path=None, target=None):
        if path is not None or fullname not in OWN_PACKAGES:
            return None
        folder = self.root / fullname
        init = folder / "__init__.py"
        if not init.is_file():
            return None
        return importlib.util.spec_from_file_location(
            fullname, init, submodule_search_locations=[str(folder)]
        )


def pin() -> None:
    """Put the finder first (once per process)."""
    if not any(isinstance(f, OwnPackageFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, OwnPackageFinder(ROOT))
