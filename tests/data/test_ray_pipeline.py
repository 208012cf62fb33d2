"""executor: ray: the row stages as a Ray Data pipeline on a real local Ray
cluster (token auth, loopback) give the same dataset as the local executor."""

import json

import pytest

from data import DatasetConfig, DataValidationError, prepare


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    from cluster.local import start_local, stop

    start_local(tmp_path_factory.mktemp("ray-home"), num_cpus=2)
    yield
    stop()


def test_ray_data_pipeline_equals_the_local_one(tmp_path, tiny_model_dir, ray_cluster, monkeypatch):
    sample = DatasetConfig(name="d", path="samples:internal_faq_ja.jsonl").path
    rows = open(sample, encoding="utf-8").read().splitlines()
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jsonl").write_text("\n".join(rows[:20] + ["{broken"]) + "\n", encoding="utf-8")
    (src / "b.jsonl").write_text(
        "\n".join(rows[10:] + [rows[0]]) + "\n", encoding="utf-8"
    )  # duplicates across files
    monkeypatch.setattr("data.pipeline.BATCH_ROWS", 8)
    cfg = DatasetConfig(name="d", path=str(src), on_error="skip", split={"eval_fraction": 0.2})
    local = prepare(cfg, tiny_model_dir, tmp_path / "local")
    on_ray = prepare(
        cfg.model_copy(update={"executor": "ray", "workers": 1}), tiny_model_dir, tmp_path / "ray"
    )
    assert local["rows"]["dropped"] == {"exact_duplicate": 11, "invalid_json": 1}
    assert on_ray["rows"] == local["rows"] and on_ray["sources"] == local["sources"]
    assert on_ray["content_sha256"] == local["content_sha256"] and on_ray["version"] == local["version"]
    dropped = [json.loads(x) for x in (tmp_path / "ray" / "dropped.jsonl").read_text().splitlines()]
    assert {"file": str(src / "a.jsonl"), "line": 21, "code": "invalid_json"}.items() <= dropped[0].items()

    (src / "c.jsonl").write_bytes(
        '{"text": "\u3042"}\n'.encode("utf-16")
    )  # undecodable: a user error, not a RayTaskError
    with pytest.raises(DataValidationError, match=r"c.jsonl: byte \d+: UTF-16 or binary content"):
        prepare(cfg.model_copy(update={"executor": "ray"}), tiny_model_dir, tmp_path / "bad")
