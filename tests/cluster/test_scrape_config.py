"""`sekisho cluster up` writes a Prometheus scrape config: the replicas' file_sd
folder in the home, the admin key file for scrapes from other hosts, Ray's own
service-discovery file, no remote write; Prometheus' own `promtool` accepts it.
(tests/serve/test_metrics_scrape.py runs a real Prometheus on it.)"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cluster.scrape_config import RAY_SD_FILE, scrape_key_file, targets_dir
from sekisho.cli import main

REPO = Path(__file__).resolve().parents[2]


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        # .ci/run installs Debian's prometheus; elsewhere the check is skipped, under CI it fails.
        if os.environ.get("CI") == "true":
            pytest.fail("promtool (Debian package prometheus) is not installed; .ci/run installs it")
        pytest.skip("promtool (Debian package prometheus) is not installed")
    return found


def test_cluster_up_writes_a_scrape_config_promtool_accepts(tmp_path, capsys):
    doc = yaml.safe_load((REPO / "configs" / "cluster" / "reference.yaml").read_text())
    doc["ray"]["auth_token_file"] = str(tmp_path / "launcher" / "auth_token")
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump(doc))
    home = tmp_path / "home"

    assert main(["--home", str(home), "cluster", "up", str(inventory), "--dry-run"]) == 0
    printed = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    path = Path(printed["prometheus scrape config"])
    assert path == home / "cluster" / "sekisho-ref.prometheus.yml"

    config = yaml.safe_load(path.read_text())
    assert "remote_write" not in config and "remote_read" not in config
    assert config["global"]["external_labels"] == {"cluster": "sekisho-ref"}
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["sekisho"]["file_sd_configs"][0]["files"] == [str(targets_dir(home) / "*.json")]
    assert jobs["sekisho"]["authorization"]["credentials_file"] == str(scrape_key_file(home))
    assert jobs["ray"]["file_sd_configs"][0]["files"] == [RAY_SD_FILE]

    # promtool also checks the credentials file exists.
    scrape_key_file(home).parent.mkdir(parents=True, exist_ok=True)
    scrape_key_file(home).write_text("sk-sekisho-example\n")
    checked = subprocess.run([promtool(), "check", "config", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
