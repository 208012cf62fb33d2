"""Turn a serve app config into a Ray Serve application.

Registry references are resolved (alias -> version -> files) and verified
against the hashes recorded at registration *before* anything deploys, so a bad
config or a changed model is refused with nothing half-started.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from airlock import load
from experiments import ResolvedModel, dir_sha256
from foundation import UserError
from serve import ray_state
from serve.config import ModelSpec, ServeAppConfig


@dataclass
class ResolvedApp:
    """Every model of an app with the exact version and files it will serve."""

    config: ServeAppConfig
    models: dict[str, ResolvedModel | Path] = field(default_factory=dict)
    cache_dir: Path | None = None
    # Model name -> per pipeline stage, the nodes it may run on (a placement plan's
    # choice, set by sekisho.gpu_plan.plan_serve_app); absent: anywhere.
    stage_nodes: dict[str, list[list[str]]] = field(default_factory=dict)

    def followed_bases(self) -> dict[str, str]:
        """registry:NAME@ALIAS base models -> the version resolved now."""
        return {
            m.source.removeprefix("registry:"): str(self.models[m.name].version)
            for m in self.config.models
            if m.source.startswith("registry:")
            and "@" in m.source
            and isinstance(self.models[m.name], ResolvedModel)
        }

    def describe(self, name: str) -> dict:
        m = self.models[name]
        if isinstance(m, ResolvedModel):
            return {"sekisho_version": m.ref, "sekisho_sha256": m.sha256}
        return {"sekisho_path": str(m)}


def _resolve_source(source: str, where: str, cache_dir: Path) -> ResolvedModel | Path:
    if source.startswith("registry:"):
        from experiments import get_version

        # The version's read-only store copy, checked against its record; one
        # without a record (registered straight through MLflow) is refused.
        mv = get_version(source.removeprefix("registry:"))
        return load(f"{mv.name}/{mv.version}")
    path = Path(source)
    if not path.is_dir():
        raise UserError(f"{where}: {source}: no such model folder.")
    return path


def resolve_app(cfg: ServeAppConfig, cache_dir: Path) -> ResolvedApp:
    """Resolve every model and adapter of `cfg`; raises UserError naming the field."""
    app = ResolvedApp(cfg, cache_dir=cache_dir)
    for i, m in enumerate(cfg.models):
        app.models[m.name] = _resolve_source(m.source, f"models.{i}.source", cache_dir)
        for j, a in enumerate(m.adapters):
            app.models[a.name] = _resolve_source(a.source, f"models.{i}.adapters.{j}.source", cache_dir)
    return app


def _path(x: ResolvedModel | Path) -> str:
    return str(x.path if isinstance(x, ResolvedModel) else x)


def _adapter_args(spec: ModelSpec, app: ResolvedApp) -> list[dict]:
    out = []
    for a in spec.adapters:
        m = app.models[a.name]
        ref = a.source.removeprefix("registry:") if a.source.startswith("registry:") else None
        out.append(
            {
                "served": a.name,
                "ref": ref,
                "path": _path(m),
                "version": m.version if isinstance(m, ResolvedModel) else None,
                "sha256": m.sha256 if isinstance(m, ResolvedModel) else dir_sha256(m),
            }
        )
    return out


def build_engine(spec: ModelSpec, app: ResolvedApp, engine_key: str, gateway: dict | None = None):
    """One engine deployment (bound) for a base model and its adapters."""
    from ray import serve

    from experiments import tracking_uri
    from serve.autoscaling import ray_autoscaling_config
    from serve.engine import VLLMEngine

    # A fixed count, or bounds that follow the engines' own load (serve.autoscaling).
    sizing = (
        {"autoscaling_config": ray_autoscaling_config(spec)}
        if spec.autoscaling
        else {"num_replicas": spec.num_replicas or 1}
    )
    placement = replica_placement(spec, _has_gpus(), app.stage_nodes.get(spec.name))
    deployment = serve.deployment(VLLMEngine).options(
        name=f"engine-{spec.name}",
        **sizing,
        **placement,
        health_check_period_s=10,
        health_check_timeout_s=30,
        # A new base version rolls the replicas: each new one starts (and is
        # healthy) before an old one drains and stops (serve.follow.BaseFollower).
        max_surge_percent=100,
        graceful_shutdown_timeout_s=60,
        max_ongoing_requests=1000,
    )
    engine = {
        **spec.engine.model_dump(),
        "task": spec.task,
        "autoscaling": spec.autoscaling is not None,
        # What each further pipeline stage's process asks of its bundle (serve.pipeline_stages).
        "stage_gpus": placement["ray_actor_options"]["num_gpus"],
        "stage_cpus": spec.cpus_per_replica,
        # Registered adapters on this base behind that alias, loaded at run time (serve.follow).
        "adapter_catalog": _adapter_catalog(spec, app),
    }
    return deployment.bind(
        _path(app.models[spec.name]),
        spec.name,
        _adapter_args(spec, app),
        engine,
        app.config.name,
        engine_key,
        app.config.follow_aliases_every_s,
        tracking_uri(),
        gateway,
    )


def _adapter_catalog(spec: ModelSpec, app: ResolvedApp) -> dict | None:
    base = app.models[spec.name]
    if not spec.adapter_alias or not isinstance(base, ResolvedModel):
        return None
    return {"alias": spec.adapter_alias, "base": base.ref}


def replica_placement(spec: ModelSpec, gpus: bool, stage_nodes: list[list[str]] | None = None) -> dict:
    """Serve deployment options that place one engine replica of tensor x pipeline
    GPUs: the replica actor's own resources and, for several stages, a GPU
    cluster or a plan's pinning, the replica's placement group (bundle 0: the
    replica and stage 0; bundle k: stage k, see cluster.replica_placement_group).

    Args:
        spec: the model.
        gpus: whether the cluster has GPUs (vLLM's CPU build asks for none).
        stage_nodes: per stage, the nodes the plan allows (sekisho.gpu_plan).
    """
    from cluster import replica_placement_group
    from cluster.node_env import FULL_PRIORITY_ENV

    tp, pp = spec.engine.tensor_parallel_size, spec.engine.pipeline_parallel_size
    actor = {
        "num_cpus": spec.cpus_per_replica,
        "num_gpus": tp if gpus else 0,
        "runtime_env": {"env_vars": dict(FULL_PRIORITY_ENV)},  # a job driver's priority
    }
    if pp == 1 and not gpus and not stage_nodes:
        return {"ray_actor_options": actor}  # a CPU engine: nothing to pack
    pg = replica_placement_group(tp, pp, spec.cpus_per_replica, stage_nodes, gpus=gpus)
    out = {
        "ray_actor_options": actor,
        "placement_group_bundles": pg.bundles,
        "placement_group_strategy": pg.strategy,
    }
    if any(pg.bundle_label_selector):
        out["placement_group_bundle_label_selector"] = pg.bundle_label_selector
    return out


def _has_gpus() -> bool:
    import ray

    return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0


def model_routes(app: ResolvedApp) -> dict[str, dict]:
    """Served model name -> what the gateway needs to route and audit it."""
    routes = {}
    for spec in app.config.models:
        for name in [spec.name] + [a.name for a in spec.adapters]:
            m = app.models[name]
            routes[name] = {
                "deployment": f"engine-{spec.name}",
                "base": spec.name,
                "version": m.ref if isinstance(m, ResolvedModel) else str(m),
                "sha256": m.sha256 if isinstance(m, ResolvedModel) else dir_sha256(m),
                "context_len": spec.engine.max_model_len,
                "task": spec.task,
            }
    return routes


class AppIngress:
    """The app's root deployment when the gateway is embedded in the engines: it
    holds them so that Serve deploys, updates and deletes them as one app, and
    follows the aliases of the base models (a move redeploys the app, which rolls
    the engines)."""

    def __init__(self, engines: list, follow: dict | None = None):
        self.engines = engines
        self.follower = None
        if follow and follow["bases"]:
            from foundation import offline
            from serve.follow import BaseFollower

            offline.apply()
            if follow.get("mlflow_uri"):
                os.environ["SEKISHO_MLFLOW_URI"] = follow["mlflow_uri"]
            self.follower = BaseFollower(
                ServeAppConfig.model_validate(follow["config"]),
                follow["bases"],
                Path(follow["cache_dir"]),
                follow["generation"],
                redeploy,
            )
            self.follower.start()

    def follow_status(self) -> dict:
        f = self.follower
        return {"bases": f.bases if f else {}, "last_error": f.last_error if f else None}

    def __del__(self):
        if getattr(self, "follower", None) is not None:
            self.follower.stop()


def build_app(app: ResolvedApp):
    """The Serve application: one engine deployment per base model and the gateway,
    embedded in each engine replica (default) or as its own deployment."""
    import secrets

    from ray import serve

    from experiments import tracking_uri
    from serve.gateway.db import default_url
    from serve.gateway.replica import GatewayReplica

    cfg = app.config
    # vLLM's own API key on every engine: only the gateway can reach /v1 there
    # (including runtime adapter loading).
    engine_key = ray_state.engine_secret(cfg.name)
    db_url = cfg.gateway.db_url or default_url()
    opts = {
        "app": cfg.name,
        "db_url": db_url,
        "limits": cfg.gateway.limits.model_dump(),
        "record_text": cfg.gateway.record_text,
        "routing": cfg.gateway.routing.model_dump(),
    }
    if cfg.gateway.placement == "embedded":
        embedded = {"host": cfg.host, "port": cfg.port, "opts": opts, "routes": model_routes(app)}
        engines = [build_engine(spec, app, engine_key, embedded) for spec in cfg.models]
        ingress = serve.deployment(AppIngress).options(
            name="app", num_replicas=1, ray_actor_options={"num_cpus": 0}
        )
        follow = None
        if app.followed_bases() and app.cache_dir is not None:
            fixed = cfg.model_copy(update={"gateway": cfg.gateway.model_copy(update={"db_url": db_url})})
            follow = {
                "config": fixed.model_dump(mode="json"),
                "bases": app.followed_bases(),
                "cache_dir": str(app.cache_dir),
                "mlflow_uri": tracking_uri(),
                "generation": secrets.token_hex(8),
            }
        return ingress.bind(engines, follow)
    engines = [build_engine(spec, app, engine_key) for spec in cfg.models]
    gateway = serve.deployment(GatewayReplica).options(
        name="gateway",
        num_replicas=cfg.gateway.num_replicas,
        ray_actor_options={"num_cpus": cfg.gateway.cpus_per_replica},
        max_ongoing_requests=10,
    )
    return gateway.bind(cfg.host, cfg.port, opts, model_routes(app), engine_key, engines=engines)


def deploy(app: ResolvedApp) -> str:
    """Deploy the app (Serve's own HTTP proxy stays off: the gateway is the entry
    point); returns the OpenAI base URL."""
    import ray
    from ray import serve

    cfg = app.config
    check_database_reach(cfg, sum(1 for n in ray.nodes() if n.get("Alive")))
    serve.start(proxy_location="Disabled")
    serve.run(build_app(app), name=cfg.name, route_prefix=None)
    _publish_for_status(app)
    return f"http://{cfg.host}:{cfg.port}/v1"


def check_database_reach(cfg: ServeAppConfig, nodes: int) -> None:
    """Every engine replica runs a gateway, and on a cluster of several nodes Serve
    may place replicas (of one model, or of the app's models) on different nodes;
    their keys, quotas and audit chain must be one database every node reaches.
    SQLite is a file of one node (and unsafe on a network file system), so an app
    on SQLite is deployed only where the Ray cluster is one node. Config load already
    refuses pipeline stages on SQLite; this covers replicas Serve spreads.

    Raises:
        UserError: `nodes` > 1 and the app's gateway database is SQLite.
    """
    url = cfg.gateway.db_url or os.environ.get("SEKISHO_GATEWAY_DB") or "sqlite:"
    if nodes > 1 and url.startswith("sqlite"):
        where = (
            "gateway.db_url is SQLite"
            if cfg.gateway.db_url
            else "gateway.db_url is unset (SQLite in the Sekisho home)"
        )
        raise UserError(
            f"app {cfg.name}: the Ray cluster has {nodes} nodes and Serve may place the app's "
            f"replicas, each with its gateway, on any of them, but {where}: keys, quotas and "
            "the audit chain would split into one file per node. PostgreSQL is required: set "
            "gateway.db_url: postgresql+psycopg://USER@HOST/DB (password in ~/.pgpass)."
        )


def engine_sizing(cfg: ServeAppConfig) -> dict[str, dict]:
    """Engine deployment -> its replica count or autoscaling bounds."""
    out = {}
    for spec in cfg.models:
        a = spec.autoscaling
        out[f"engine-{spec.name}"] = (
            {
                "min_replicas": a.min_replicas,
                "max_replicas": a.max_replicas,
                "target_ongoing_requests": a.target_ongoing_requests or float(spec.engine.max_num_seqs),
            }
            if a
            else {"num_replicas": spec.num_replicas or 1}
        )
    return out


def _publish_for_status(app: ResolvedApp) -> None:
    """For `sekisho serve status`: what each model serves, and each engine's
    fixed count or autoscaling bounds."""
    ray_state.set_app_routes(app.config.name, model_routes(app))
    ray_state.set_app_sizing(app.config.name, engine_sizing(app.config))


def redeploy(app: ResolvedApp) -> None:
    """Deploy a re-resolved app over the running one without waiting (called from
    inside the app, which the update replaces): Serve rolls every deployment, the
    engines one new replica before each old one (max_surge_percent)."""
    ray_state.deploy_nowait(build_app(app), app.config.name)
    _publish_for_status(app)
