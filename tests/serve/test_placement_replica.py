"""An engine replica of tensor x pipeline GPUs: the Serve placement it asks for
(bundles, strategy, the plan's nodes), the vLLM command of each stage, what is
refused before deploy, and the shipped GPU serve configs planned on the reference
cluster. No Ray here; tests/cluster/test_multinode.py runs a two-host replica."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from foundation import UserError
from sekisho.gpu_plan import check_against_running_cluster, plan_serve_app
from serve import ServeAppConfig
from serve.builder import ResolvedApp, replica_placement
from serve.pipeline_stages import stage_commands

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "configs" / "cluster" / "reference.yaml"
PG = "postgresql+psycopg://gw@db.internal/sekisho"
# Llama-3.1's shapes (config.json) and parameter counts.
LLAMA = {
    "llama-3.1-8b-instruct": (
        {"hidden_size": 4096, "num_attention_heads": 32, "num_hidden_layers": 32},
        8.03e9,
    ),
    "llama-3.1-70b-instruct": (
        {"hidden_size": 8192, "num_attention_heads": 64, "num_hidden_layers": 80},
        70.55e9,
    ),
}


def spec(**engine):
    cfg = ServeAppConfig.model_validate(
        {
            "name": "a",
            "models": [{"name": "m", "source": "registry:m@p", "cpus_per_replica": 2, "engine": engine}],
            "gateway": {"db_url": PG},  # pipeline stages span nodes: one PostgreSQL for their gateways
        }
    )
    return cfg.models[0]


def test_one_stage_on_gpus_packs_strictly_on_one_node():
    out = replica_placement(spec(tensor_parallel_size=4), gpus=True)
    assert out["ray_actor_options"]["num_gpus"] == 4 and out["ray_actor_options"]["num_cpus"] == 2
    assert out["placement_group_bundles"] == [{"CPU": 2.0, "GPU": 4.0}]
    assert out["placement_group_strategy"] == "STRICT_PACK"
    assert "placement_group_bundle_label_selector" not in out


def test_a_cpu_engine_keeps_plain_actor_options():
    out = replica_placement(spec(), gpus=False)
    assert set(out) == {"ray_actor_options"} and out["ray_actor_options"]["num_gpus"] == 0


def test_pipeline_stages_get_a_bundle_each_pinned_to_the_plans_nodes():
    out = replica_placement(
        spec(tensor_parallel_size=8, pipeline_parallel_size=2),
        gpus=True,
        stage_nodes=[["dgx-01"], ["dgx-02", "dgx-04"]],
    )
    # bundle 0: the replica actor (its CPUs) and stage 0's GPUs; bundle 1: stage 1
    assert out["placement_group_bundles"] == [{"CPU": 2.0, "GPU": 8.0}, {"CPU": 2.0, "GPU": 8.0}]
    assert out["placement_group_strategy"] == "PACK"
    assert out["placement_group_bundle_label_selector"] == [
        {"sekisho/node": "dgx-01"},
        {"sekisho/node": "in(dgx-02,dgx-04)"},
    ]
    from ray._private.label_utils import validate_label_selector

    for selector in out["placement_group_bundle_label_selector"]:
        assert validate_label_selector(selector) is None


def test_each_stage_runs_vllms_multi_node_mode_with_the_same_engine_flags():
    base = ["/py", "-m", "serve.vllm_main", "--model", "/m", "--tensor-parallel-size", "2"]
    head, stage1, stage2 = stage_commands(base, 3, "10.0.0.5", 29500)
    multi = ["--distributed-executor-backend", "mp", "--nnodes", "3", "--master-addr", "10.0.0.5"]
    assert head == base + ["--pipeline-parallel-size", "3"] + [
        "--distributed-executor-backend", "mp", "--nnodes", "3", "--node-rank", "0",
        "--master-addr", "10.0.0.5", "--master-port", "29500",
    ]  # fmt: skip
    assert stage1[:3] == ["/py", "-m", "serve.pipeline_stages"] and stage1[-1] == "--headless"
    assert stage1[3:-1] == head[3:-6] + [
        "--node-rank",
        "1",
        "--master-addr",
        "10.0.0.5",
        "--master-port",
        "29500",
    ]
    assert stage2[stage2.index("--node-rank") + 1] == "2"
    assert all(f in stage2 for f in multi)
    # a command that already names the stages keeps its own flag, once
    assert (
        stage_commands(base + ["--pipeline-parallel-size", "2"], 2, "h", 1)[0].count(
            "--pipeline-parallel-size"
        )
        == 1
    )


def test_what_the_live_cluster_cannot_hold_is_refused_naming_the_field():
    cfg = ServeAppConfig.model_validate(
        {
            "name": "x",
            "models": [
                {
                    "name": "ok",
                    "source": "registry:m@p",
                    "engine": {"tensor_parallel_size": 8, "pipeline_parallel_size": 2},
                },
                {
                    "name": "big",
                    "source": "registry:m@p",
                    "engine": {"tensor_parallel_size": 8, "pipeline_parallel_size": 3},
                },
            ],
            "gateway": {"db_url": PG},
        }
    )
    check_against_running_cluster(cfg.model_copy(update={"models": cfg.models[:1]}), [8.0, 8.0, 4.0])
    with pytest.raises(UserError) as err:
        check_against_running_cluster(cfg, [8.0, 8.0, 4.0])
    assert "models.1.engine.pipeline_parallel_size: 3 stages of 8 GPUs" in str(err.value)
    assert "at most 2 such stages" in str(err.value)
    eager = ServeAppConfig.model_validate(
        {
            "name": "x",
            "models": [
                {
                    "name": "m",
                    "source": "registry:m@p",
                    "engine": {"pipeline_parallel_size": 2, "enforce_eager": True},
                }
            ],
            "gateway": {"db_url": PG},
        }
    )
    with pytest.raises(UserError, match="models.0.engine.enforce_eager"):
        check_against_running_cluster(eager, [0.0, 0.0])  # vLLM's CPU build


def llama_folder(root: Path, name: str) -> Path:
    """A model folder with Llama-3.1's config.json and one safetensors file whose
    header declares all its parameters (a sparse file: no data is written)."""
    shape, params = LLAMA[name]
    folder = root / name
    folder.mkdir()
    hf = {**shape, "num_key_value_heads": 8, "torch_dtype": "bfloat16", "architectures": ["LlamaForCausalLM"]}
    (folder / "config.json").write_text(json.dumps(hf))
    n = int(params)
    header = json.dumps({"weight": {"dtype": "BF16", "shape": [n], "data_offsets": [0, 2 * n]}}).encode()
    header += b" " * (-len(header) % 8)
    with (folder / "model.safetensors").open("wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + 2 * n)
    return folder


@pytest.mark.parametrize(
    "config, gpus, stages", [("llama8b_one_gpu.yaml", 1, 1), ("llama70b_two_nodes.yaml", 16, 2)]
)
def test_shipped_gpu_configs_plan_on_the_reference_cluster(tmp_path, config, gpus, stages):
    cfg = ServeAppConfig.from_yaml(REPO / "configs" / "serve" / config)
    app = ResolvedApp(cfg)
    for m in cfg.models:
        app.models[m.name] = llama_folder(tmp_path, m.source.removeprefix("registry:").split("@")[0])
        for a in m.adapters:
            app.models[a.name] = tmp_path
    plan = plan_serve_app(app, REFERENCE)
    (spec,) = cfg.models
    groups = plan.groups
    assert sum(len(g.gpus) for g in groups) == gpus and len(groups) == stages
    assert all(g.memory.total <= 80 for g in groups)
    assert len({g.node for g in groups}) == stages  # each stage a whole node of its own (70B)
    pinned = app.stage_nodes[spec.name]
    assert pinned == [[g.node] for g in sorted(groups, key=lambda g: g.stage)]
    out = replica_placement(spec, gpus=True, stage_nodes=pinned)
    tp = spec.engine.tensor_parallel_size
    assert (
        out["placement_group_bundles"] == [{"CPU": float(spec.cpus_per_replica), "GPU": float(tp)}] * stages
    )
    assert [s["sekisho/node"] for s in out["placement_group_bundle_label_selector"]] == [n for (n,) in pinned]


def test_a_70b_on_one_node_is_refused_with_the_two_stage_split_in_config_fields(tmp_path):
    cfg = ServeAppConfig.from_yaml(REPO / "configs" / "serve" / "llama70b_two_nodes.yaml")
    (m,) = cfg.models
    one_node = m.model_copy(update={"engine": m.engine.model_copy(update={"pipeline_parallel_size": 1})})
    app = ResolvedApp(cfg.model_copy(update={"models": [one_node]}))
    app.models[m.name] = llama_folder(tmp_path, "llama-3.1-70b-instruct")
    with pytest.raises(UserError) as err:
        plan_serve_app(app, REFERENCE)
    msg = str(err.value)
    assert "tensor_parallel=8, pipeline_parallel=2 fits" in msg, msg
    assert "llama70b-llama-3-1-70b = models.0" in msg and "engine.pipeline_parallel_size" in msg
