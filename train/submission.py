"""Fine-tuning jobs on a running cluster through the Ray Jobs API: submit, follow
the logs, list, stop.

The Jobs API runs whatever it is given, so it sits behind Ray's token auth: this
client sends the token the way Ray's own SDK does (`RAY_AUTH_MODE=token` and the
token file in `RAY_AUTH_TOKEN_PATH`, which `JobSubmissionClient` turns into an
`Authorization: Bearer` header). The job itself is `python -m sekisho train run
CONFIG` on the cluster, with the project folder (the config, the dataset config
it points to, the code) shipped as the job's `working_dir`.
"""

from __future__ import annotations

import os
import secrets
import shlex
import sys
import time
from pathlib import Path

from foundation import UserError

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
# Never shipped: environments, state, caches (`.gitignore` is honoured as well).
EXCLUDES = [".git", ".venv", ".sekisho", "**/__pycache__", "*.egg-info"]


def use_token(home: Path) -> None:
    """Make Ray's HTTP clients in this process send the cluster's token.

    A token already named by the environment (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH)
    wins; else `home/ray/auth_token`, the file the cluster's admin copies there.

    Raises:
        UserError: no token anywhere.
    """
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        token = home / "ray" / "auth_token"
        if not token.is_file():
            raise UserError(
                f"no Ray token at {token}: the cluster's Jobs API refuses requests without it. "
                f"Copy the cluster's token file there (mode 0600), or set RAY_AUTH_TOKEN_PATH."
            )
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)
    os.environ["RAY_AUTH_MODE"] = "token"
    from ray._raylet import AuthenticationTokenLoader, Config

    # Ray caches the auth mode and token at first use; read them again.
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def connect(address: str | None, home: Path):
    """A `JobSubmissionClient` for the dashboard at `address` (http://HOST:PORT).

    Raises:
        UserError: no address, the cluster cannot be reached, or it refused the token.
    """
    if not address:
        raise UserError(
            "--address (or RAY_API_SERVER_ADDRESS): the Jobs API of the Ray cluster, "
            "e.g. http://10.20.0.10:8265 (the head's dashboard address)."
        )
    use_token(home)
    from ray.job_submission import JobSubmissionClient

    with _jobs_api(address):
        return JobSubmissionClient(address)


class _jobs_api:
    """Turn the Jobs API's connection and auth failures into one-paragraph errors."""

    def __init__(self, address: str):
        self.address = address

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        from ray.exceptions import AuthenticationError

        if isinstance(exc, AuthenticationError):
            raise UserError(
                f"the Ray cluster at {self.address} refused this client's token "
                f"({os.environ.get('RAY_AUTH_TOKEN_PATH', 'RAY_AUTH_TOKEN')}): use the "
                f"cluster's own token file."
            ) from None
        if isinstance(exc, ConnectionError):
            raise UserError(
                f"cannot reach the Ray Jobs API at {self.address}: is the cluster up, and "
                f"is that its dashboard address (port 8265 by default)?"
            ) from None
        return False


def submit(client, config: Path, working_dir: Path, cluster_home: str | None = None) -> str:
    """Submit `sekisho train run CONFIG` with `working_dir` shipped; returns the job id.

    Args:
        config: the job config, inside `working_dir`.
        cluster_home: $SEKISHO_HOME for the job (else the nodes' own).

    Raises:
        UserError: the config is not inside `working_dir`.
    """
    from train.config import TrainJobConfig

    cfg = TrainJobConfig.from_yaml(config)  # refuse a bad config before anything is sent
    config, working_dir = config.resolve(), working_dir.resolve()
    if not config.is_relative_to(working_dir):
        raise UserError(
            f"{config} is not inside the working directory {working_dir}, which is what "
            f"is shipped to the cluster; run from the project folder or pass --working-dir."
        )
    rel = config.relative_to(working_dir).as_posix()
    # The working directory goes first on every worker's path; the hook keeps a
    # `data/` or `train/` package of the user's from shadowing Sekisho's.
    runtime_env: dict = {
        "working_dir": str(working_dir),
        "excludes": EXCLUDES,
        "worker_process_setup_hook": "sekisho.imports.pin",
    }
    if cluster_home:
        runtime_env["env_vars"] = {"SEKISHO_HOME": cluster_home}
    job_id = f"train-{cfg.name}-{secrets.token_hex(3)}"
    with _jobs_api(client.get_address()):
        return client.submit_job(
            entrypoint=f"python -m sekisho train run {shlex.quote(rel)}",
            submission_id=job_id,
            runtime_env=runtime_env,
            metadata={"sekisho.job": cfg.name, "sekisho.config": rel},
        )


def follow(client, job_id: str, out=sys.stdout) -> str:
    """Stream the job's logs to `out` until it ends; returns its final status."""
    import asyncio

    async def tail():
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    with _jobs_api(client.get_address()):
        asyncio.run(tail())
        return wait(client, job_id, timeout=60)


def wait(client, job_id: str, timeout: float) -> str:
    """The job's status once terminal, or as it is when `timeout` runs out."""
    deadline = time.monotonic() + timeout
    while True:
        status = str(client.get_job_status(job_id).value)
        if status in TERMINAL or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def job_rows(client) -> list[dict[str, str]]:
    """Every submitted job, oldest first: id, status, start, end, config."""
    with _jobs_api(client.get_address()):
        jobs = [j for j in client.list_jobs() if j.submission_id]
    jobs.sort(key=lambda j: j.start_time or 0)
    return [
        {
            "id": j.submission_id,
            "status": str(j.status.value),
            "start": _when(j.start_time),
            "end": _when(j.end_time),
            "config": (j.metadata or {}).get("sekisho.config", j.entrypoint),
        }
        for j in jobs
    ]


def job_info(client, job_id: str):
    """One job's details.

    Raises:
        UserError: no such job.
    """
    with _jobs_api(client.get_address()):
        try:
            return client.get_job_info(job_id)
        except RuntimeError:
            raise UserError(
                f"no job {job_id!r} on this cluster; `sekisho train status` lists them."
            ) from None


def stop(client, job_id: str, timeout: float = 60) -> str:
    """Ask the job to stop and wait for it; returns its final status.

    Raises:
        UserError: no such job.
    """
    job_info(client, job_id)
    with _jobs_api(client.get_address()):
        client.stop_job(job_id)
        return wait(client, job_id, timeout)


def _when(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"
