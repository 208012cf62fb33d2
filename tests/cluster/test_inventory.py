"""The reference inventory, and inventory mistakes reported with file and line."""

from pathlib import Path

import pytest

from cluster import Inventory
from foundation import ConfigError

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "configs" / "cluster" / "reference.yaml"


@pytest.fixture(scope="module")
def inventory() -> Inventory:
    return Inventory.from_yaml(REFERENCE)


def test_reference_inventory_is_the_installation_in_design_md(inventory):
    assert inventory.total_gpus == 36
    assert (inventory.head.name, inventory.head.gpus) == ("hgx-head", 4)
    assert [n.gpus for n in inventory.workers] == [8, 8, 8, 8]
    assert {n.gpu_memory_gib for n in inventory.nodes} == {80}
    assert all(n.ib_hcas and n.nccl_socket_ifname for n in inventory.nodes)
    assert str(inventory.shared_storage.path) == "/shared/sekisho"
    assert [n.memory_gb for n in inventory.workers] == [2000] * 4  # DGX H100: 2 TB of host RAM
    assert inventory.gpu_node_memory_gb == 1000  # the HGX head is the smallest GPU node


def test_a_training_job_is_checked_against_the_nodes_host_memory(inventory, tmp_path):
    """The job's host-memory estimate (train.estimate_memory) is compared with the
    inventory's memory_gb, not with the job config's assumed 2000 GB."""
    from data import DatasetConfig
    from foundation import UserError
    from train import FullJobConfig
    from train.job import check_job
    from train.memory import estimate_memory

    data = tmp_path / "d.yaml"
    data.write_text("name: d\npath: samples:internal_faq_ja.jsonl\nformat: chat\n")
    cfg = FullJobConfig.from_yaml(REPO / "configs" / "train" / "llama70b_full_zero3_offload_dgx4.yaml")
    est = estimate_memory(cfg)
    assert est.fits, est.describe()  # fits the config's assumed 2000 GB per node
    host_gb = est.host_per_node / 1e9
    check_job(cfg, DatasetConfig.from_yaml(data), inventory)  # and the reference nodes' RAM
    small = inventory.model_copy(
        update={"nodes": [n.model_copy(update={"memory_gb": host_gb * 0.9}) for n in inventory.nodes]}
    )
    with pytest.raises(UserError, match="does not fit in host memory") as err:
        check_job(cfg, DatasetConfig.from_yaml(data), small)
    assert f"of {host_gb * 0.9:.0f} GB" in str(err.value)
    unknown = inventory.model_copy(
        update={"nodes": [n.model_copy(update={"memory_gb": None}) for n in inventory.nodes]}
    )
    assert unknown.gpu_node_memory_gb is None
    check_job(cfg, DatasetConfig.from_yaml(data), unknown)  # unknown RAM: the config's own figure


def test_every_field_has_a_description():
    from cluster.gpu_requests import GpuRequest, GpuRequests
    from cluster.inventory import KubernetesSettings, Node, RaySettings, SharedStorage

    for cls in (Inventory, Node, RaySettings, KubernetesSettings, SharedStorage, GpuRequest, GpuRequests):
        assert all(cls.field_help().values()), cls.__name__


def _broken(tmp_path, old, new):
    text = REFERENCE.read_text()
    assert old in text
    p = tmp_path / "inv.yaml"
    p.write_text(text.replace(old, new, 1))
    return p


def test_unknown_key_names_file_line_and_path(tmp_path):
    p = _broken(
        tmp_path,
        "    gpu_memory_gib: 80\n    cpus: 224\n",
        "    gpu_memory_gib: 80\n    gpu_mem: 80\n    cpus: 224\n",
    )
    with pytest.raises(ConfigError) as e:
        Inventory.from_yaml(p)
    line = p.read_text().splitlines().index("    gpu_mem: 80") + 1
    assert f"{p}:{line}: nodes.1.gpu_mem: unknown key" in str(e.value)


def test_two_heads_are_refused(tmp_path):
    p = _broken(tmp_path, "role: worker", "role: head")
    with pytest.raises(
        ConfigError,
        match="exactly one node must have role: head, found 2 "
        r"\(hgx-head, dgx-01\)",
    ):
        Inventory.from_yaml(p)


def test_public_address_and_duplicate_address_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"nodes.2.address: .*8.8.4.4 is not a private"):
        Inventory.from_yaml(_broken(tmp_path, "10.20.0.12", "8.8.4.4"))
    with pytest.raises(ConfigError, match="addresses must be unique; repeated: 10.20.0.11"):
        Inventory.from_yaml(_broken(tmp_path, "10.20.0.12", "10.20.0.11"))


def test_node_names_must_work_as_ray_labels_and_k8s_names(tmp_path):
    with pytest.raises(ConfigError, match=r"nodes.1.name: String should match pattern"):
        Inventory.from_yaml(_broken(tmp_path, "name: dgx-01", "name: DGX_01"))


def test_several_nodes_without_shared_storage_are_refused_naming_the_field(tmp_path):
    text = REFERENCE.read_text()
    start = text.index("shared_storage:")
    end = text.index("\nray:", start)
    p = tmp_path / "inv.yaml"
    p.write_text(text[:start] + text[end + 1 :])
    with pytest.raises(ConfigError) as e:
        Inventory.from_yaml(p)
    line = p.read_text().splitlines().index("name: sekisho-ref") + 1  # the top level: no such key
    assert f"{p}:{line}: shared_storage: " in str(e.value)
    assert "required for a cluster of 5 nodes" in str(e.value)
    assert "shared_storage: {path: /shared/sekisho}" in str(e.value)
    # One node needs none: it keeps its state in its own home.
    head = text[: text.index("  - name: dgx-01")]
    p.write_text(head[:start] + head[end + 1 :])
    assert Inventory.from_yaml(p).shared_storage is None


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("path: /shared/sekisho", "path: shared/sekisho", "shared_storage.path: .*not an absolute path"),
        ("home: sekisho-home", "home: ../elsewhere", "shared_storage.home: .*relative to path"),
    ],
)
def test_shared_storage_paths_are_checked(tmp_path, old, new, message):
    with pytest.raises(ConfigError, match=message):
        Inventory.from_yaml(_broken(tmp_path, old, new))
