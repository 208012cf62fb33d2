"""What a running cluster is doing: nodes and their GPUs, Serve apps and their
replicas, running jobs. Call `collect()` from a connected driver
(`cluster.connect.connect`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from cluster.inventory import NODE_LABEL_KEY


def _name(value) -> str:
    return str(getattr(value, "value", value))


@dataclass
class NodeStatus:
    name: str
    address: str
    alive: bool
    gpus_total: float
    gpus_used: float
    cpus_total: float
    cpus_used: float
    head: bool


@dataclass
class DeploymentStatus:
    app: str
    name: str
    status: str
    replicas: dict[str, int]  # replica state -> count


@dataclass
class JobStatus:
    job: str  # submission id, or the Ray job id of a driver started outside the Jobs API
    kind: str  # "SUBMISSION" or "DRIVER"
    status: str
    entrypoint: str


@dataclass
class ClusterStatus:
    nodes: list[NodeStatus] = field(default_factory=list)
    apps: dict[str, str] = field(default_factory=dict)  # app name -> status
    deployments: list[DeploymentStatus] = field(default_factory=list)
    jobs: list[JobStatus] = field(default_factory=list)


def nodes() -> list[NodeStatus]:
    """Every node Ray knows, alive or dead, with GPUs and CPUs total and in use."""
    import ray
    from ray._private.state import available_resources_per_node

    free = available_resources_per_node()
    out = []
    for n in ray.nodes():
        total = n.get("Resources", {})
        avail = free.get(n["NodeID"], {})
        labels = n.get("Labels") or {}
        out.append(
            NodeStatus(
                name=labels.get(NODE_LABEL_KEY, n.get("NodeName", "")),
                address=n["NodeManagerAddress"],
                alive=bool(n["Alive"]),
                gpus_total=total.get("GPU", 0),
                gpus_used=total.get("GPU", 0) - avail.get("GPU", 0),
                cpus_total=total.get("CPU", 0),
                cpus_used=total.get("CPU", 0) - avail.get("CPU", 0),
                head="node:__internal_head__" in total,
            )
        )
    return sorted(out, key=lambda s: (not s.head, s.address))


def serve_status(st: ClusterStatus) -> None:
    """Serve applications, their deployments and replica counts by state."""
    from ray import serve

    for app_name, app in serve.status().applications.items():
        st.apps[app_name] = _name(app.status)
        for name, dep in app.deployments.items():
            st.deployments.append(
                DeploymentStatus(
                    app_name, name, _name(dep.status), {_name(k): v for k, v in dep.replica_states.items()}
                )
            )


def running_jobs(dashboard_url: str) -> list[JobStatus]:
    """Jobs (submitted ones and other drivers) that have not finished; not this one."""
    import ray
    from ray.job_submission import JobStatus as RayJobStatus
    from ray.job_submission import JobSubmissionClient

    me = ray.get_runtime_context().get_job_id()
    client = JobSubmissionClient(f"http://{dashboard_url}")
    return [
        JobStatus(j.submission_id or j.job_id or "", _name(j.type), _name(j.status), j.entrypoint)
        for j in client.list_jobs()
        if j.status in (RayJobStatus.PENDING, RayJobStatus.RUNNING) and j.job_id != me
    ]


def collect(dashboard_url: str | None) -> ClusterStatus:
    """The cluster's state; jobs only where the dashboard (Jobs API) runs."""
    st = ClusterStatus(nodes=nodes())
    serve_status(st)
    if dashboard_url:
        st.jobs = running_jobs(dashboard_url)
    return st
