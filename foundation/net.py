"""Ports and addresses on this host."""

from __future__ import annotations

import ipaddress
import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def is_loopback(address: object) -> bool:
    """True for a loopback IP address (v4 or v6, scope id ignored); False for
    anything else, names and malformed values included."""
    if isinstance(address, bytes):
        address = address.decode(errors="replace")
    try:
        return (
            address is not None and ipaddress.ip_address(str(address).strip("[]").split("%")[0]).is_loopback
        )
    except ValueError:
        return False
