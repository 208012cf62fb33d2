"""Bare-metal bring-up: `ray up` / `ray down` on the config rendered from the inventory.

The token is generated (0600) on the machine that runs `ray up` before the
config is written; `file_mounts` copies it to every node and the setup command
makes it 0600 there (cluster/ray_up.py). `ray up` runs the same config again on
every call, so an edited inventory takes effect on the next `up`.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Literal

from cluster.inventory import Inventory
from cluster.local import ensure_token
from cluster.ray_up import write_ray_up
from foundation import UserError

Action = Literal["up", "down"]


def ray_executable() -> str:
    """The `ray` beside this Python (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "ray"
    if beside.exists():
        return str(beside)
    found = shutil.which("ray")
    if not found:
        raise UserError(
            "cluster: no `ray` command beside this Python or on PATH; "
            "install Sekisho's environment (`make install`) first."
        )
    return found


def config_path(inventory: Inventory, home: Path) -> Path:
    """Where the rendered `ray up` config of this inventory is kept."""
    return home / "cluster" / f"{inventory.name}.ray-up.yaml"


def prepare(inventory: Inventory, home: Path) -> Path:
    """Make sure the token exists (0600) and write the `ray up` config.

    Returns:
        The config's path.
    """
    ensure_token(inventory.ray.auth_token_file.expanduser())
    return write_ray_up(inventory, config_path(inventory, home))


def ray_command(action: Action, config: Path) -> list[str]:
    """The `ray up -y` / `ray down -y` command line for `config`.

    `up` skips Ray's local config cache (a re-rendered config must take effect)
    and turns usage stats off for the launcher itself too.
    """
    if action == "up":
        return [ray_executable(), "up", "-y", "--no-config-cache", "--disable-usage-stats", str(config)]
    return [ray_executable(), "down", "-y", str(config)]
