"""`ray up` and KubeRay output, validated against the schemas those tools ship:
Ray's ray-schema.json (in the installed ray package) and KubeRay's CRDs (copied
into tests/cluster/schemas/kuberay from the KubeRay project, Apache-2.0)."""

import functools
import json
import stat
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from cluster import (
    Inventory,
    render_kuberay,
    render_ray_up,
    write_kuberay,
    write_ray_up,
)
from foundation.offline import OFFLINE_ENV

REPO = Path(__file__).resolve().parents[2]
CRDS = Path(__file__).parent / "schemas" / "kuberay"
TOKEN = "0123456789abcdef" * 4


@pytest.fixture(scope="module")
def inventory() -> Inventory:
    return Inventory.from_yaml(REPO / "configs" / "cluster" / "reference.yaml")


def ray_schema() -> dict:
    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


@functools.cache
def crd_schema(name: str) -> dict:
    # The CRDs are about 1 MB each: the C loader parses them in a fraction of the time.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load((CRDS / f"ray.io_{name}.yaml").read_text(), Loader=loader)
    return next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]


def undeclared_fields(instance, schema, path="") -> list[str]:
    """Keys the API server would prune: not in `properties` where the schema lists them."""
    out = []
    if isinstance(instance, dict) and "properties" in schema:
        for k, v in instance.items():
            if k in schema["properties"]:
                out += undeclared_fields(v, schema["properties"][k], f"{path}.{k}")
            elif not schema.get("additionalProperties") and not schema.get(
                "x-kubernetes-preserve-unknown-fields"
            ):
                out.append(f"{path}.{k}")
    elif isinstance(instance, list) and "items" in schema:
        for i, v in enumerate(instance):
            out += undeclared_fields(v, schema["items"], f"{path}[{i}]")
    return out


# ---- ray up -----------------------------------------------------------------


def test_ray_up_config_validates_against_rays_schema(inventory, tmp_path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    out = write_ray_up(inventory, tmp_path / "ray-up.yaml")
    text = out.read_text()
    config = yaml.safe_load(text)
    jsonschema.validate(config, ray_schema())
    validate_config(prepare_config(config))  # what `ray up` itself does first
    assert config["provider"] == {
        "type": "local",
        "head_ip": "10.20.0.10",
        "worker_ips": ["10.20.0.11", "10.20.0.12", "10.20.0.13", "10.20.0.14"],
    }
    broken = {**config, "worker_ips": config["provider"]["worker_ips"]}  # misplaced key
    with pytest.raises(jsonschema.ValidationError, match="worker_ips"):
        jsonschema.validate(broken, ray_schema())


def test_token_travels_as_a_file_and_ends_up_private(inventory):
    config = render_ray_up(inventory)
    local = str(inventory.ray.auth_token_file.expanduser())
    assert config["file_mounts"] == {"~/.sekisho/ray/auth_token": local}
    assert "chmod 600 ~/.sekisho/ray/auth_token" in config["setup_commands"][0]
    assert "RAY_AUTH_TOKEN=" not in json.dumps(config)


def test_head_binds_dashboard_inside_with_auth_and_no_usage_stats(inventory):
    head = render_ray_up(inventory)["head_start_ray_commands"][1]
    for flag in (
        "--head",
        "--dashboard-host=10.20.0.10",
        "--disable-usage-stats",
        "--node-ip-address=10.20.0.10",
        "--num-gpus=4",
        "--labels=sekisho/node=hgx-head",
        """--resources='{"sekisho_node_hgx-head": 1}'""",
    ):
        assert flag in head
    assert "RAY_AUTH_MODE=token" in head and "0.0.0.0" not in head


def fake_node(tmp_path, addresses: str, python_flags: str = "") -> dict:
    """A PATH where `hostname -I` prints `addresses` and `ray` records its
    environment and arguments, to run the rendered worker command for real. The
    node's `python` is this one (with `python_flags`: `-S` hides Sekisho)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "hostname").write_text(f"#!/bin/sh\necho '{addresses}'\n")
    (bin_dir / "ray").write_text(f'#!/bin/sh\nenv > {tmp_path}/env\necho "$@" > {tmp_path}/args\n')
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec {sys.executable} {python_flags} "$@"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "RAY_HEAD_IP": "10.20.0.10"}


def test_each_worker_gets_its_own_environment_from_the_one_command(inventory, tmp_path):
    fake_env = inventory.ray.model_copy(update={"python_env": tmp_path})
    inv = inventory.model_copy(update={"ray": fake_env})
    command = render_ray_up(inv)["worker_start_ray_commands"][1]
    env = fake_node(tmp_path, "172.17.0.1 10.20.0.13 ")
    subprocess.run(["bash", "-c", command], env=env, check=True, timeout=30, cwd=tmp_path)
    started = dict(line.split("=", 1) for line in (tmp_path / "env").read_text().splitlines() if "=" in line)
    for key, value in OFFLINE_ENV.items():
        if key != "VLLM_HOST_IP":
            assert started[key] == value, key
    assert started["VLLM_HOST_IP"] == "10.20.0.13"
    assert started["RAY_AUTH_MODE"] == "token"
    assert started["RAY_AUTH_TOKEN_PATH"] == f"{tmp_path}/.sekisho/ray/auth_token"
    assert started["NCCL_IB_HCA"] == "=mlx5_0,mlx5_1,mlx5_2,mlx5_3,mlx5_6,mlx5_7,mlx5_8,mlx5_9"
    assert started["NCCL_SOCKET_IFNAME"] == started["GLOO_SOCKET_IFNAME"] == "bond0"
    args = (tmp_path / "args").read_text().split()
    assert "--address=10.20.0.10:6379" in args and "--node-ip-address=10.20.0.13" in args
    assert "--labels=sekisho/node=dgx-03" in args and "--disable-usage-stats" in args
    # 10.20.0.1 is a prefix of the head's address, not a node: the host refuses to start
    (tmp_path / "args").unlink()
    done = subprocess.run(
        ["bash", "-c", command],
        env=fake_node(tmp_path, "10.20.0.1"),
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 1 and "no node of inventory sekisho-ref" in done.stderr
    assert not (tmp_path / "args").exists()


def on_fake_node(inventory, tmp_path, command_key, addresses="10.20.0.11", python_flags=""):
    """Run the rendered head or worker start command on a fake node; returns the
    finished process and the environment `ray start` got (empty if it never ran)."""
    inv = inventory.model_copy(update={"ray": inventory.ray.model_copy(update={"python_env": tmp_path})})
    command = render_ray_up(inv)[command_key][1]
    env = {**fake_node(tmp_path, addresses, python_flags), "PYTHONPATH": "/opt/site"}
    done = subprocess.run(
        ["bash", "-c", command],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        check=False,
    )
    lines = (tmp_path / "env").read_text().splitlines() if (tmp_path / "env").exists() else []
    return done, dict(line.split("=", 1) for line in lines if "=" in line)


@pytest.mark.parametrize("command_key", ["head_start_ray_commands", "worker_start_ray_commands"])
def test_every_node_loads_the_egress_hook_of_its_own_install(inventory, tmp_path, command_key):
    from cluster.egress import HOOK_DIR

    done, started = on_fake_node(inventory, tmp_path, command_key)
    assert done.returncode == 0, done.stderr
    # first on the path, before what the node had: Ray's processes load its sitecustomize
    assert started["PYTHONPATH"] == f"{HOOK_DIR}:/opt/site"
    assert started["RAY_AUTH_TOKEN_PATH"] == f"{tmp_path}/.sekisho/ray/auth_token"
    assert "SEKISHO_EGRESS_LOG" not in started  # recording is doctor --egress's, on demand


def test_a_node_without_sekisho_refuses_to_start(inventory, tmp_path):
    done, started = on_fake_node(inventory, tmp_path, "worker_start_ray_commands", python_flags="-S")
    assert done.returncode == 1 and not started
    assert f"no Sekisho install (cluster/egress_hook) in {tmp_path}" in done.stderr


def test_the_token_file_ends_up_private_on_the_node(inventory, tmp_path):
    """The setup command `ray up` runs after copying the token (file_mounts, which
    leaves modes as rsync found them), run for real on a fake home."""
    shared = tmp_path / "shared"
    shared.mkdir()
    storage = inventory.shared_storage.model_copy(update={"path": shared})
    config = render_ray_up(inventory.model_copy(update={"shared_storage": storage}))
    token = tmp_path / ".sekisho" / "ray" / "auth_token"
    token.parent.mkdir(parents=True)
    token.write_text(TOKEN)
    token.chmod(0o644)
    token.parent.chmod(0o755)
    subprocess.run(
        ["bash", "-c", config["setup_commands"][0]],
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        check=True,
        timeout=30,
    )
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    # the shared Sekisho home is made (private) by the first node to run it
    assert stat.S_IMODE((shared / "sekisho-home").stat().st_mode) == 0o700
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert all(TOKEN not in c and "RAY_AUTH_TOKEN=" not in c for c in config[key])
    # an empty token (a failed copy) stops the node before Ray starts
    token.write_text("")
    done = subprocess.run(
        ["bash", "-c", config["setup_commands"][0]],
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        timeout=30,
        check=False,
    )
    assert done.returncode != 0


SHARED_ENV = {
    "SEKISHO_HOME": "/shared/sekisho/sekisho-home",
    "SEKISHO_MODEL_STORE": "/shared/sekisho/sekisho-home/model-store",
}


@pytest.mark.parametrize(
    "command_key, addresses",
    [("head_start_ray_commands", "10.20.0.10"), ("worker_start_ray_commands", "10.20.0.12")],
)
def test_every_node_keeps_sekishos_state_on_the_shared_storage(inventory, tmp_path, command_key, addresses):
    """Head and workers start Ray with the same home and model store on the share,
    so a version the driver downloads to the serve cache is found by an engine on
    any node; the YAML's header tells the operator to use the same home."""
    done, started = on_fake_node(inventory, tmp_path, command_key, addresses)
    assert done.returncode == 0, done.stderr
    assert {k: started.get(k) for k in SHARED_ENV} == SHARED_ENV
    header = write_ray_up(inventory, tmp_path / "up.yaml").read_text().split("\ncluster_name:")[0]
    assert "export SEKISHO_HOME=/shared/sekisho/sekisho-home" in header


def test_a_single_node_without_shared_storage_keeps_its_own_home(inventory, tmp_path):
    head = inventory.head.model_copy(update={"address": "127.0.0.1"})
    one = inventory.model_copy(update={"nodes": [head], "shared_storage": None})
    config = render_ray_up(one)
    assert "SEKISHO_HOME" not in json.dumps(config) and "shared storage" not in config["setup_commands"][0]
    pod = render_kuberay(one)["raycluster.yaml"]["spec"]["headGroupSpec"]["template"]["spec"]
    assert pod["volumes"] == [] and pod["containers"][0]["volumeMounts"] == []
    assert "SEKISHO_HOME" not in {e["name"] for e in pod["containers"][0]["env"]}


# ---- KubeRay ----------------------------------------------------------------


@pytest.mark.parametrize(
    "file, crd", [("raycluster.yaml", "rayclusters"), ("rayservice.yaml", "rayservices")]
)
def test_kuberay_manifests_validate_against_the_crds(inventory, tmp_path, file, crd):
    write_kuberay(inventory, tmp_path)
    manifest = yaml.safe_load((tmp_path / file).read_text())
    schema = crd_schema(crd)
    validator = jsonschema.Draft7Validator(schema)  # validate() would also re-check the 1 MB schema
    validator.validate(manifest)
    assert undeclared_fields(manifest, schema) == []
    spec = manifest["spec"] if crd == "rayclusters" else manifest["spec"]["rayClusterConfig"]
    spec["workerGroupSpecs"][0]["replicas"] = "four"
    with pytest.raises(jsonschema.ValidationError, match="'four' is not of type 'integer'"):
        validator.validate(manifest)


@pytest.mark.parametrize("claim", [None, "sekisho-shared"])
def test_every_pod_mounts_the_shared_storage_where_its_home_is(inventory, claim):
    """The share at the same path in every pod (the node's own mount, or one
    ReadWriteMany claim), and every pod's Ray processes use the home on it."""
    storage = inventory.shared_storage.model_copy(update={"persistent_volume_claim": claim})
    manifest = render_kuberay(inventory.model_copy(update={"shared_storage": storage}))["raycluster.yaml"]
    jsonschema.Draft7Validator(crd_schema("rayclusters")).validate(manifest)
    spec = manifest["spec"]
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        (container,) = pod["containers"]
        (volume,) = pod["volumes"]
        assert container["volumeMounts"] == [{"name": volume["name"], "mountPath": "/shared/sekisho"}]
        source = {k: v for k, v in volume.items() if k != "name"}
        assert source == (
            {"persistentVolumeClaim": {"claimName": claim}}
            if claim
            else {"hostPath": {"path": "/shared/sekisho", "type": "Directory"}}
        )
        env = {e["name"]: e["value"] for e in container["env"]}
        assert {k: env[k] for k in SHARED_ENV} == SHARED_ENV


def test_every_pod_is_offline_authenticated_and_pinned(inventory):
    cluster = render_kuberay(inventory)["raycluster.yaml"]
    spec = cluster["spec"]
    assert spec["authOptions"] == {"mode": "token", "secretName": "sekisho-ray-auth"}
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    assert [g.get("groupName") for g in groups[1:]] == ["dgx-01", "dgx-02", "dgx-03", "dgx-04"]
    for group, node in zip(groups, inventory.nodes):
        pod = group["template"]["spec"]
        env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
        assert {k: env[k] for k in OFFLINE_ENV if k != "VLLM_HOST_IP"} == {
            k: v for k, v in OFFLINE_ENV.items() if k != "VLLM_HOST_IP"
        }
        assert env["VLLM_HOST_IP"] == node.address and env["RAY_AUTH_MODE"] == "token"
        assert env["NCCL_IB_HCA"].startswith("=mlx5_0") and env["NCCL_SOCKET_IFNAME"] == "bond0"
        assert pod["nodeSelector"] == {"kubernetes.io/hostname": node.name}
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == node.gpus
        assert group["rayStartParams"]["disable-usage-stats"] == "true"
        assert group["labels"] == {"sekisho/node": node.name}
        assert group["resources"] == {f"sekisho_node_{node.name}": "1"}
    assert spec["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "10.20.0.10"


def test_the_token_never_lands_in_a_manifest(inventory, tmp_path, monkeypatch):
    token_file = tmp_path / "auth_token"
    token_file.write_text(TOKEN)
    monkeypatch.setenv("HOME", str(tmp_path))
    ray_settings = inventory.ray.model_copy(update={"auth_token_file": token_file})
    inv = inventory.model_copy(update={"ray": ray_settings})
    written = write_kuberay(inv, tmp_path / "k8s") + [write_ray_up(inv, tmp_path / "up.yaml")]
    for path in written:
        assert TOKEN not in path.read_text(), path
    readme = (tmp_path / "k8s" / "README.txt").read_text()
    assert f"--from-file=auth_token={token_file}" in readme
    assert "cluster/egress_hook folder first on PYTHONPATH" in readme  # not renderable here


def test_kuberay_needs_a_kubernetes_section(inventory):
    from foundation import UserError

    with pytest.raises(UserError, match="no `kubernetes:` section"):
        render_kuberay(inventory.model_copy(update={"kubernetes": None}))


def test_crd_copies_match_the_shared_originals():
    shared = REPO.parent / "shared" / "schemas" / "kuberay"
    if not shared.is_dir():
        pytest.skip(f"{shared} is not beside this checkout")
    for name in ("ray.io_rayclusters.yaml", "ray.io_rayservices.yaml", "LICENSE"):
        assert (CRDS / name).read_bytes() == (shared / name).read_bytes(), name
