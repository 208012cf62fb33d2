"""Turn a serve app config into a Ray Serve application.

Registry references are resolved (alias -> version -> files) and verified
against the hashes recorded at registration *before* anything deploys, so a bad
config or a changed model is refused with nothing half-started.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cluster.config_base import UserError
from experiments import ResolvedModel, resolve
from serve.config import ModelSpec, ServeAppConfig


@dataclass
class ResolvedApp:
    """Every model of an app with the exact version and files it will serve."""

    config: ServeAppConfig
    models: dict[str, ResolvedModel | Path] = field(default_factory=dict)

    def describe(self, name: str) -> dict:
        m = self.models[name]
        if isinstance(m, ResolvedModel):
            return {"sekisho_version": m.ref, "sekisho_sha256": m.sha256}
        return {"sekisho_path": str(m)}


def _resolve_source(source: str, where: str, cache_dir: Path) -> ResolvedModel | Path:
    if source.startswith("registry:"):
        ref = source.removeprefix("registry:")
        dst = cache_dir / ref.replace("@", "_at_").replace("/", "_v")
        return resolve(ref, dst)
    path = Path(source)
    if not path.is_dir():
        raise UserError(f"{where}: {source}: no such model folder.")
    return path


def resolve_app(cfg: ServeAppConfig, cache_dir: Path) -> ResolvedApp:
    """Resolve every model and adapter of `cfg`; raises UserError naming the field."""
    app = ResolvedApp(cfg)
    for i, m in enumerate(cfg.models):
        app.models[m.name] = _resolve_source(m.source, f"models.{i}.source", cache_dir)
        for j, a in enumerate(m.adapters):
            app.models[a.name] = _resolve_source(a.source, f"models.{i}.adapters.{j}.source", cache_dir)
    return app


def _path(x: ResolvedModel | Path) -> str:
    return str(x.path if isinstance(x, ResolvedModel) else x)


def build_engine(spec: ModelSpec, app: ResolvedApp):
    """One engine deployment (bound) for a base model and its adapters."""
    from ray import serve

    from serve.engine import VLLMEngine

    adapters = {a.name: _path(app.models[a.name]) for a in spec.adapters}
    deployment = serve.deployment(VLLMEngine).options(
        name=f"engine-{spec.name}", num_replicas=spec.num_replicas,
        ray_actor_options={"num_cpus": spec.cpus_per_replica,
                           "num_gpus": spec.engine.tensor_parallel_size if _has_gpus() else 0},
        health_check_period_s=10, health_check_timeout_s=30,
        graceful_shutdown_timeout_s=30, max_ongoing_requests=1000)
    return deployment.bind(_path(app.models[spec.name]), spec.name, adapters,
                           spec.engine.model_dump())


def _has_gpus() -> bool:
    import ray

    return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0


def build_app(app: ResolvedApp):
    """The Serve application: the gateway bound to one engine deployment per base model."""
    from ray import serve

    from serve.gateway import Gateway, app as fastapi_app

    routes, info = {}, {}
    for spec in app.config.models:
        engine = build_engine(spec, app)
        for name in [spec.name] + [a.name for a in spec.adapters]:
            routes[name] = engine
            info[name] = {"root": spec.name, **app.describe(name)}
    gateway = serve.deployment(serve.ingress(fastapi_app)(Gateway)).options(
        name="gateway", num_replicas=1, ray_actor_options={"num_cpus": 0.5},
        max_ongoing_requests=1000)
    return gateway.bind(routes, info)


def deploy(app: ResolvedApp, blocking_timeout_s: float = 900) -> str:
    """Start Serve on the configured host/port and deploy; returns the base URL."""
    from ray import serve

    cfg = app.config
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(build_app(app), name=cfg.name, route_prefix="/")
    return f"http://{cfg.host}:{cfg.port}/v1"
