"""Sekisho's state in Ray's internal KV store, and Serve's non-blocking deploy.

The one module that calls Ray's private APIs (`ray.experimental.internal_kv`,
`ray.serve._run`): every key lives in NAMESPACE under a format named here, and
every other module goes through these functions. Ray is imported on first use,
so importing this module needs no cluster.
"""

from __future__ import annotations

import json
import secrets
import time

NAMESPACE = "sekisho"
APP_ROUTES = "apps/{app}"  # served model name -> version, hash, deployment (`serve status`)
APP_SIZING = "apps/{app}/sizing"  # engine deployment -> replica count or bounds (`serve status`)
RELOAD = "reload/{app}"  # when `sekisho serve reload` last asked (time.time())
ROLLED = "rolled/{app}/{generation}"  # written once: that deployed generation rolled to new bases
ENGINE_SECRET = "engine-key/{app}"  # vLLM's API key on every engine of the app
ENGINE = "engines/{app}/{deployment}/{replica}"  # one engine replica's URL and served names
ENGINES = "engines/{app}/"


def _kv():
    from ray.experimental import internal_kv

    return internal_kv


def _put(key: str, value: bytes, overwrite: bool = True) -> bool:
    """Returns True if `key` already existed (so, without overwrite, nothing was written)."""
    return bool(_kv()._internal_kv_put(key.encode(), value, overwrite=overwrite, namespace=NAMESPACE))


def _get(key: str) -> bytes | None:
    return _kv()._internal_kv_get(key.encode(), namespace=NAMESPACE)


def _get_json(key: str) -> dict:
    raw = _get(key)
    return json.loads(raw) if raw else {}


# ---- apps --------------------------------------------------------------------
def set_app_routes(app: str, routes: dict) -> None:
    _put(APP_ROUTES.format(app=app), json.dumps(routes).encode())


def app_routes(app: str) -> dict:
    """What `set_app_routes` stored for `app`; {} if nothing."""
    return _get_json(APP_ROUTES.format(app=app))


def forget_app_routes(app: str) -> None:
    _kv()._internal_kv_del(APP_ROUTES.format(app=app).encode(), namespace=NAMESPACE)


def set_app_sizing(app: str, sizing: dict) -> None:
    _put(APP_SIZING.format(app=app), json.dumps(sizing).encode())


def app_sizing(app: str) -> dict:
    """What `set_app_sizing` stored for `app`; {} if nothing."""
    return _get_json(APP_SIZING.format(app=app))


def engine_secret(app: str) -> str:
    """vLLM's API key for every engine of `app`: made on first use, then the same
    across redeploys (during a roll, old and new replicas still reach each other)."""
    key = ENGINE_SECRET.format(app=app)
    _put(key, secrets.token_urlsafe(32).encode(), overwrite=False)
    return _get(key).decode()


# ---- following aliases (serve.follow) ----------------------------------------
def request_reload(app: str) -> None:
    """`sekisho serve reload`: every engine of `app` re-reads its aliases at once."""
    _put(RELOAD.format(app=app), str(time.time()).encode())


def reload_requested(app: str) -> float:
    """When a reload of `app` was last requested (time.time()); 0.0 if never."""
    raw = _get(RELOAD.format(app=app))
    return float(raw) if raw else 0.0


def claim_roll(app: str, generation: str, versions: dict) -> bool:
    """Record that deployed `generation` of `app` rolls to `versions`. Returns
    False if it was recorded before (this generation already rolled)."""
    return not _put(
        ROLLED.format(app=app, generation=generation), json.dumps(versions).encode(), overwrite=False
    )


# ---- engine replicas (serve.gateway.routing) ---------------------------------
def publish_engine(app: str, deployment: str, replica: str, entry: dict) -> None:
    _put(ENGINE.format(app=app, deployment=deployment, replica=replica), json.dumps(entry).encode())


def withdraw_engine(app: str, deployment: str, replica: str) -> None:
    key = ENGINE.format(app=app, deployment=deployment, replica=replica)
    _kv()._internal_kv_del(key.encode(), namespace=NAMESPACE)


def engine_entries(app: str) -> list[tuple[str, dict]]:
    """(deployment, entry) for every engine replica of `app` with an entry."""
    kv, prefix = _kv(), ENGINES.format(app=app)
    out = []
    for key in kv._internal_kv_list(prefix.encode(), namespace=NAMESPACE):
        raw = kv._internal_kv_get(key, namespace=NAMESPACE)
        if raw:
            out.append((key.decode()[len(prefix) :].split("/", 1)[0], json.loads(raw)))
    return out


# ---- Serve -------------------------------------------------------------------
def deploy_nowait(target, name: str) -> None:
    """Deploy the bound `target` as app `name` and return without waiting for it
    (`serve.run` blocks; a caller inside the app it replaces must not)."""
    from ray import serve

    serve._run(target, name=name, route_prefix=None, _blocking=False)
