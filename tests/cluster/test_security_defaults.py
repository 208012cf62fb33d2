"""Zero egress switches and Ray token handling."""

import os
import stat

from cluster.local import ensure_token, token_auth_env
from foundation import offline


def test_offline_switches_have_the_exact_values_components_accept():
    env = offline.apply()
    assert env["VLLM_NO_USAGE_STATS"] == "1" and env["DO_NOT_TRACK"] == "1"  # vLLM: exactly "1"
    assert env["MLFLOW_DISABLE_TELEMETRY"] == "true"  # MLflow: exactly "true"
    assert env["RAY_USAGE_STATS_ENABLED"] == "0"
    assert env["HF_HUB_OFFLINE"] == "1" and env["VLLM_HOST_IP"]
    assert offline.missing() == {}


def test_offline_overrides_a_user_environment_that_opts_in(monkeypatch):
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "1")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "false")
    assert set(offline.missing()) == {"RAY_USAGE_STATS_ENABLED", "MLFLOW_DISABLE_TELEMETRY"}
    offline.apply()
    assert offline.missing() == {}


def test_mlflow_telemetry_client_is_off():
    from mlflow.telemetry import get_telemetry_client

    assert get_telemetry_client() is None


def test_ray_token_is_private_and_stable(tmp_path):
    token = ensure_token(tmp_path / "ray" / "auth_token")
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    first = token.read_text()
    assert len(first) == 64 and int(first, 16)
    os.chmod(token, 0o644)  # someone loosened it: it is tightened again, not replaced
    assert ensure_token(token).read_text() == first
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    env = token_auth_env(tmp_path)
    assert env == {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
