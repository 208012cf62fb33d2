"""One vLLM engine per Serve replica, running vLLM's own OpenAI server on a
loopback port inside the replica. Ray Serve owns the replica (placement,
health checks, restarts); the gateway forwards requests to its port.

The class is plain: `serve.builder` wraps it with `serve.deployment` at build time.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from foundation import offline
from foundation.net import free_port
from serve.engine_guard import ADAPTER_CACHE_ENV
from serve.vllm_process import engine_child_env, engine_env, engine_log_path, take_niceness, vllm_command

ROUTES_REFRESH_S = 1.0
# Leaving (scale-down, roll, delete): after the replica withdraws from the route
# table, how long the gateways get to stop sending here, and how long requests
# already sent get to finish; within Serve's graceful_shutdown_timeout_s (60 s)
# with the embedded gateway's drain (5 s and its requests in flight).
WITHDRAW_GRACE_S = 3.0
IDLE_WAIT_S = 15.0
logger = logging.getLogger("sekisho.serve")


class VLLMEngine:
    """A Serve replica that runs and health-checks one vLLM OpenAI server."""

    def __init__(
        self,
        model_dir: str,
        served_name: str,
        adapters: list[dict],
        engine: dict,
        app: str,
        engine_key: str,
        follow_interval_s: float = 10.0,
        mlflow_uri: str | None = None,
        gateway: dict | None = None,
    ):
        """Args:
        adapters: [{"served", "ref", "version", "sha256", "path"}] (see serve.follow).
        engine_key: the secret every route of the engine but /health requires
            (serve.engine_guard; only the gateway has it).
        gateway: {"host", "port", "opts", "routes"}: run the gateway inside this
            replica's vLLM server (serve.gateway.embedded) on the app's port.
        """
        offline.apply()
        take_niceness(engine["niceness"])  # what the constructor still imports keeps up with the engine
        import ray.util
        from ray import serve

        from serve.follow import AliasFollower, ServedAdapter

        if mlflow_uri:
            os.environ["SEKISHO_MLFLOW_URI"] = mlflow_uri
        self.app, self.served_name, self.engine_key = app, served_name, engine_key
        import httpx

        # One client for every call to this replica's engine (health every 10 s, load
        # on each autoscaling poll): httpx.get built a client, with a TLS context
        # loaded from the CA bundle, per call. No keep-alive: the engine's server
        # closes idle connections after 5 s.
        self.http = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))
        self.lora_slots = engine.get("max_cpu_loras") or engine["max_loras"]
        if engine.get("enable_prefix_caching") is None and engine.get("task", "generate") == "generate":
            # The gateways route prompts to the replica that holds their prefix (serve.gateway.router).
            engine = {**engine, "enable_prefix_caching": True}
        self.load_endpoint = bool(engine.get("autoscaling"))
        self.adapters = [ServedAdapter(**a) for a in adapters]
        for a in self.adapters:
            a.loaded.append(a.internal)
        # The node's cluster address (loopback on the embedded default), so a
        # gateway on another node can reach this engine.
        self.host = ray.util.get_node_ip_address()
        self.port = free_port()
        env = {**engine_env(engine), **os.environ}
        env["VLLM_API_KEY"] = engine_key
        # Runtime LoRA loads are accepted only from here (serve.engine_guard).
        self.adapter_cache = Path(tempfile.mkdtemp(prefix="sekisho-adapters-"))
        env[ADAPTER_CACHE_ENV] = str(self.adapter_cache)
        if any(a.ref for a in self.adapters) or engine.get("adapter_catalog"):
            # Lets this replica load a new adapter version in place. Reachable only
            # with the engine key, which only the gateway holds, and only from the
            # adapter cache (serve.engine_guard); the gateway never forwards these routes.
            env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        ctx = serve.get_replica_context()
        self._where = (ctx.app_name, ctx.deployment, ctx.replica_id.unique_id)
        self._deployment = ctx.deployment
        self.routes_file = self.drained_file = self.state_file = None
        if gateway is not None:
            from serve.gateway.embedded import ENV
            from serve.gateway.scrape import replica_settings

            self.routes_file = tempfile.mkstemp(prefix="sekisho-routes-", suffix=".json")[1]
            self._write_routes_file(include_self=True)
            self.drained_file = self.routes_file + ".drained"
            self.state_file = self.routes_file + ".state"  # the gateway's routing state, published here
            env[ENV] = json.dumps(
                {
                    **gateway,
                    "routes_file": self.routes_file,
                    "state_file": self.state_file,
                    "local_url": self.url(),
                    "drained_file": self.drained_file,
                    "metrics": replica_settings(app, ctx.deployment, served_name, self._where[2], self.host),
                }
            )
        self.log_path = engine_log_path(app, served_name, self._where[2])
        lora_modules = {a.internal: a.path for a in self.adapters}
        cmd = vllm_command(
            model_dir,
            served_name,
            lora_modules,
            engine,
            self.host,
            self.port,
            embedded_gateway=gateway is not None,
        )
        self.stages = []
        if engine.get("pipeline_parallel_size", 1) > 1:  # stages 1.. on their own nodes
            from serve.pipeline_stages import start_stages

            cmd, self.stages = start_stages(cmd, engine, self.host)
            env["VLLM_HOST_IP"] = self.host  # where the other stages reach this one
        self.proc = subprocess.Popen(
            cmd,
            env={**env, **engine_child_env(engine["niceness"])},
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
        )
        self._check_niceness(engine["niceness"])
        self._wait_healthy(engine["startup_timeout_s"])
        self.cache_tokens = self._cache_tokens()
        self.publish()
        self.follower = AliasFollower(
            self, self.adapters, follow_interval_s, self.adapter_cache, engine.get("adapter_catalog")
        )
        self.follower.start()
        self._stop_tables = threading.Event()
        if self.routes_file:
            # Other engines of the app (and their moves) reach this replica's gateway
            # within ROUTES_REFRESH_S, not only at the next health check.
            self._tables_thread = threading.Thread(
                target=self._refresh_routes_file, name="sekisho-routes", daemon=True
            )
            self._tables_thread.start()

    def _check_niceness(self, wanted: int) -> None:
        try:
            got = os.getpriority(os.PRIO_PROCESS, self.proc.pid)
        except OSError:  # already gone: the health wait reports why
            return
        if got != wanted:
            logger.warning(
                "vLLM for %s runs at niceness %d, not the configured %d: lowering it needs root "
                "or CAP_SYS_NICE. Ray's other processes on this node may take the CPU from it.",
                self.served_name,
                got,
                wanted,
            )

    def routes(self) -> dict:
        """Served name -> what answers to it on this replica (internal name, version, hash)."""
        names = {self.served_name: {"internal": self.served_name}}
        names.update({a.served: {**a.route(), "base": self.served_name} for a in self.adapters})
        return names

    def publish(self) -> None:
        """Tell the gateways where this replica listens and what it serves (at start,
        at each health check, after an alias moved)."""
        from serve.gateway import routing

        where = self._where
        if where is None:  # leaving: a late health check must not put it back
            return
        state = routing.read_state_file(self.state_file) if self.state_file else None
        routing.publish(
            *where,
            self.url(),
            self.routes(),
            state=state,
            lora_slots=self.lora_slots,
            cache_tokens=self.cache_tokens,
        )
        if self.routes_file:
            self._write_routes_file()

    def _refresh_routes_file(self) -> None:
        """Every ROUTES_REFRESH_S: publish this replica's entry with its gateway's
        routing state (load, prefixes, adapters), then hand the gateway the table."""
        while not self._stop_tables.wait(ROUTES_REFRESH_S):
            try:
                self.publish()
            except Exception:  # the cluster may be going away; the next round retries
                pass

    def _write_routes_file(self, include_self: bool = False) -> None:
        """The route table for the gateway embedded in this replica's vLLM server."""
        from serve.gateway import routing

        table = routing.read_table(self.app)
        if include_self:  # before this replica is published: its own models at least
            table.setdefault(self._deployment, []).append(
                {"url": self.url(), "ts": time.time(), "names": self.routes()}
            )
        routing.write_table_file(self.routes_file, table)

    def _auth(self) -> dict:
        return {"Authorization": f"Bearer {self.engine_key}"}

    def load_adapter(self, name: str, path: str) -> None:

        r = self.http.post(
            f"{self.url()}/v1/load_lora_adapter",
            json={"lora_name": name, "lora_path": path},
            headers=self._auth(),
            timeout=120,
        )
        if r.status_code != 200:
            raise RuntimeError(f"vLLM refused to load adapter {name} from {path}: {r.status_code} {r.text}")

    def unload_adapter(self, name: str) -> None:

        self.http.post(
            f"{self.url()}/v1/unload_lora_adapter", json={"lora_name": name}, headers=self._auth(), timeout=60
        )

    def sync_aliases(self) -> bool:
        """Re-read the followed aliases now (what `sekisho serve reload` triggers)."""
        return self.follower.sync()

    def api_key(self) -> str:
        """For tests and operators with cluster access: the engine's own key."""
        return self.engine_key

    def _wait_healthy(self, timeout_s: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"vLLM exited with status {self.proc.returncode} while starting; "
                    f"last log lines:\n{self.log_tail()}"
                )
            try:
                if self.http.get(f"{self.url()}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.shutdown()
        raise TimeoutError(f"vLLM did not become healthy in {timeout_s}s; log:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def url(self) -> str:
        """Base URL of this replica's engine."""
        return f"http://{self.host}:{self.port}"

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Called by Serve on an autoscaling deployment (serve.autoscaling): this
        replica's load as its engine counts it, running + waiting requests. Clients
        reach the replica directly, so Serve's own request counting sees none."""
        import asyncio

        from serve.autoscaling import LOAD_METRIC

        return {LOAD_METRIC: await asyncio.to_thread(self.engine_load)}

    def engine_load(self) -> float:
        """vLLM's running + waiting requests: from its gauges in-process where the
        engine was started for autoscaling (serve.autoscaling.EngineLoadEndpoint),
        else from its /metrics."""

        from serve.autoscaling import LOAD_PATH, parse_load

        if self.load_endpoint:
            r = self.http.get(f"{self.url()}{LOAD_PATH}", headers=self._auth(), timeout=5)
            r.raise_for_status()
            return float(r.json()["load"])
        return parse_load(self._metrics_text())

    def _metrics_text(self, timeout_s: float = 5) -> str:
        """vLLM's Prometheus text (/metrics), with the engine key."""

        r = self.http.get(f"{self.url()}/metrics", headers=self._auth(), timeout=timeout_s)
        r.raise_for_status()
        return r.text

    def _cache_tokens(self) -> int | None:
        """The engine's KV cache size in tokens (vLLM's /metrics), which bounds the
        prompt prefixes the gateways may take this replica to hold; None if not shown."""
        import httpx

        from serve.autoscaling import parse_cache_tokens

        try:
            return parse_cache_tokens(self._metrics_text(timeout_s=10))
        except httpx.HTTPError as exc:
            logger.warning("could not read the KV cache size of %s: %s", self.served_name, exc)
            return None

    def load_report(self) -> dict:
        """This replica's id and engine load (for operators and tests, through a
        Serve handle)."""
        from ray import serve

        return {"replica": serve.get_replica_context().replica_id.unique_id, "load": self.engine_load()}

    def check_health(self) -> None:
        """Called by Serve; raising marks the replica unhealthy and Serve replaces it."""

        if self.proc.poll() is not None:
            raise RuntimeError(f"vLLM exited with status {self.proc.returncode}:\n{self.log_tail()}")
        self.http.get(f"{self.url()}/health", timeout=5).raise_for_status()
        self.publish()

    def shutdown(self) -> None:
        if getattr(self, "_stop_tables", None) is not None:
            self._stop_tables.set()
            if getattr(self, "_tables_thread", None) is not None:
                self._tables_thread.join(5)
        if getattr(self, "follower", None) is not None:
            self.follower.stop()
        where, self._where = getattr(self, "_where", None), None  # publish() stops first
        if where:
            try:
                from serve.gateway import routing

                routing.withdraw(*where)  # other gateways stop sending here
                if getattr(self, "routes_file", None):
                    # ...while this replica's own gateway still answers from this engine
                    # until it has drained.
                    self._write_routes_file(include_self=True)
            except Exception:  # the cluster may be going away; the entry goes stale anyway
                pass
        withdrawn_at = time.monotonic()
        others, on_node = self._peers() if where else (False, False)
        if self.proc.poll() is None:
            if getattr(self, "drained_file", None):
                self._drain_gateway(move_clients=on_node)
            # Requests other gateways sent until they re-read the table (every 2 s) finish.
            self._wait_until_idle(IDLE_WAIT_S, not_before=withdrawn_at + WITHDRAW_GRACE_S if others else 0.0)
        if getattr(self, "routes_file", None):
            Path(self.routes_file).unlink(missing_ok=True)
            Path(self.routes_file + ".state").unlink(missing_ok=True)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if getattr(self, "stages", None):
            from serve.pipeline_stages import stop_stages

            stop_stages(self.stages)
            self.stages = []
        if getattr(self, "http", None) is not None:
            self.http.close()

    def _peers(self) -> tuple[bool, bool]:
        """After this replica withdrew: is another replica of the app still routed
        to (its gateway may have sent requests here), and is one on this node (its
        listener shares the app's port, so this one's clients can move to it)?"""
        from urllib.parse import urlsplit

        from serve.gateway import routing

        try:
            others = [e for entries in routing.read_table(self.app).values() for e in entries]
        except Exception:  # the cluster may be going away: assume the worst, wait
            return True, True
        others = [e for e in others if e.get("url") != self.url()]
        return bool(others), any(urlsplit(e["url"]).hostname == self.host for e in others)

    def _wait_until_idle(self, timeout_s: float, not_before: float = 0.0) -> None:
        """Let requests other gateways sent before they saw the withdrawal finish
        (vLLM would abort them when it stops): return once the engine is idle at
        or after `not_before` (monotonic), or after `timeout_s`."""
        deadline = max(time.monotonic(), not_before) + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if self.engine_load() == 0 and time.monotonic() >= not_before:
                    return
            except Exception:  # the engine is going away on its own
                return
            time.sleep(0.2)
        logger.warning("vLLM still had requests in flight after %ss; stopping it", timeout_s)

    def _drain_gateway(self, move_clients: bool = True, timeout_s: float = 40.0) -> None:
        """Let the embedded gateway move its clients to the other replicas on this
        node (if there are any) and finish what it has in flight before vLLM stops
        (serve.gateway.embedded)."""
        from serve.gateway.embedded import DRAIN_S

        drained = Path(self.drained_file)
        drained.unlink(missing_ok=True)
        try:
            self.proc.send_signal(signal.SIGUSR1 if move_clients else signal.SIGUSR2)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + max(timeout_s, DRAIN_S + 5)
        while time.monotonic() < deadline and not drained.exists() and self.proc.poll() is None:
            time.sleep(0.2)
        drained.unlink(missing_ok=True)
        self.drained_file = None

    def __del__(self):
        if getattr(self, "proc", None) is not None:
            self.shutdown()
