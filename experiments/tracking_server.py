"""Team mode: one `mlflow server` for everyone, with its runs and registry in
PostgreSQL, artifacts on the shared file server served through the tracking
server (clients get `mlflow-artifacts:/` URIs, never storage paths), MLflow's
basic-auth app on, and telemetry off.

There is no default admin password: one is taken from
`SEKISHO_MLFLOW_ADMIN_PASSWORD`, or from the state folder, or generated, stored
there with mode 0600 and shown once. Clients authenticate with MLflow's own
`MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD` and point Sekisho at the
server with `SEKISHO_MLFLOW_URI=http://HOST:PORT` (or MLflow's own `MLFLOW_TRACKING_URI`).
Grants are per experiment (`sekisho tracking grant USER --experiment NAME`, the
experiment a train config names) or per registered model."""

from __future__ import annotations

import ipaddress
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from foundation import StrictConfig, UserError, offline

ADMIN_PASSWORD_ENV = "SEKISHO_MLFLOW_ADMIN_PASSWORD"
PASSWORD_FILE = "admin-password"
SECRET_KEY_FILE = "flask-secret-key"
AUTH_INI = "basic_auth.ini"


class TrackingServerConfig(StrictConfig):
    """The team's MLflow tracking server (`sekisho tracking server CONFIG`)."""

    backend_store_uri: str = Field(
        description=(
            "SQLAlchemy URL of the PostgreSQL database for runs and the registry, e.g. "
            "postgresql+psycopg://mlflow@db.internal/mlflow. Keep its password out of this file: "
            "libpq reads PGPASSWORD or ~/.pgpass."
        )
    )
    artifacts_destination: str = Field(
        description=(
            "Folder on the shared file server where artifacts are stored; the server reads and "
            "writes it for the clients. Relative paths resolve against this file's folder."
        )
    )
    host: str = Field(
        "127.0.0.1",
        description=(
            "Internal address to bind (an IP of this node on the cluster network); never all interfaces."
        ),
    )
    port: int = Field(5000, ge=1, le=65535, description="TCP port to listen on.")
    workers: int = Field(4, ge=1, le=64, description="Server worker processes.")
    admin_username: str = Field(
        "admin",
        min_length=1,
        description=(
            "The admin user created on first start. Its password comes from "
            f"${ADMIN_PASSWORD_ENV}, else the state folder, else is generated there (0600)."
        ),
    )
    auth_database_uri: str | None = Field(
        None,
        description=(
            "SQLAlchemy URL for users and permissions; default: backend_store_uri (MLflow keeps "
            "them in their own tables)."
        ),
    )
    default_permission: Literal["READ", "EDIT", "MANAGE", "NO_PERMISSIONS"] = Field(
        "READ", description="What a user may do with experiments and models nobody granted them."
    )
    auth_cache_ttl_s: int = Field(
        0,
        ge=0,
        le=3600,
        description=(
            "Seconds a worker caches a checked password (0: check every request). A changed or "
            "revoked password can keep working this long on other workers."
        ),
    )
    state_dir: str | None = Field(
        None,
        description=(
            "Folder (0700) for the generated admin password, the session secret and the auth config; "
            "default <Sekisho home>/tracking-server."
        ),
    )

    @field_validator("backend_store_uri")
    @classmethod
    def _postgres(cls, v: str) -> str:
        if not v.split("://", 1)[0].split("+", 1)[0] == "postgresql":
            raise ValueError(
                "team mode keeps runs in PostgreSQL: expected postgresql://... or "
                "postgresql+psycopg://...; the embedded SQLite store needs no server"
            )
        return v

    @field_validator("host")
    @classmethod
    def _internal_address(cls, v: str) -> str:
        try:
            ip = ipaddress.ip_address(v)
        except ValueError:
            raise ValueError(f"expected an IP address of this node, got {v!r}") from None
        if ip.is_unspecified:
            raise ValueError(f"{v} binds every interface; give the node's internal address")
        return v

    @field_validator("artifacts_destination", "state_dir")
    @classmethod
    def _relative_to_config(cls, v: str | None, info) -> str | None:
        base = (info.context or {}).get("config_dir")
        return str(Path(base, v)) if v and base and not Path(v).is_absolute() else v

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


@dataclass(frozen=True)
class AdminCredentials:
    """The admin login; `generated` is true when this start created the password."""

    username: str
    password: str
    password_file: Path | None
    generated: bool


def state_folder(cfg: TrackingServerConfig) -> Path:
    """The state folder, created with mode 0700."""
    if cfg.state_dir:
        path = Path(cfg.state_dir)
    else:
        from foundation import sekisho_home

        path = sekisho_home() / "tracking-server"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


def _secret_file(path: Path) -> tuple[str, bool]:
    """The secret stored at `path`, or a new one written there with mode 0600."""
    if path.exists():
        return path.read_text(encoding="utf-8").strip(), False
    value = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(value + "\n")
    return value, True


def admin_credentials(cfg: TrackingServerConfig) -> AdminCredentials:
    """The admin login the server bootstraps with (see the module docstring)."""
    if os.environ.get(ADMIN_PASSWORD_ENV):
        return AdminCredentials(cfg.admin_username, os.environ[ADMIN_PASSWORD_ENV], None, False)
    path = state_folder(cfg) / PASSWORD_FILE
    password, generated = _secret_file(path)
    return AdminCredentials(cfg.admin_username, password, path, generated)


def write_auth_config(cfg: TrackingServerConfig) -> Path:
    """Write the basic-auth app's config (0600: it may hold a database URL with a password)."""
    path = state_folder(cfg) / AUTH_INI
    text = (
        "[mlflow]\n"
        f"default_permission = {cfg.default_permission}\n"
        f"database_uri = {(cfg.auth_database_uri or cfg.backend_store_uri).replace('%', '%%')}\n"
        f"admin_username = {cfg.admin_username}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "grant_default_workspace_access = false\n"
        f"auth_cache_ttl_seconds = {cfg.auth_cache_ttl_s}\n"
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    path.chmod(0o600)
    return path


def server_command(cfg: TrackingServerConfig, admin: AdminCredentials) -> tuple[list[str], dict[str, str]]:
    """The `mlflow server` command line and its environment (telemetry off, auth config,
    admin password and session secret passed by environment, never on the command line)."""
    Path(cfg.artifacts_destination).mkdir(parents=True, exist_ok=True)
    secret_key, _ = _secret_file(state_folder(cfg) / SECRET_KEY_FILE)
    env = {
        **os.environ,
        **offline.apply(),
        "MLFLOW_AUTH_CONFIG_PATH": str(write_auth_config(cfg)),
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin.password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secret_key,
    }
    env.pop("MLFLOW_AUTH_ADMIN_USERNAME", None)  # the config's admin_username is the one
    argv = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        cfg.backend_store_uri,
        "--serve-artifacts",
        "--artifacts-destination",
        str(Path(cfg.artifacts_destination).resolve()),
        "--default-artifact-root",
        "mlflow-artifacts:/",
        "--app-name",
        "basic-auth",
        "--host",
        cfg.host,
        "--port",
        str(cfg.port),
        "--workers",
        str(cfg.workers),
    ]
    return argv, env


class TrackingServer:
    """A running team tracking server; `stop()` ends it and its workers."""

    def __init__(
        self,
        cfg: TrackingServerConfig,
        proc: subprocess.Popen,
        admin: AdminCredentials,
        log_path: Path | None,
    ):
        self.cfg, self.proc, self.admin, self.log_path = cfg, proc, admin, log_path

    @property
    def url(self) -> str:
        return self.cfg.url

    def client_env(self, username: str | None = None, password: str | None = None) -> dict[str, str]:
        """What a client sets to use this server (the admin login unless given another)."""
        return {
            "SEKISHO_MLFLOW_URI": self.url,
            "MLFLOW_TRACKING_USERNAME": username or self.admin.username,
            "MLFLOW_TRACKING_PASSWORD": password or self.admin.password,
        }

    def wait(self) -> int:
        return self.proc.wait()

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def start_server(
    cfg: TrackingServerConfig, log_path: str | Path | None = None, ready_timeout_s: float = 120.0
) -> TrackingServer:
    """Start the server and return once it answers `/health`.

    Args:
        log_path: where the server's output goes; the terminal when None.

    Raises:
        UserError: the server exited or did not answer in time (the message ends with its log).
    """
    admin = admin_credentials(cfg)
    argv, env = server_command(cfg, admin)
    out = open(log_path, "ab") if log_path else None  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen(
        argv, env=env, stdout=out, stderr=subprocess.STDOUT if out else None, start_new_session=True
    )
    server = TrackingServer(cfg, proc, admin, Path(log_path) if log_path else None)
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UserError(
                f"the tracking server exited with status {proc.returncode} before it "
                f"answered at {cfg.url}/health{_log_tail(log_path)}"
            )
        try:
            with urllib.request.urlopen(f"{cfg.url}/health", timeout=2) as r:
                if r.status == 200:
                    return server
        except OSError:
            time.sleep(0.5)
    server.stop()
    raise UserError(
        f"the tracking server did not answer at {cfg.url}/health within "
        f"{ready_timeout_s:.0f} s{_log_tail(log_path)}"
    )


def _log_tail(log_path) -> str:
    if not log_path or not Path(log_path).exists():
        return "."
    lines = Path(log_path).read_text(encoding="utf-8", errors="replace").strip().splitlines()
    return f"; last lines of {log_path}: " + " | ".join(lines[-5:])


PERMISSIONS = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")


def _auth_client():
    """MLflow's basic-auth client for the team server in SEKISHO_MLFLOW_URI (or
    MLFLOW_TRACKING_URI), logged in with MLFLOW_TRACKING_USERNAME /
    MLFLOW_TRACKING_PASSWORD (the admin)."""
    from mlflow.server import get_app_client

    from experiments.tracking import tracking_uri

    url = tracking_uri()
    if not url.startswith(("http://", "https://")):
        raise UserError(
            f"users and grants live on the team tracking server, but the tracking URI in force "
            f"is {url!r}: export SEKISHO_MLFLOW_URI=http://HOST:PORT and the admin's "
            "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD."
        )
    return get_app_client("basic-auth", tracking_uri=url), url


def _refused(exc, what: str, url: str) -> UserError:
    status = exc.get_http_status_code()
    who = os.environ.get("MLFLOW_TRACKING_USERNAME", "(no user)")
    if status in (401, 403):
        return UserError(
            f"the tracking server at {url} refused to {what} for {who!r} (HTTP {status}): "
            "only its admin can; set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD "
            "to the admin login (see `sekisho tracking server`)."
        )
    return UserError(f"the tracking server at {url} could not {what}: {exc.message}")


def add_user(username: str, password: str | None = None) -> str:
    """Create a (non-admin) user on the team server; returns its password (generated
    when not given)."""
    import mlflow

    client, url = _auth_client()
    password = password or secrets.token_urlsafe(18)
    try:
        client.create_user(username, password)
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code == "RESOURCE_ALREADY_EXISTS":
            raise UserError(f"user {username!r} already exists on the tracking server at {url}.") from None
        raise _refused(exc, f"create user {username!r}", url) from None
    return password


def grant(username: str, permission: str, experiment: str | None = None, model: str | None = None) -> None:
    """Give `username` `permission` on an experiment (by name) or a registered model."""
    import mlflow
    from mlflow import MlflowClient

    if permission not in PERMISSIONS:
        raise UserError(f"permission {permission!r}: expected one of {', '.join(PERMISSIONS)}.")
    if (experiment is None) == (model is None):
        raise UserError("name exactly one of --experiment NAME or --model NAME to grant on.")
    client, url = _auth_client()
    if experiment is not None:
        try:
            found = MlflowClient(url).get_experiment_by_name(experiment)
        except mlflow.exceptions.MlflowException as exc:
            raise _refused(
                exc, f"grant {permission} on experiment {experiment!r} to {username!r}", url
            ) from None
        if found is None:
            raise UserError(f"no experiment named {experiment!r} on the tracking server at {url}.")
        resource = ("experiment", found.experiment_id)
    else:
        resource = ("registered_model", model)
    try:
        client.grant_user_permission(username, *resource, permission)
    except mlflow.exceptions.MlflowException as exc:
        raise _refused(
            exc, f"grant {permission} on {resource[0]} {experiment or model!r} to {username!r}", url
        ) from None
