"""Sekisho's packages install under short top-level names (`data`, `train`, ...).
A user's project with packages of the same names, first on `sys.path` and on
`PYTHONPATH` (as Ray puts a job's working directory), still gets Sekisho's."""

import os
import subprocess
import sys
from pathlib import Path

from sekisho.imports import OWN_PACKAGES

REPO = Path(__file__).resolve().parents[2]


def test_a_users_packages_of_the_same_names_do_not_shadow_sekishos(tmp_path):
    for name in OWN_PACKAGES:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise ImportError('the user\\'s {name}')\n")
    (tmp_path / "mine.py").write_text("VALUE = 'the user module still imports'\n")
    code = (
        "import sekisho, importlib, mine\n"
        f"for name in {OWN_PACKAGES!r}:\n"
        "    print(importlib.import_module(name).__file__)\n"
        "import data.chat, serve.config\n"
        "print(data.chat.__file__, serve.config.__file__, mine.VALUE)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert lines[:-1] == [str(REPO / name / "__init__.py") for name in OWN_PACKAGES]
    assert (
        lines[-1]
        == f"{REPO / 'data' / 'chat.py'} {REPO / 'serve' / 'config.py'} the user module still imports"
    )


def test_without_the_finder_the_users_package_would_win(tmp_path):
    """The check above can fail: the same layout without `import sekisho` first."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "__init__.py").write_text("raise ImportError('the user data package')\n")
    r = subprocess.run(
        [sys.executable, "-c", "import data"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0 and "the user data package" in r.stderr
