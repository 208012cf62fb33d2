"""Record every outbound connection attempt, in every Python process.

`recorder_env(log)` returns the environment that makes each Python process
started with it (Ray workers, vLLM engine processes, MLflow) load
`cluster/egress_hook/sitecustomize.py`, which installs an audit hook
(`sys.addaudithook`) on socket.connect, socket.sendto and
socket.getaddrinfo. Attempts to anything but loopback or a Unix socket are
appended to `log` as JSON lines, with the process, the address and the
innermost library frame that asked. `report(log)` reads them back.

Limits: code that opens sockets outside Python (C++ in Ray's core, for
example) is not seen; run inside a loopback-only namespace as well.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from foundation.net import is_loopback

HOOK_DIR = Path(__file__).resolve().parent / "egress_hook"
LOG_ENV = "SEKISHO_EGRESS_LOG"


def is_local(host: object) -> bool:
    """True for loopback addresses, 'localhost' and unspecified binds."""
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host).strip("[]")
    if host in ("", "localhost", "ip6-localhost", "0.0.0.0", "::"):
        return True
    return is_loopback(host)


def recorder_env(log: Path) -> dict[str, str]:
    """Environment for processes that must record their egress attempts to `log`."""
    path = os.environ.get("PYTHONPATH", "")
    return {LOG_ENV: str(log), "PYTHONPATH": f"{HOOK_DIR}{os.pathsep}{path}" if path else str(HOOK_DIR)}


def install(log: Path | str) -> None:
    """Install the hook in this process (the environment covers its children)."""
    os.environ.update(recorder_env(Path(log)))
    sys.path.insert(0, str(HOOK_DIR))
    import sitecustomize as hook  # noqa: F401  (the module in HOOK_DIR installs itself)

    if getattr(hook, "SEKISHO_EGRESS_HOOK", False):
        hook.install(str(log))


def report(log: Path) -> list[dict]:
    """The recorded attempts (empty when nothing tried to leave)."""
    if not Path(log).exists():
        return []
    return [json.loads(line) for line in Path(log).read_text().splitlines() if line.strip()]
