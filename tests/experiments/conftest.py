"""Fixtures for the airlock tests: a writable copy of the tiny model to tamper
with, and checks that a refused import left nothing behind."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _mlflow_uris_restored():
    """Tests here point this process's MLflow client at other stores (a team server,
    a PostgreSQL database); later tests must find it where it was."""
    import mlflow

    tracking, registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    yield
    mlflow.set_tracking_uri(tracking)
    mlflow.set_registry_uri(registry)


@pytest.fixture
def model_copy(tmp_path, tiny_model_dir) -> Path:
    """A fresh, writable copy of the tiny model (safetensors, tokenizer, template)."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


@pytest.fixture
def nothing_left(sekisho_home):
    """Call with a model name after a refused import: asserts no version was
    registered and the store gained no copy (staging included)."""
    from experiments import store_root

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


@pytest.fixture(scope="session")
def new_pg_database(postgres_url):
    """Call to get the SQLAlchemy URL of a new, empty database on the test PostgreSQL
    (so that tests and concurrent test sessions never share MLflow tables); each is
    dropped at the end of the session."""
    import uuid

    import sqlalchemy as sa

    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    made: list[str] = []

    def make() -> str:
        name = f"sekisho_test_{uuid.uuid4().hex[:12]}"
        with admin.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
        made.append(name)
        return sa.engine.make_url(postgres_url).set(database=name).render_as_string(hide_password=False)

    yield make
    with admin.connect() as c:
        for name in made:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def registry_store(request, sekisho_home):
    """The MLflow store the registry tests run against: the embedded SQLite store,
    then a fresh PostgreSQL database used directly (SEKISHO_MLFLOW_URI = its URL)."""
    import os

    if request.param == "sqlite":
        os.environ.pop("SEKISHO_MLFLOW_URI", None)
        yield "sqlite"
        return
    url = request.getfixturevalue("new_pg_database")()
    os.environ["SEKISHO_MLFLOW_URI"] = url
    try:
        yield url
    finally:
        os.environ.pop("SEKISHO_MLFLOW_URI", None)
