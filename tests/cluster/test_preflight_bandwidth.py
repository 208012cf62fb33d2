"""The bandwidth check's plan and target, on the reference inventory (DGX H100:
8 GPUs and 8 InfiniBand ports a node): a rank per GPU, and a per-NIC target that
a healthy DGX meets and a degraded fabric misses. The measurement itself runs in
tests/cluster/test_cluster_doctor.py against a real Ray cluster (Gloo, CPU)."""

from collections import Counter
from pathlib import Path

import pytest

from cluster import Inventory
from cluster.preflight.bandwidth import NCCL_BYTES, PER_NIC_TARGET_GB_S, judge, plan_ranks

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def inventory() -> Inventory:
    return Inventory.from_yaml(REPO / "configs" / "cluster" / "reference.yaml")


def alive(inventory, names) -> dict[str, str]:
    return {n.address: f"id-{n.name}" for n in inventory.nodes if n.name in names}


def test_one_rank_per_gpu_and_the_ring_runs_at_the_fewest_ports_a_node_uses(inventory):
    plan = plan_ranks(inventory, alive(inventory, {n.name for n in inventory.nodes}))
    assert Counter(plan.node_ids) == {"id-hgx-head": 4, **{f"id-dgx-0{i}": 8 for i in range(1, 5)}}
    assert plan.gpu_per_rank and plan.hosts == 5
    assert plan.nics == 2  # the HGX head brings 2 HCAs for its 4 GPUs
    dgx = plan_ranks(inventory, alive(inventory, {"dgx-01", "dgx-02"}))
    assert len(dgx.node_ids) == 16 and dgx.nics == 8 and dgx.describe() == "16 ranks on 2 nodes (8 per node)"


def test_a_healthy_dgx_pair_passes_per_nic_and_a_degraded_one_fails(inventory):
    plan = plan_ranks(inventory, alive(inventory, {"dgx-01", "dgx-02"}))
    # nccl-tests on two DGX H100 without SHARP: about 370 GB/s of bus bandwidth.
    healthy = judge(370.0, "nccl", plan, NCCL_BYTES)
    assert healthy.outcome == "pass", healthy
    assert "46.2 GB/s per NIC over 8 NICs per node" in healthy.detail
    assert f"target {PER_NIC_TARGET_GB_S:.0f} GB/s per NIC" in healthy.detail
    # The old target (one rank per node against the sum of 8 ports, 240 GB/s) failed
    # a healthy pair measured with one rank each (one port, ~45 GB/s); per NIC it passes.
    one_each = plan_ranks(
        inventory.model_copy(update={"nodes": [n.model_copy(update={"gpus": 1}) for n in inventory.nodes]}),
        alive(inventory, {"dgx-01", "dgx-02"}),
    )
    assert one_each.nics == 1 and judge(45.0, "nccl", one_each, NCCL_BYTES).outcome == "pass"
    # Four of eight ports down (or traffic on TCP): half the bandwidth, under the target.
    degraded = judge(120.0, "nccl", plan, NCCL_BYTES)
    assert degraded.outcome == "fail" and "15.0 GB/s per NIC" in degraded.detail
    assert "NET/IB" in degraded.remedy


def test_no_link_target_on_one_node_without_ib_or_on_gloo(inventory):
    one = plan_ranks(inventory, alive(inventory, {"dgx-01"}))
    assert len(one.node_ids) == 8 and one.hosts == 1
    assert "no link target (one node)" in judge(900.0, "nccl", one, NCCL_BYTES).detail
    no_ib = inventory.model_copy(
        update={"nodes": [n.model_copy(update={"ib_hcas": []}) for n in inventory.nodes]}
    )
    plan = plan_ranks(no_ib, alive(inventory, {"dgx-01", "dgx-02"}))
    assert "no InfiniBand HCAs" in judge(1.0, "nccl", plan, NCCL_BYTES).detail
    assert "no link target (Gloo on CPU)" in judge(1.0, "gloo", plan, 64 << 20).detail
    # A node of one GPU (or none) alone: two CPU ranks, nothing to hold a GPU each.
    head = inventory.head.model_copy(update={"gpus": 1})
    single = plan_ranks(inventory.model_copy(update={"nodes": [head]}), alive(inventory, {"hgx-head"}))
    assert single.node_ids == ["id-hgx-head"] * 2 and not single.gpu_per_rank
    assert plan_ranks(inventory, {}).node_ids == []
