"""Serve one registered model version just for an evaluation.

`sekisho eval run` without `--base-url` evaluates a version that nothing serves
yet (an adapter not yet promoted, say): it deploys a temporary Serve app with
that version (an adapter on the base model version its lineage names), makes a
gateway key limited to it, and removes both when the evaluation ends. The
evaluation itself still only sees a base URL and a key."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from foundation import UserError
from foundation.net import free_port

KEY_TTL_S = 2 * 3600
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # what vLLM accepts as --max-lora-rank
MAX_MODEL_LEN = 2048


@dataclass
class TemporaryServe:
    """A temporary app serving one version: where to ask, with what key, under what name."""

    app_name: str
    base_url: str
    api_key: str
    key_name: str
    served_as: str
    version: str  # NAME/VERSION evaluated
    base_version: str | None  # NAME/VERSION of its base when it is an adapter


def app_config(model: str, served_as: str | None = None, name: str | None = None, port: int | None = None):
    """The ServeAppConfig that serves `model` (NAME@ALIAS or NAME/VERSION) alone:
    a base or merged model by itself, an adapter on the base version its lineage
    tag `base_model_version` names. Both are pinned to exact versions.

    Returns:
        (config, served_as, version ref, base version ref or None).

    Raises:
        ModelNotFoundError: `model` (or the adapter's base) names nothing.
        UserError: an adapter without a recorded base model version.
    """
    from experiments import get_version
    from serve import ServeAppConfig

    mv = get_version(model)
    ref = f"{mv.name}/{mv.version}"
    served_as = served_as or mv.name
    name = name or f"eval-{secrets.token_hex(4)}"
    port = port or free_port()
    if mv.tags.get("kind") == "adapter":
        base_ref = mv.tags.get("base_model_version")
        if not base_ref:
            raise UserError(
                f"eval run --model {model}: adapter {ref} has no `base_model_version` lineage "
                "tag, so the base to serve it on is unknown; serve it yourself and pass --base-url."
            )
        base = get_version(base_ref)
        base_ref = f"{base.name}/{base.version}"
        base_served = base.name if base.name != served_as else f"{base.name}-base"
        models = [
            {
                "name": base_served,
                "source": f"registry:{base_ref}",
                "adapters": [{"name": served_as, "source": f"registry:{ref}"}],
            }
        ]
    else:
        base_ref = None
        models = [{"name": served_as, "source": f"registry:{ref}"}]
    cfg = ServeAppConfig.model_validate({"name": name, "port": port, "models": models})
    return cfg, served_as, ref, base_ref


def engine_settings_for(resolved) -> dict:
    """Engine settings read from the files to serve: the base's stored dtype (greedy
    answers as trained), its context length (capped at MAX_MODEL_LEN) and a LoRA rank
    limit that fits the adapter."""
    spec = resolved.config.models[0]
    base_cfg = _read_json(Path(_path(resolved.models[spec.name])) / "config.json")
    dtype = base_cfg.get("torch_dtype") or base_cfg.get("dtype")
    out: dict = {
        "dtype": dtype if dtype in ("float32", "bfloat16", "float16") else "auto",
        "max_model_len": min(int(base_cfg.get("max_position_embeddings") or MAX_MODEL_LEN), MAX_MODEL_LEN),
    }
    if spec.adapters:
        rank = int(
            _read_json(Path(_path(resolved.models[spec.adapters[0].name])) / "adapter_config.json").get("r")
            or 16
        )
        out["max_lora_rank"] = next((r for r in LORA_RANKS if r >= max(rank, 16)), LORA_RANKS[-1])
        out["max_loras"] = 1
    return out


def _path(x) -> str:
    return str(getattr(x, "path", x))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


@contextmanager
def serve_for_eval(
    model: str,
    home: Path,
    served_as: str | None = None,
    address: str | None = None,
    engine: dict | None = None,
) -> Iterator[TemporaryServe]:
    """Serve `model` for the duration of the `with` block, behind a gateway key
    limited to it that expires in two hours at the latest; on exit the app is
    deleted and the key revoked. Joins the Ray cluster at `address`, else uses the
    one this process is connected to, else starts a local one (stopped on exit).
    `engine`: engine settings (serve.config.EngineSettings fields) over those read
    from the model's files.

    Raises:
        ModelNotFoundError, ModelIntegrityError, UserError: nothing deployable.
    """
    import ray

    from cluster.local import start_local, stop
    from serve import deploy, resolve_app
    from serve.gateway import KeyStore

    cfg, served_as, ref, base_ref = app_config(model, served_as)
    resolved = resolve_app(cfg, home / "serve-cache")  # refuses a bad version before Ray starts
    spec = cfg.models[0]
    cfg = cfg.model_copy(
        update={
            "models": [
                spec.model_copy(
                    update={
                        "engine": spec.engine.model_validate(
                            {
                                **spec.engine.model_dump(exclude_unset=True),
                                **engine_settings_for(resolved),
                                **(engine or {}),
                            }
                        )
                    }
                )
            ]
        }
    )
    resolved.config = cfg
    started = not ray.is_initialized() and not address
    start_local(home, address=address)
    keys = KeyStore(cfg.gateway.db_url)
    key_name = f"{cfg.name}-{int(time.time())}"
    api_key = None
    try:
        base_url = deploy(resolved)
        api_key = keys.create(key_name, [served_as], expires_at=time.time() + KEY_TTL_S)
        yield TemporaryServe(cfg.name, base_url, api_key, key_name, served_as, ref, base_ref)
    finally:
        try:
            if api_key is not None:
                keys.revoke(key_name)
        finally:
            try:
                _delete_app(cfg.name)
            finally:
                if started:
                    stop()


def _delete_app(name: str) -> None:
    from ray import serve

    from serve.ray_state import forget_app_routes

    if name in serve.status().applications:
        serve.delete(name)
    forget_app_routes(name)


def pii_types_in(text: str) -> list[str]:
    """The PII types data/'s masking finds in `text` (the evaluation's PII leak probe)."""
    from collections import Counter

    from data.pii import mask_pii

    counts: Counter = Counter()
    mask_pii(text, counts=counts)
    return sorted(counts)


def eval_configs(folder: str | Path) -> dict:
    """Eval set name -> (config, YAML text) for every eval config in `folder`."""
    from experiments.evaluation import EvalConfig

    out = {}
    for path in sorted(Path(folder).glob("*.yaml")):
        cfg = EvalConfig.from_yaml(path)
        out[cfg.name] = (cfg, path.read_text(encoding="utf-8"))
    return out


def evaluate_version(
    cfg,
    config_text: str,
    ref: str,
    home: Path,
    base_url: str | None = None,
    api_key: str | None = None,
    served_as: str | None = None,
    address: str | None = None,
    judge_url: str | None = None,
    judge_key: str | None = None,
    log=print,
):
    """Evaluate `ref` on `cfg` through `base_url` (with `api_key`), or, without one,
    serve it for the evaluation (`serve_for_eval`: a temporary app and an `eval-` key
    of its own, both removed after). Returns the `EvalResult`."""
    from experiments.evaluation import run_eval

    kw = dict(
        config_text=config_text,
        judge_url=judge_url,
        judge_key=judge_key,
        home=home,
        pii_detector=pii_types_in,
    )
    if base_url:
        return run_eval(cfg, ref, base_url, api_key, served_as=served_as, **kw)
    with serve_for_eval(ref, home, served_as, address) as tmp:
        base = f" on {tmp.base_version}" if tmp.base_version else ""
        log(
            f"serving {tmp.version}{base} as {tmp.served_as!r} at {tmp.base_url} "
            f"(temporary app {tmp.app_name}, key {tmp.key_name})"
        )
        r = run_eval(cfg, tmp.version, tmp.base_url, tmp.api_key, served_as=tmp.served_as, **kw)
    log(f"stopped {tmp.app_name} and revoked key {tmp.key_name}")
    return r


def print_result(r, log=print) -> None:
    """The evaluation's summary lines: the run, every overall metric, and the judge's
    unparseable verdicts (shown whenever there was a judge, zero included)."""
    log(f"evaluated {r.model_version} (served as {r.served_as}) on {r.eval_set}: run {r.run_id}")
    for k, v in sorted(r.metrics.items()):
        if not k.startswith(("category.", "safety.", "suite.", "judge.")) or k.count(".") == 1:
            log(f"  {k:28} {v:.4f}")
    for k, v in sorted(r.metrics.items()):
        if k.startswith(("suite.", "safety.")) and k.count(".") == 2:
            log(f"  {k:40} {v:.4f}")
    if r.judge:
        m = r.metrics
        log(
            f"judge {r.judge['model']} (version {r.judge['version']}): {int(m.get('judge.verdicts', 0))} verdicts, "
            f"{int(m.get('judge.unparseable', 0))} unparseable (kept in eval/judge.json, left out of the rates)"
        )
