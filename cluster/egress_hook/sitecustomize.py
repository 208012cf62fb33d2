"""Loaded by every Python process whose PYTHONPATH starts with this folder (see
cluster/egress.py): records non-loopback connection and DNS attempts."""

import ipaddress
import json
import os
import socket
import sys
import threading
import traceback

SEKISHO_EGRESS_HOOK = True
_installed = False
_lock = threading.Lock()


def _local(host):
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host).strip("[]")
    if host in ("", "localhost", "ip6-localhost", "0.0.0.0", "::"):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _culprit():
    for frame in reversed(traceback.extract_stack()[:-2]):
        if "sitecustomize" not in frame.filename and "/socket.py" not in frame.filename:
            return f"{frame.filename}:{frame.lineno} ({frame.name})"
    return "?"


def install(log):
    global _installed
    if _installed:
        return
    _installed = True

    def hook(event, args):
        if event not in ("socket.connect", "socket.sendto", "socket.getaddrinfo"):
            return
        try:
            if event == "socket.getaddrinfo":
                host = args[0]
            else:
                sock, addr = args[0], args[1]
                if getattr(sock, "family", None) == socket.AF_UNIX or not isinstance(addr, tuple):
                    return
                host = addr[0]
            if _local(host):
                return
            entry = {"pid": os.getpid(), "argv0": (sys.argv or ["?"])[0], "event": event,
                     "host": host if isinstance(host, str) else repr(host),
                     "port": args[1] if event == "socket.getaddrinfo" else args[1][1],
                     "where": _culprit()}
            with _lock, open(log, "a") as f:
                f.write(json.dumps(entry, default=str) + "\n")
        except Exception:  # never break the program being watched
            pass

    sys.addaudithook(hook)


if os.environ.get("SEKISHO_EGRESS_LOG"):
    install(os.environ["SEKISHO_EGRESS_LOG"])
