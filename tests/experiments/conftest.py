"""Fixtures for the tracking, registry and promotion tests: MLflow URIs restored
after each test, and fresh PostgreSQL databases."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _mlflow_uris_restored():
    """Tests here point this process's MLflow client at other stores (a team server,
    a PostgreSQL database); later tests must find it where it was."""
    import os

    import mlflow

    tracking, registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    yield
    mlflow.set_tracking_uri(tracking)
    mlflow.set_registry_uri(registry)
    for k, v in env.items():  # set_*_uri write the variables; they stay the user's
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


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
