"""Model versions: register a folder (base model or adapter) with its content hash
and lineage, move aliases, and resolve `name@alias` to verified local files."""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

from experiments import tracking
from foundation import UserError
from foundation.hashing import update_from_file

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".ckpt", ".pickle"}


class ModelIntegrityError(UserError):
    """A model's files do not match what was recorded when it was registered."""


class ModelNotFoundError(UserError):
    """A registry reference names no model, version or alias."""


@dataclass(frozen=True)
class ResolvedModel:
    """A registered version, downloaded and verified."""

    name: str
    version: str
    path: Path
    sha256: str
    tags: dict[str, str]

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"


def dir_sha256(path: str | Path) -> str:
    """Content hash of a folder: relative names and bytes of every file, sorted."""
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        update_from_file(h, f)
        h.update(b"\0")
    return h.hexdigest()


def register_folder(
    name: str,
    folder: str | Path,
    kind: str,
    tags: dict[str, str] | None = None,
    run_id: str | None = None,
    artifact_path: str = "model",
) -> str:
    """Log `folder` as artifacts of a run and register it as a new version of `name`.

    Args:
        name: registered model name.
        folder: model files (safetensors only; pickle formats are refused).
        kind: "base", "adapter" or "merged"; recorded as a tag.
        tags: lineage tags for the version (base model version, dataset hash, ...).
        run_id: the run to attach the files to; a new run is made when None.

    Returns:
        The new version number.
    """
    import mlflow
    from mlflow import MlflowClient

    folder = Path(folder)
    unsafe = [p.name for p in folder.rglob("*") if p.suffix in PICKLE_SUFFIXES or p.suffix == ".py"]
    if unsafe:
        raise ModelIntegrityError(
            f"{folder}: refusing to register {unsafe}: pickle files and code "
            "can execute when loaded; only safetensors are accepted."
        )
    tracking.use_store()
    client = MlflowClient()
    sha = dir_sha256(folder)
    if run_id is None:
        with mlflow.start_run(run_name=f"register-{name}") as run:
            run_id = run.info.run_id
    client.log_artifacts(run_id, str(folder), artifact_path)
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(name, tags={"kind": kind})
    all_tags = {"kind": kind, "content_sha256": sha, **(tags or {})}
    mv = client.create_model_version(
        name, source=f"runs:/{run_id}/{artifact_path}", run_id=run_id, tags=all_tags
    )
    return str(mv.version)


def set_alias(name: str, alias: str, version: str) -> None:
    """Point `name@alias` at `version` (ungated: for first registrations and tests),
    recorded in the alias's history like a promotion.

    Raises:
        ModelNotFoundError: no such model or version.
    """
    from experiments import alias_log

    get_version(f"{name}/{version}")
    alias_log.move(name, alias, {"action": "set", "version": str(version)})


def get_version(ref: str):
    """The MLflow ModelVersion for `name@alias` or `name/version`.

    Raises:
        ModelNotFoundError: no such model, version or alias.
    """
    import mlflow
    from mlflow import MlflowClient

    tracking.use_store()
    client = MlflowClient()
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return client.get_model_version_by_alias(name, alias)
        name, _, version = ref.partition("/")
        if not version:
            raise ModelNotFoundError(f"{ref!r}: expected NAME@ALIAS or NAME/VERSION.")
        return client.get_model_version(name, version)
    except mlflow.exceptions.MlflowException as exc:
        raise ModelNotFoundError(
            f"model {ref!r} not found in the registry at {tracking.tracking_uri()}: {exc.message}"
        ) from None


def resolve(ref: str, dst: str | Path | None = None) -> ResolvedModel:
    """Download the files of `name@alias` (or `name/version`) and verify their hash.

    Raises:
        ModelNotFoundError: the reference names nothing.
        ModelIntegrityError: the files differ from what was registered.
    """
    import mlflow

    mv = get_version(ref)
    dst = Path(dst or tempfile.mkdtemp(prefix="sekisho-model-"))
    path = Path(mlflow.artifacts.download_artifacts(mv.source, dst_path=str(dst)))
    sha = dir_sha256(path)
    expected = mv.tags.get("content_sha256")
    if expected != sha:
        raise ModelIntegrityError(
            f"{mv.name}/{mv.version} ({ref}): files at {path} have SHA-256 {sha[:16]}..., but the "
            f"registry recorded {str(expected)[:16]}...; refusing to serve a changed model."
        )
    return ResolvedModel(mv.name, str(mv.version), path, sha, dict(mv.tags))
