"""RayCluster and RayService manifests for KubeRay on an offline Kubernetes.

One worker group per inventory node (replicas 1, pinned by nodeSelector), so each
pod carries its node's NCCL settings, Ray label and resource exactly as on bare
metal. Pods use the host network: NCCL_SOCKET_IFNAME names host interfaces and
the dashboard binds to the head's internal address. The Ray token comes from a
Secret through KubeRay's `authOptions`; no manifest holds it.

The image is built from Sekisho's Dockerfile (the repository root): it installs
the offline bundle with no network and puts the egress hook (see
`cluster.node_env`) first on PYTHONPATH, which the renderer cannot do since the
hook's folder depends on the image; it matters most here, since on Kubernetes the
Ray dashboard asks the cloud metadata servers which cloud it runs on, whatever the
usage-stats switch. The manifests name the Dockerfile in an annotation, and the
README written beside them gives the build command.
"""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml

from cluster.inventory import NODE_LABEL_KEY, Inventory, KubernetesSettings, Node
from cluster.node_env import node_env
from foundation import UserError

IMAGE_BUILD = "Dockerfile"  # in Sekisho's repository root
IMAGE_ANNOTATION = "sekisho/image-build"


def _settings(inventory: Inventory) -> KubernetesSettings:
    if inventory.kubernetes is None:
        raise UserError(
            f"inventory {inventory.name} has no `kubernetes:` section (image, "
            f"namespace, auth_secret); add one to render KubeRay manifests."
        )
    return inventory.kubernetes


def _pod(inventory: Inventory, node: Node, k8s: KubernetesSettings) -> dict[str, Any]:
    env = [{"name": k, "value": v} for k, v in node_env(inventory, node, None).items()]
    urls = [f"http://{node.address}:52365/api/local_raylet_healthz"]
    if node.role == "head":
        urls.append(f"http://{node.address}:{inventory.ray.dashboard_port}/api/gcs_healthz")
    probe = {
        "exec": {"command": health_command(urls)},
        "initialDelaySeconds": 30,
        "periodSeconds": 10,
        "timeoutSeconds": 5,
        "failureThreshold": 6,
    }
    container = {
        "name": "ray-head" if node.role == "head" else "ray-worker",
        "image": k8s.image,
        "imagePullPolicy": "IfNotPresent",
        "env": env,
        # GPUs only: a CPU request of the whole node would exceed its allocatable
        # CPUs (kubelet reserves some); Ray's share is set by num-cpus instead.
        "resources": {"limits": {"nvidia.com/gpu": node.gpus}, "requests": {"nvidia.com/gpu": node.gpus}},
        "volumeMounts": _mounts(inventory),
        # KubeRay's default probes ask localhost, where nothing listens here.
        "readinessProbe": probe,
        "livenessProbe": probe,
    }
    return {
        "spec": {
            "hostNetwork": True,
            "dnsPolicy": "ClusterFirstWithHostNet",
            "nodeSelector": {"kubernetes.io/hostname": node.kubernetes_node or node.name},
            "containers": [container],
            "volumes": _volumes(inventory),
        }
    }


def health_command(urls: list[str]) -> list[str]:
    """A probe that fails unless every URL answers 2xx within 2 s, with nothing but
    the image's Python (the Dockerfile's slim base has no wget or curl)."""
    code = "import sys, urllib.request as u\nfor url in sys.argv[1:]:\n    u.urlopen(url, timeout=2).close()"
    return ["python3", "-c", code, *urls]


def _mounts(inventory: Inventory) -> list[dict[str, Any]]:
    shared = inventory.shared_storage
    return [] if shared is None else [{"name": "shared", "mountPath": str(shared.path)}]


def _volumes(inventory: Inventory) -> list[dict[str, Any]]:
    """The shared storage at the same path in every pod: the claim, else the node's mount."""
    shared = inventory.shared_storage
    if shared is None:
        return []
    if shared.persistent_volume_claim:
        return [{"name": "shared", "persistentVolumeClaim": {"claimName": shared.persistent_volume_claim}}]
    return [{"name": "shared", "hostPath": {"path": str(shared.path), "type": "Directory"}}]


def _start_params(inventory: Inventory, node: Node) -> dict[str, str]:
    params = {"num-gpus": str(node.gpus), "num-cpus": str(node.cpus), "disable-usage-stats": "true"}
    if node.role == "head":
        params.update(
            {
                "dashboard-host": node.address,
                "dashboard-port": str(inventory.ray.dashboard_port),
                "port": str(inventory.ray.gcs_port),
            }
        )
    return params


def _group(inventory: Inventory, node: Node, k8s: KubernetesSettings) -> dict[str, Any]:
    group = {
        "rayStartParams": _start_params(inventory, node),
        "labels": {NODE_LABEL_KEY: node.name},
        "resources": {node.ray_resource: "1"},
        "template": _pod(inventory, node, k8s),
    }
    if node.role == "worker":
        group.update({"groupName": node.name, "replicas": 1, "minReplicas": 1, "maxReplicas": 1})
    return group


def raycluster_spec(inventory: Inventory) -> dict[str, Any]:
    """The `spec` of a RayCluster (also a RayService's `rayClusterConfig`)."""
    k8s = _settings(inventory)
    return {
        "rayVersion": version("ray"),
        "authOptions": {"mode": "token", "secretName": k8s.auth_secret},
        "enableInTreeAutoscaling": False,
        "headGroupSpec": _group(inventory, inventory.head, k8s),
        "workerGroupSpecs": [_group(inventory, n, k8s) for n in inventory.workers],
    }


def render_kuberay(inventory: Inventory) -> dict[str, dict[str, Any]]:
    """RayCluster and RayService manifests.

    Returns:
        File name -> manifest. The RayService's `serveConfigV2` is a skeleton with no
        applications; `sekisho serve` fills it from the serve configs.

    Raises:
        UserError: the inventory has no `kubernetes:` section.
    """
    k8s = _settings(inventory)
    meta = {
        "namespace": k8s.namespace,
        "labels": {"app.kubernetes.io/part-of": "sekisho"},
        "annotations": {IMAGE_ANNOTATION: f"{k8s.image} from Sekisho's {IMAGE_BUILD} and an offline bundle"},
    }
    spec = raycluster_spec(inventory)
    serve_config = yaml.safe_dump(
        {"http_options": {"host": "0.0.0.0", "port": 8000}, "applications": []}, sort_keys=False
    )
    return {
        "raycluster.yaml": {
            "apiVersion": "ray.io/v1",
            "kind": "RayCluster",
            "metadata": {"name": inventory.name, **meta},
            "spec": spec,
        },
        "rayservice.yaml": {
            "apiVersion": "ray.io/v1",
            "kind": "RayService",
            "metadata": {"name": f"{inventory.name}-serve", **meta},
            "spec": {"serveConfigV2": serve_config, "rayClusterConfig": spec},
        },
    }


def write_kuberay(inventory: Inventory, out_dir: Path) -> list[Path]:
    """Write the manifests, and a README with the one command that creates the
    token Secret from the token file (so the token never sits in a manifest)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    k8s = _settings(inventory)
    written = []
    for name, manifest in render_kuberay(inventory).items():
        path = out_dir / name
        path.write_text(
            f"# Generated by: sekisho cluster render --kuberay {out_dir}\n"
            + yaml.safe_dump(manifest, sort_keys=False, width=1000),
            encoding="utf-8",
        )
        written.append(path)
    readme = out_dir / "README.txt"
    readme.write_text(
        f"Create the Ray token Secret first (key auth_token; the token stays out of YAML):\n"
        f"  kubectl -n {k8s.namespace} create secret generic {k8s.auth_secret} "
        f"--from-file=auth_token={inventory.ray.auth_token_file}\n"
        f"Then: kubectl apply -f {out_dir / 'raycluster.yaml'}  (or rayservice.yaml).\n"
        f"The image {k8s.image}: build it from Sekisho's {IMAGE_BUILD} (repository root)\n"
        f"  and an offline bundle (`sekisho bundle build --gpu --out BUNDLE`), with no network:\n"
        f"  docker build --network=none -f {IMAGE_BUILD} -t {k8s.image} BUNDLE\n"
        f"  docker push {k8s.image}\n"
        f"  It puts Sekisho's cluster/egress_hook folder first on PYTHONPATH, which stops\n"
        f"  the Ray dashboard asking cloud metadata servers (169.254.169.254,\n"
        f"  metadata.google.internal) where it runs; an image built otherwise must too.\n"
        f"Node resources and labels: {json.dumps({n.name: n.ray_resource for n in inventory.nodes})}\n",
        encoding="utf-8",
    )
    return written + [readme]
