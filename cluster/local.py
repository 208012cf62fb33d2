"""Start or join Ray with Sekisho's security defaults.

- Zero egress: `offline.apply()` runs before Ray is imported.
- Token authentication on, with the token in a file only its owner can read
  (Ray's own default file is created world-readable).
- The dashboard (which carries the Jobs API, i.e. remote code execution) is not
  started for the embedded default; everything binds to loopback.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from foundation import offline


def ensure_token(path: Path) -> Path:
    """Create a 256-bit Ray auth token at `path` (mode 0600) if missing, and
    tighten the mode of an existing one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    if stat.S_IMODE(path.stat().st_mode) != 0o600:
        os.chmod(path, 0o600)
    return path


def token_auth_env(home: Path) -> dict[str, str]:
    """The environment every process that joins the cluster needs."""
    token = ensure_token(home / "ray" / "auth_token")
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}


# Ray Serve's background work, polled 10 times a second by default: the
# controller's loop and every replica's metrics export. On a CPU-bound node
# those polls take CPU from the engines (about 5% of a core for the controller
# alone on the 2-core CI machine); a deployment still converges within a second.
QUIET_SERVE_ENV = {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5", "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000"}


# An embedded single-node cluster (`start_local` without an address) runs beside the
# work on the same few cores, and every process of Ray's that wakes takes a core
# from it: on 2 cores each wake-up also stalls the training worker's other torch
# thread at its next barrier, so they cost more than their own CPU time. What these
# switch off or slow down has no reader on such a cluster (no dashboard, no
# Prometheus, `log_to_driver=False`):
# - idle workers started ahead of demand (one per logical CPU, at start and for the
#   first driver), each a process with its own timers;
# - metrics export from every Ray process to the node's agent, and Ray Train's metrics;
# - the agent's node statistics (psutil over every process, every 5 s; the dashboard's);
# - the log monitor's scan of the log folder (a glob every 0.1 s below 1000 files; now
#   every 5 s) and the agent's check on the raylet (every 0.4 s; now 2 s);
# - Ray Train's preemption watcher (a node of such a cluster is never drained), and the
#   Train controller's poll of its workers every 2 s (now 5 s: a dead worker is still
#   noticed at the next poll).
# Each is a `setdefault`: a variable set in the environment wins.
QUIET_LOCAL_ENV = {
    "RAY_enable_worker_prestart": "0",
    "RAY_prestart_worker_first_driver": "0",
    "RAY_enable_metrics_collection": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "REPORTER_UPDATE_INTERVAL_MS": "60000",
    "RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "0",
    "LOG_NAME_UPDATE_INTERVAL_S": "5",
    "RAY_DASHBOARD_AGENT_CHECK_PARENT_INTERVAL_S": "2",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "5",
}


def _load_process_hooks() -> None:
    """Every process of the node loads cluster/egress_hook/sitecustomize.py (the
    cure for the Ray dashboard's cloud-metadata probe; the egress recorder)."""
    from cluster.egress import HOOK_DIR

    path = os.environ.get("PYTHONPATH", "")
    if str(HOOK_DIR) not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = f"{HOOK_DIR}{os.pathsep}{path}" if path else str(HOOK_DIR)


def start_local(
    home: Path, num_cpus: int = 4, num_gpus: int | None = None, address: str | None = None
) -> dict:
    """Start (or join, with `address`) a Ray cluster with token auth and no egress.

    Args:
        home: Sekisho home; the token lives in `home/ray/auth_token`.
        num_cpus: logical CPUs for a new local cluster. More than the cores is
            fine and needed on small machines: Serve's ingress needs a CPU beside
            the engine's placement group.

    Returns:
        Ray's context info (address, dashboard url, ...).
    """
    offline.apply()
    if not (address and (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"))):
        # Joining a cluster whose token this process already has (a submitted job,
        # a node started with the token): keep it; else the home's token file.
        os.environ.update(token_auth_env(home))
    else:
        os.environ["RAY_AUTH_MODE"] = "token"
    for k, v in QUIET_SERVE_ENV.items():
        os.environ.setdefault(k, v)
    _load_process_hooks()
    if not address:
        # A single-node cluster: without this Ray's driver asks for its own address
        # by connecting a UDP socket to 8.8.8.8 before it knows the node's IP (in
        # C++, where no Python hook sees it). Read at import, so set it first, and
        # patch the constant in case Ray was imported before.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        for k, v in QUIET_LOCAL_ENV.items():
            os.environ.setdefault(k, v)
    import ray
    import ray._private.ray_constants as ray_constants
    from ray._raylet import AuthenticationTokenLoader, Config

    # Ray caches its config and token at first use; if anything in this process
    # touched Ray before (a config validation, say), make it read the token mode
    # and token set above, as Ray's own token setup does.
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()

    if ray.is_initialized():
        return {"address": ray.get_runtime_context().gcs_address}
    kwargs: dict = {
        "include_dashboard": False,
        "log_to_driver": False,
        "configure_logging": True,
        "logging_level": "WARNING",
    }
    if address:
        ctx = ray.init(address=address, **kwargs)
    else:
        ray_constants.ENABLE_RAY_CLUSTER = False
        ctx = ray.init(num_cpus=num_cpus, num_gpus=num_gpus, _node_ip_address="127.0.0.1", **kwargs)
    return {
        "address": ctx.address_info.get("gcs_address"),
        "session_dir": ctx.address_info.get("session_dir"),
    }


def stop() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
