"""The egress recorder sees attempts in child processes (positive control)
and ignores loopback."""

import subprocess
import sys

from cluster.egress import is_local, recorder_env, report

PROBE = """
import socket
for addr in [("127.0.0.1", 9), ("10.255.255.1", 9)]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(addr)
    except OSError:
        pass
try:
    socket.getaddrinfo("metadata.google.internal", 80)
except OSError:
    pass
"""


def test_child_process_attempts_are_recorded(tmp_path):
    log = tmp_path / "egress.jsonl"
    env = {**recorder_env(log), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", PROBE], env=env, check=True, timeout=60)
    hosts = {(e["event"], e["host"]) for e in report(log)}
    assert ("socket.connect", "10.255.255.1") in hosts
    assert ("socket.getaddrinfo", "metadata.google.internal") in hosts
    assert not any(is_local(h) for _, h in hosts)
    assert all("<string>" in e["where"] for e in report(log))


def test_loopback_names():
    assert is_local("127.0.0.1") and is_local("::1") and is_local("localhost") and is_local("[::1]")
    assert not is_local("8.8.8.8") and not is_local("169.254.169.254") and not is_local("example.org")
