"""Starting the embedded Ray: token auth on with a private token file, and no
attempt to reach beyond loopback, neither from Python (recorded in every
process) nor from Ray's C++ core (which logs its 8.8.8.8 probe)."""

import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest

from cluster.egress import recorder_env, report

SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    from cluster.local import start_local, stop
    start_local(Path(sys.argv[1]), num_cpus=2)
    import ray

    @ray.remote
    def where():
        return os.environ.get("RAY_AUTH_MODE"), ray.util.get_node_ip_address()

    print("RESULT", json.dumps(ray.get(where.remote())), flush=True)
    time.sleep(3)  # the dashboard's usage-stats module runs at start
    stop()
""")


@pytest.mark.e2e
def test_embedded_ray_uses_a_private_token_and_sends_nothing(tmp_path):
    log = tmp_path / "egress.jsonl"
    env = {**os.environ, **recorder_env(log)}
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "home")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    mode, ip = json.loads(r.stdout.split("RESULT", 1)[1])
    assert mode == "token" and ip == "127.0.0.1"
    token = tmp_path / "home" / "ray" / "auth_token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert "external connectivity" not in r.stderr, "Ray's core probed 8.8.8.8 for its address"
    assert report(log) == []
