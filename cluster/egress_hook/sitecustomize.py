"""Loaded by every Python process whose PYTHONPATH starts with this folder
(every process of a Ray node that `cluster.local` starts; see cluster/egress.py).

1. Ray's dashboard process: its usage-stats module asks the cloud metadata
   servers (169.254.169.254, metadata.google.internal) which cloud it runs on
   before it checks whether usage stats are enabled, and Ray offers no switch for
   it. Here that lookup answers "unknown" without a request.
2. With SEKISHO_EGRESS_LOG set: records non-loopback connection and DNS attempts.
"""

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
            entry = {
                "pid": os.getpid(),
                "argv0": (sys.argv or ["?"])[0],
                "event": event,
                "host": host if isinstance(host, str) else repr(host),
                "port": args[1] if event == "socket.getaddrinfo" else args[1][1],
                "where": _culprit(),
            }
            with _lock, open(log, "a") as f:
                f.write(json.dumps(entry, default=str) + "\n")
        except Exception:  # never break the program being watched
            pass

    sys.addaudithook(hook)


def _cure_ray_dashboard():
    argv0 = (sys.argv or [""])[0].replace(os.sep, "/")
    if not argv0.endswith("ray/dashboard/dashboard.py"):
        return
    try:
        import ray._common.usage.usage_lib as usage_lib
    except Exception:
        return
    usage_lib.get_cloud_from_metadata_requests = lambda: "unknown"


if os.environ.get("SEKISHO_EGRESS_LOG"):
    install(os.environ["SEKISHO_EGRESS_LOG"])
_cure_ray_dashboard()
