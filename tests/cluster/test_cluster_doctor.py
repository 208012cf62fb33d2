"""`sekisho cluster doctor` against a real single-node Ray cluster (token auth
on, two declared GPUs, no real ones): every check passes or says why it is
skipped; --egress proves zero egress with a planted control; a broken setup
fails with a remedy."""

import re

import pytest

pytestmark = pytest.mark.e2e


def rows(out: str) -> dict[str, tuple[str, str]]:
    """check -> (result, details of its first line), from the rich table."""
    found = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if len(cells) == 3 and cells[1] in ("pass", "FAIL", "skip"):
            found[cells[0]] = (cells[1], cells[2])
    return found


def test_doctor_on_a_cpu_cluster_passes_or_skips_with_reasons(ray_head, sekisho):
    r = sekisho(
        ray_head,
        "cluster",
        "doctor",
        str(ray_head.inventory_file),
        "--egress",
        "--min-free-gib",
        "1",
        timeout=300,
    )
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    got = rows(r.stdout)
    assert got["nodes"] == ("pass", "1/1 inventory nodes alive")
    assert got["driver and CUDA versions"][0] == "skip"
    assert "no NVIDIA driver" in got["driver and CUDA versions"][1]
    assert got["GPUs vs inventory"][0] == "skip"
    assert got["InfiniBand ports"] == ("skip", "no /sys/class/infiniband on any node")
    result, detail = got["all-reduce bus bandwidth"]
    assert result == "pass" and re.match(r"[\d.]+ GB/s \(gloo, 2 ranks on 1 node", detail)
    assert got["shared storage"][0] == "pass"
    assert got["clock skew"][0] == "pass" and got["free disk"][0] == "pass"
    assert got["Ray token auth"][0] == "pass" and got["Ray token auth"][1].startswith("GCS and Jobs")
    assert got["zero egress"][0] == "pass" and "0 outbound attempts on 1 nodes" in got["zero egress"][1]
    assert "0 failed" in r.stdout


def test_doctor_fails_with_a_remedy_when_storage_and_disk_fall_short(ray_head, sekisho, tmp_path):
    text = ray_head.inventory_file.read_text().replace(
        str(ray_head.inventory_file.parent / "shared"), "/proc/sekisho-nowhere"
    )
    broken = tmp_path / "inventory.yaml"
    broken.write_text(text)
    r = sekisho(ray_head, "cluster", "doctor", str(broken), "--min-free-gib", "1000000", timeout=300)
    print(r.stdout)
    assert r.returncode == 1
    got = rows(r.stdout)
    assert got["shared storage"][0] == "FAIL" and got["free disk"][0] == "FAIL"
    assert "remedy: mount the shared file server at /proc/sekisho-nowhere" in " ".join(r.stdout.split())
