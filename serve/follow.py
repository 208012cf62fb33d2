"""Serve follows the registry: each engine replica watches the aliases its
adapters are served from, and when one moves it loads the new version next to
the old one (vLLM's runtime LoRA loading), then switches the name the gateway
routes to. Requests in flight finish on the version they started with; none
fails. The previous version stays loaded, so a rollback is just as quick.

Adapters are loaded under versioned names (`tiny-ja--v2`); the gateway maps the
name clients use to the current one and maps it back in answers.

A base model followed the same way (`registry:NAME@ALIAS` as a model's source)
cannot change inside a running vLLM: the app's root replica watches those
aliases (BaseFollower) and, when one moves, redeploys the re-resolved app. Serve
then rolls the engines, starting each new replica before an old one drains
(serve.builder, serve.gateway.embedded).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from serve.ray_state import claim_roll, reload_requested


def internal_name(served: str, version: str | None) -> str:
    return f"{served}--v{version}" if version else served


@dataclass
class ServedAdapter:
    """One adapter name clients use, and what currently answers to it."""

    served: str
    ref: str | None  # registry NAME@ALIAS to follow, or None for a fixed path/version
    version: str | None
    sha256: str
    path: str
    loaded: list[str] = field(default_factory=list)  # internal names, oldest first

    @property
    def internal(self) -> str:
        return internal_name(self.served, self.version)

    def route(self) -> dict:
        return {"internal": self.internal, "version": self.version_ref, "sha256": self.sha256}

    @property
    def version_ref(self) -> str:
        if self.ref and self.version:
            name = self.ref.split("@")[0]  # NAME@ALIAS followed, or NAME/VERSION pinned
            return name if name.endswith(f"/{self.version}") else f"{name}/{self.version}"
        return self.path


def _follow_loop(stop: threading.Event, app: str, interval_s: float, sync, on_error) -> None:
    """Call `sync` every `interval_s`, and at once after `sekisho serve reload`."""
    seen_reload, next_poll = reload_requested(app), 0.0
    while not stop.wait(0.5):
        now = time.monotonic()
        try:
            flag = reload_requested(app)
        except Exception:
            flag = seen_reload
        if now < next_poll and flag == seen_reload:
            continue
        seen_reload, next_poll = flag, now + interval_s
        try:
            sync()
            on_error(None)
        except Exception as exc:  # keep serving the current version; report it
            on_error(f"{type(exc).__name__}: {exc}")


class BaseFollower:
    """Polls the aliases an app's base models follow; on a move, redeploys the
    app once (a write-once key per deployed generation, should Serve restart the
    replica that runs this)."""

    def __init__(self, config, bases: dict[str, str], cache_dir: Path, generation: str, redeploy):
        self.config, self.bases, self.cache_dir = config, dict(bases), cache_dir
        self.generation, self.redeploy = generation, redeploy
        self.last_error: str | None = None
        self.rolled_to: dict[str, str] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sekisho-base-follower", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        _follow_loop(
            self._stop,
            self.config.name,
            self.config.follow_aliases_every_s,
            self.sync,
            lambda e: setattr(self, "last_error", e),
        )

    def sync(self) -> bool:
        """Redeploy if a followed base alias moved. Returns True if it did."""
        from experiments import get_version
        from serve.builder import resolve_app

        if self.rolled_to is not None:
            return False
        now = {ref: str(get_version(ref).version) for ref in self.bases}
        if now == self.bases:
            return False
        app = resolve_app(self.config, self.cache_dir)  # downloads and verifies before anything moves
        first = claim_roll(self.config.name, self.generation, now)
        self.rolled_to = now
        if not first:
            return False  # this generation already rolled
        self.redeploy(app)
        return True


def catalog_adapters(alias: str, base: str, bases: dict | None = None) -> dict[str, str]:
    """Registered adapters trained on `base` (NAME/VERSION, their base_model_version
    tag) with `alias` set: registered name -> the version the alias names.
    `bases` caches (name, version) -> base across calls (a version's tags stay)."""
    bases = {} if bases is None else bases
    from mlflow import MlflowClient

    from experiments import use_store

    use_store()
    client = MlflowClient()
    out, token = {}, None
    while True:
        page = client.search_registered_models(
            filter_string="tags.kind = 'adapter'", max_results=1000, page_token=token
        )
        for rm in page:
            version = (rm.aliases or {}).get(alias)
            if version is None:
                continue
            if (rm.name, version) not in bases:
                bases[(rm.name, version)] = client.get_model_version(rm.name, version).tags.get(
                    "base_model_version"
                )
            if bases[(rm.name, version)] == base:
                out[rm.name] = str(version)
        token = page.token
        if not token:
            return out


class AliasFollower:
    """Polls the registry for each followed adapter; loads and switches on change.
    With a catalog ({"alias", "base"}: the model's adapter_alias), also loads every
    registered adapter on the base that the alias reaches, then follows it too."""

    def __init__(
        self,
        engine,
        adapters: list[ServedAdapter],
        interval_s: float,
        cache_dir: Path,
        catalog: dict | None = None,
    ):
        self.engine, self.adapters, self.interval_s = engine, adapters, interval_s
        self.cache_dir, self.catalog = cache_dir, catalog
        self._catalog_bases: dict = {}
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sekisho-alias-follower", daemon=True)

    def start(self) -> None:
        if self.catalog or any(a.ref and "@" in a.ref for a in self.adapters):
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        _follow_loop(
            self._stop, self.engine.app, self.interval_s, self.sync, lambda e: setattr(self, "last_error", e)
        )

    def sync(self) -> bool:
        """Bring every followed adapter to its alias's version. Returns True if one changed."""
        from airlock import load
        from experiments import get_version

        changed = self._discover() if self.catalog else False
        for a in self.adapters:
            if not a.ref or "@" not in a.ref:
                continue
            mv = get_version(a.ref)
            version = str(mv.version)
            if version == a.version:
                continue
            # Checked against its store record, copied into the adapter cache (the
            # only place runtime LoRA loads are accepted from, serve.engine_guard).
            resolved = load(f"{mv.name}/{version}", copy_to=self.cache_dir / f"{a.served}--v{version}")
            new_internal = internal_name(a.served, version)
            if new_internal not in a.loaded:
                self.engine.load_adapter(new_internal, str(resolved.path))
                a.loaded.append(new_internal)
            a.version, a.sha256, a.path = version, resolved.sha256, str(resolved.path)
            changed = True
            # Keep the current and the previous version loaded (instant rollback).
            while len(a.loaded) > 2:
                old = a.loaded.pop(0)
                if old != a.internal:
                    self.engine.unload_adapter(old)
        if changed:
            self.engine.publish()
        return changed

    def _discover(self) -> bool:
        """Load the catalog's adapters this engine does not serve yet. Returns True if one was."""
        from airlock import load

        served = {a.served for a in self.adapters} | {self.engine.served_name}
        found = False
        for name, version in catalog_adapters(
            self.catalog["alias"], self.catalog["base"], self._catalog_bases
        ).items():
            if name in served:
                continue
            resolved = load(f"{name}/{version}", copy_to=self.cache_dir / f"{name}--v{version}")
            adapter = ServedAdapter(
                served=name,
                ref=f"{name}@{self.catalog['alias']}",
                version=version,
                sha256=resolved.sha256,
                path=str(resolved.path),
            )
            self.engine.load_adapter(adapter.internal, adapter.path)
            adapter.loaded.append(adapter.internal)
            self.adapters.append(adapter)
            found = True
        return found
