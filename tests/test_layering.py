"""The architecture cannot drift silently: every import of a Sekisho package,
at module level or inside a function, points down the layers.

    foundation                      imports no other Sekisho package
    cluster, experiments            foundation
    airlock                         foundation, experiments (it registers what it imports)
    data                            the above
    train, serve                    the above; never each other
    sekisho (CLI, cross workflows)  everything
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
OURS = {"foundation", "cluster", "experiments", "airlock", "data", "train", "serve", "sekisho"}
ALLOWED = {
    "foundation": set(),
    "cluster": {"foundation"},
    "experiments": {"foundation"},
    "airlock": {"foundation", "experiments"},
    "data": {"foundation", "cluster", "experiments", "airlock"},
    "train": {"foundation", "cluster", "experiments", "airlock", "data"},
    "serve": {"foundation", "cluster", "experiments", "airlock", "data"},
    "sekisho": OURS,
}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def violations(package: str, repo: Path = REPO) -> list[str]:
    bad = []
    for path in sorted((repo / package).rglob("*.py")):
        for line, target in imports_of(path):
            if target in OURS and target != package and target not in ALLOWED[package]:
                bad.append(f"{path.relative_to(repo)}:{line}: {package} imports {target}")
    return bad


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_down_the_layers(package):
    assert violations(package) == []


def test_the_check_sees_a_violation(tmp_path):
    """The check can fail: an import hidden inside a function is still seen."""
    (tmp_path / "cluster").mkdir()
    (tmp_path / "cluster" / "x.py").write_text("def f():\n    from serve.config import X\n")
    assert violations("cluster", tmp_path) == ["cluster/x.py:2: cluster imports serve"]


def test_every_package_is_placed():
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests", "benchmarks"}
    assert packages == OURS
