"""Fixtures for the tracking, registry and promotion tests: fresh PostgreSQL
databases, a fresh model with three versions (MLflow URIs are restored after each test by tests/conftest.py)."""

from __future__ import annotations

import json
import uuid

import pytest


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


@pytest.fixture
def model(registry_store, tmp_path):
    """A fresh registered model with three versions, in each registry store."""
    from experiments import register_folder

    name = f"model-{uuid.uuid4().hex[:8]}"
    for i in range(3):
        folder = tmp_path / f"v{i}"
        folder.mkdir()
        (folder / "adapter_config.json").write_text(json.dumps({"i": i}))
        register_folder(name, folder, kind="adapter")
    return name
