"""A serve app whose engines span nodes must keep keys, quotas and the audit chain
in one database that every node's gateway reaches: on SQLite (a file of one node)
it is refused at config load with file, line and field; PostgreSQL loads, and so
does a single-node app on SQLite."""

from pathlib import Path

import pytest

from foundation import ConfigError
from serve import ServeAppConfig

REPO = Path(__file__).resolve().parents[2]
TWO_NODES = REPO / "configs" / "serve" / "llama70b_two_nodes.yaml"
PG = "postgresql+psycopg://sekisho_gateway@db.internal:5432/sekisho"


@pytest.fixture(autouse=True)
def _no_database_from_the_environment(monkeypatch):
    monkeypatch.delenv("SEKISHO_GATEWAY_DB", raising=False)


def app_yaml(tmp_path: Path, engine: str, gateway: str = "") -> Path:
    path = tmp_path / "app.yaml"
    path.write_text(
        "name: big\n"
        "models:\n"
        "  - name: m\n"
        "    source: registry:m@production\n"
        "    engine:\n"
        "      tensor_parallel_size: 8\n"
        f"{engine}"
        "      tool_call_parser: none\n"
        f"{gateway}"
    )
    return path


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_an_app_across_nodes_on_the_default_sqlite_is_refused_at_its_stages_line(tmp_path):
    path = app_yaml(tmp_path, "      pipeline_parallel_size: 2\n")
    with pytest.raises(ConfigError) as err:
        ServeAppConfig.from_yaml(path)
    msg = str(err.value)
    where = f"{path}:{line_of(path, 'pipeline_parallel_size')}: models.0.engine.pipeline_parallel_size: "
    assert msg.startswith(where), msg
    assert "gateway.db_url is unset (SQLite in the Sekisho home)" in msg
    assert "PostgreSQL is required: set gateway.db_url: postgresql+psycopg://" in msg


def test_an_app_across_nodes_on_an_explicit_sqlite_is_refused_at_db_url(tmp_path):
    gateway = "gateway:\n  db_url: sqlite:////shared/sekisho/gateway.db\n"
    path = app_yaml(tmp_path, "      pipeline_parallel_size: 2\n", gateway)
    with pytest.raises(ConfigError) as err:
        ServeAppConfig.from_yaml(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}:{line_of(path, 'db_url')}: gateway.db_url: "), msg
    assert "PostgreSQL is required" in msg and "/shared/sekisho/gateway.db" not in msg


def test_sqlite_from_the_environment_counts_and_postgresql_from_it_passes(tmp_path, monkeypatch):
    path = app_yaml(tmp_path, "      pipeline_parallel_size: 2\n")
    monkeypatch.setenv("SEKISHO_GATEWAY_DB", "sqlite:////tmp/gw.db")
    with pytest.raises(ConfigError, match="PostgreSQL is required"):
        ServeAppConfig.from_yaml(path)
    monkeypatch.setenv("SEKISHO_GATEWAY_DB", PG)
    assert ServeAppConfig.from_yaml(path).gateway.db_url is None  # the builder reads the variable


def test_postgresql_across_nodes_and_sqlite_on_one_node_load(tmp_path):
    across = ServeAppConfig.from_yaml(
        app_yaml(tmp_path, "      pipeline_parallel_size: 2\n", f"gateway:\n  db_url: {PG}\n")
    )
    assert across.gateway.db_url == PG and across.models[0].engine.pipeline_parallel_size == 2
    one_node = ServeAppConfig.from_yaml(app_yaml(tmp_path, ""))  # TP 8 inside one node, SQLite
    assert one_node.gateway.db_url is None and one_node.models[0].engine.pipeline_parallel_size == 1
    assert ServeAppConfig.from_yaml(TWO_NODES).gateway.db_url.startswith("postgresql+psycopg://")


def test_replicas_serve_may_spread_over_nodes_need_postgresql_at_deploy(tmp_path):
    """Config load cannot know where Serve places replicas; deploy does (the Ray
    cluster's live nodes): on more than one node an app on SQLite is refused."""
    from foundation import UserError
    from serve.builder import check_database_reach

    one_node_app = ServeAppConfig.from_yaml(app_yaml(tmp_path, ""))
    check_database_reach(one_node_app, 1)
    with pytest.raises(UserError) as err:
        check_database_reach(one_node_app, 3)
    assert "3 nodes" in str(err.value) and "gateway.db_url is unset" in str(err.value)
    assert "PostgreSQL is required" in str(err.value)
    on_pg = ServeAppConfig.from_yaml(app_yaml(tmp_path, "", f"gateway:\n  db_url: {PG}\n"))
    check_database_reach(on_pg, 3)
