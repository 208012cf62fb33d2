"""The body of one promoting process for the concurrent-promotion test in
test_promotion.py (a module of its own so that `spawn` can import it)."""

from __future__ import annotations


def promote_or_rollback(name: str, version: str | None, reason: str | None, gates, go) -> tuple:
    """Once every process is ready, promote `name/version` to production (forced
    with `reason` when given, else through `gates`), or roll production back when
    `version` is None. Returns (version, previous) of what happened."""
    from experiments import promote, rollback

    go.wait(300)
    if version is None:
        p = rollback(name)
    else:
        p = promote(name, version, force=reason is not None, reason=reason, gates=gates)
    return p.version, p.previous
