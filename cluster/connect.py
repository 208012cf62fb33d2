"""Join a running cluster as a driver, with its token (`cluster status`, `doctor`).

The address and token come from the inventory (the head's address and GCS port,
`ray.auth_token_file`) or are given directly. Run it on a node of the cluster,
usually the head: a Ray driver needs a raylet on its own host.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cluster.inventory import Inventory
from foundation import UserError, offline


@dataclass(frozen=True)
class Target:
    """Where the cluster is and which token opens it."""

    address: str
    token_file: Path
    inventory: Inventory | None = None


def target(inventory: Inventory | None, address: str | None, token_file: Path | None, home: Path) -> Target:
    """Resolve the cluster address and token file.

    `address` (host:port) wins over the inventory's head; the token file is
    `token_file`, else the inventory's, else $RAY_AUTH_TOKEN_PATH, else the
    Sekisho home's (the embedded cluster's).
    """
    if inventory is None and not address:
        raise UserError("cluster: say which cluster: an inventory YAML, or --address HOST:PORT.")
    if not address:
        address = f"{inventory.head.address}:{inventory.ray.gcs_port}"
    if token_file is None:
        if inventory is not None:
            token_file = inventory.ray.auth_token_file
        elif os.environ.get("RAY_AUTH_TOKEN_PATH"):
            token_file = Path(os.environ["RAY_AUTH_TOKEN_PATH"])
        else:
            token_file = home / "ray" / "auth_token"
    token_file = token_file.expanduser()
    if not token_file.is_file():
        raise UserError(
            f"cluster: no Ray token at {token_file}; the cluster refuses drivers "
            f"without it. Copy the token `sekisho cluster up` created, or pass "
            f"--token-file."
        )
    return Target(address, token_file, inventory)


def own_address(gcs_address: str) -> str:
    """This host's address on the route to the GCS. A UDP connect sends nothing;
    without it Ray's driver probes 8.8.8.8 for its own address (zero egress), and
    then falls back to the host name's address, which may not be the node's."""
    host, port = gcs_address.rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, int(port)))
        return s.getsockname()[0]


def connect(t: Target) -> dict:
    """Join the cluster at `t.address` as a driver with token authentication.

    Returns:
        Ray's address info; `dashboard_url` is where the Jobs and Serve APIs are.

    Raises:
        UserError: nothing answers at the address, or it refused the token.
    """
    host, port = t.address.rsplit(":", 1)
    try:  # Ray's own connect waits minutes for a GCS that is not there
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as exc:
        raise UserError(
            f"cluster: nothing answers at {t.address} ({exc.strerror or exc}); is "
            f"the cluster up (`sekisho cluster up`) and is the address right?"
        ) from exc
    offline.apply()
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(t.token_file)
    import ray
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
    if ipaddress.ip_address(socket.gethostbyname(host)).is_loopback:
        # Ray resolves a loopback GCS address to "this node's address", which it finds
        # by probing 8.8.8.8 (as for the embedded cluster, cluster/local.py).
        import ray._private.ray_constants as ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ctx = ray.init(
            address=t.address,
            _node_ip_address=own_address(t.address),
            log_to_driver=False,
            configure_logging=True,
            logging_level="WARNING",
        )
    except (ConnectionError, RuntimeError, OSError) as exc:
        raise UserError(
            f"cluster: cannot join the Ray cluster at {t.address} with the token "
            f"in {t.token_file}: {str(exc).splitlines()[0]}. Is it up "
            f"(`sekisho cluster up`), and is this a node of it?"
        ) from exc
    return {"gcs_address": t.address, "dashboard_url": ctx.dashboard_url}
