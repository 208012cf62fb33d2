"""The placement planner on the reference inventory (36 GPUs): full, short,
TP crossing a node, memory overflow, a 70B ZeRO-3 job on two DGX."""

from pathlib import Path

import pytest

from cluster import GpuRequest, GpuRequests, Inventory, PlacementError, plan_placement
from foundation import UserError

REPO = Path(__file__).resolve().parents[2]
FULL = REPO / "configs" / "cluster" / "gpu_requests" / "reference_full.yaml"
LLAMA70_KV = 327680  # 2 x 80 layers x 8 KV heads x 128 x 2 bytes


@pytest.fixture(scope="module")
def inventory() -> Inventory:
    return Inventory.from_yaml(REPO / "configs" / "cluster" / "reference.yaml")


def serve(name, **kw) -> GpuRequest:
    return GpuRequest(name=name, kind="serve", **{"params_billions": 8, **kw})


def test_full_plan_uses_all_36_gpus_with_tp_inside_nodes(inventory):
    requests = GpuRequests.from_yaml(FULL).requests
    plan = plan_placement(inventory, requests)
    assert sum(plan.used_gpus(n.name) for n in inventory.nodes) == 36
    for node in inventory.nodes:
        gpus = [i for g in plan.by_node()[node.name] for i in g.gpus]
        assert sorted(gpus) == list(range(node.gpus)), node.name  # each GPU once
    for g in plan.groups:
        req = plan.request(g.request)
        assert len(g.gpus) % req.tensor_parallel == 0
        assert g.memory.total <= inventory.node(g.node).gpu_memory_gib
    # pinned small models stay on the head; the TP-8 model fills one DGX
    assert {g.request for g in plan.by_node()["hgx-head"]} == {"qwen3-8b", "qwen3-14b"}
    assert [[b["GPU"] for b in pg.bundles] for pg in plan.placement_groups("qwen2-5-72b")] == [[4.0], [4.0]]


def test_one_gpu_short_is_refused_naming_the_shortfall(inventory):
    requests = list(GpuRequests.from_yaml(FULL).requests)
    requests.append(serve("one-more", max_model_len=4096, max_num_seqs=8, kv_bytes_per_token=131072))
    with pytest.raises(PlacementError) as e:
        plan_placement(inventory, requests)
    msg = str(e.value)
    assert "needs 37 GPUs" in msg and "has 36: 1 GPU missing" in msg and "one-more 1" in msg
    assert isinstance(e.value, UserError)


def test_tensor_parallel_that_would_cross_a_node_is_refused_with_the_split_that_fits(inventory):
    with pytest.raises(PlacementError) as e:
        plan_placement(inventory, [serve("llama-405b", params_billions=405, tensor_parallel=16)])
    msg = str(e.value)
    assert "tensor_parallel=16 would cross a node" in msg and "(dgx-01) has 8 GPUs" in msg
    assert "tensor_parallel=8, pipeline_parallel=2" in msg
    # ... and the suggestion plans: two stages, each a TP-8 group on its own DGX
    plan = plan_placement(
        inventory,
        [serve("llama-405b", params_billions=405, dtype_bytes=1, tensor_parallel=8, pipeline_parallel=2)],
    )
    pg = plan.placement_group("llama-405b")
    # one bundle per stage (its 8 GPUs on one node), the replica's own in bundle 0
    assert [b["GPU"] for b in pg.bundles] == [8.0, 8.0] and pg.strategy == "PACK"
    nodes = [g.node for g in sorted(plan.groups, key=lambda g: g.stage)]
    assert len(set(nodes)) == 2
    assert pg.bundle_label_selector == [{"sekisho/node": n} for n in nodes]
    assert [f"sekisho_node_{n}" in b for b, n in zip(pg.bundles, nodes)] == [True, True]


def test_memory_overflow_is_refused_with_the_tp_size_that_fits(inventory):
    llama70 = dict(params_billions=70.6, max_model_len=32768, max_num_seqs=32, kv_bytes_per_token=LLAMA70_KV)
    with pytest.raises(PlacementError) as e:
        plan_placement(inventory, [serve("llama-70b", tensor_parallel=2, **llama70)])
    msg = str(e.value)
    # weights 131.5 GiB / 2 + KV cache 320 GiB / 2 + 4 headroom
    assert "needs 229.8 GiB per GPU (weights 65.8 + KV cache 160.0 + headroom 4.0)" in msg
    assert "GPUs hold at most 80 GiB" in msg
    assert "tensor_parallel=8 fits (60.4 GiB per GPU)" in msg
    plan_placement(inventory, [serve("llama-70b", tensor_parallel=8, **llama70)])


def test_overflow_no_tp_cures_suggests_pipeline_stages(inventory):
    with pytest.raises(PlacementError, match=r"tensor_parallel=8, pipeline_parallel=2 fits"):
        plan_placement(
            inventory,
            [
                serve(
                    "big",
                    params_billions=671,
                    dtype_bytes=1,
                    tensor_parallel=8,
                    max_model_len=8192,
                    max_num_seqs=16,
                    kv_bytes_per_token=LLAMA70_KV,
                )
            ],
        )


def test_70b_lora_zero3_runs_16_workers_on_two_whole_dgx(inventory):
    from ray.train import ScalingConfig

    job = GpuRequest(
        name="llama-70b-lora",
        kind="train",
        params_billions=70.6,
        data_parallel=16,
        weight_sharding="all_ranks",
        extra_gib_per_gpu=30,
    )
    small = serve("qwen3-8b", data_parallel=2, nodes=["hgx-head"])
    plan = plan_placement(inventory, [small, job])
    nodes = [g.node for g in plan.groups if g.request == job.name]
    assert len(nodes) == 2 and all(plan.used_gpus(n) == 8 for n in nodes)
    kwargs = plan.scaling_config_kwargs(job.name)
    assert kwargs["num_workers"] == 16
    assert kwargs["label_selector"] == [{"sekisho/node": nodes[0]}] * 8 + [{"sekisho/node": nodes[1]}] * 8
    sc = ScalingConfig(**kwargs)  # Ray accepts it as is
    assert sc.num_workers == 16 and sc.num_gpus_per_worker == 1
    # without ZeRO-3 sharding the same job's weights would not fit one GPU
    with pytest.raises(PlacementError, match="weights 131.5"):
        plan_placement(
            inventory, [job.model_copy(update={"weight_sharding": "model_parallel", "extra_gib_per_gpu": 30})]
        )


def test_bundles_pin_to_the_nodes_ray_will_declare(inventory):
    from ray._private.label_utils import validate_label_selector, validate_node_labels

    plan = plan_placement(inventory, [serve("m", tensor_parallel=4, data_parallel=2)])
    for pg in plan.placement_groups("m"):
        node = inventory.node(pg.bundle_label_selector[0]["sekisho/node"])
        assert pg.strategy == "STRICT_PACK"
        assert pg.bundles == [{"GPU": 4.0, "CPU": 4.0, f"sekisho_node_{node.name}": 0.001}]
        for selector in pg.bundle_label_selector:
            assert validate_label_selector(selector) is None
    validate_node_labels({"sekisho/node": "dgx-01"})  # the label each node starts with


def test_pinned_requests_beyond_their_nodes_are_refused(inventory):
    with pytest.raises(PlacementError, match="pinned to hgx-head need 5 GPUs and those nodes have 4"):
        plan_placement(inventory, [serve("a", data_parallel=5, nodes=["hgx-head"])])
    with pytest.raises(PlacementError, match="nodes dgx-99 are not in inventory"):
        plan_placement(inventory, [serve("a", nodes=["dgx-99"])])


def test_enough_gpus_in_number_but_not_in_shape(inventory):
    # 36 GPUs as six TP-6 groups: each DGX holds one (2 GPUs left over), the head none.
    with pytest.raises(PlacementError, match="enough in number but not in shape"):
        plan_placement(inventory, [serve("six", tensor_parallel=6, data_parallel=6)])


def test_request_validation_rejects_inconsistent_sizes():
    with pytest.raises(ValueError, match="set both or neither"):
        serve("x", max_model_len=4096)
    with pytest.raises(ValueError, match="must divide one another"):
        GpuRequest(name="t", kind="train", params_billions=1, tensor_parallel=3, gpus_per_worker=2)
