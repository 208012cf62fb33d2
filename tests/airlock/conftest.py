"""Fixtures for the airlock tests: a writable copy of the tiny model to tamper
with, and checks that a refused import left nothing behind."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture
def model_copy(tmp_path, tiny_model_dir) -> Path:
    """A fresh, writable copy of the tiny model (safetensors, tokenizer, template)."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


@pytest.fixture
def nothing_left(sekisho_home):
    """Call with a model name after a refused import: asserts no version was
    registered and the store gained no copy (staging included)."""
    from airlock import store_root

    def stored() -> set[str]:
        root = store_root()
        return {p.relative_to(root).as_posix() for p in root.glob("*/*")}

    before = stored()

    def check(name: str) -> None:
        from mlflow import MlflowClient

        from experiments import use_store

        use_store()
        assert MlflowClient().search_model_versions(f"name='{name}'") == []
        assert stored() == before

    return check
