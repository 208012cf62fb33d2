"""Requests and tokens per minute per key, shared by every gateway replica
through the database (a sliding window over per-minute counters)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from sqlalchemy import and_, insert, select, update

from serve.gateway.db import connect, usage_windows


@dataclass(frozen=True)
class QuotaDecision:
    allowed: bool
    reason: str = ""
    retry_after_s: int = 0


class QuotaLedger:
    def __init__(self, url: str | None = None):
        self.engine = connect(url)

    @staticmethod
    def _estimate(prev: int, cur: int, now: float) -> float:
        """Sliding-window estimate: the previous minute weighted by how much of it is still in view."""
        into = (now % 60) / 60
        return prev * (1 - into) + cur

    def admit(self, key: str, rpm: int | None, tpm: int | None, now: float | None = None) -> QuotaDecision:
        """Count a request against `key` if it is within both limits. Blocking."""
        if rpm is None and tpm is None:
            return QuotaDecision(True)
        now = now or time.time()
        minute = int(now // 60)
        with self.engine.begin() as conn:
            rows = {
                r.window: r
                for r in conn.execute(
                    select(usage_windows).where(
                        and_(usage_windows.c.key_name == key, usage_windows.c.window >= minute - 1)
                    )
                )
            }
            prev, cur = rows.get(minute - 1), rows.get(minute)
            retry = max(1, math.ceil(60 - now % 60))
            if rpm is not None:
                used = self._estimate(prev.requests if prev else 0, cur.requests if cur else 0, now)
                if used + 1 > rpm:
                    return QuotaDecision(False, f"rate limit of {rpm} requests per minute reached", retry)
            if tpm is not None:
                used = self._estimate(prev.tokens if prev else 0, cur.tokens if cur else 0, now)
                if used >= tpm:
                    return QuotaDecision(False, f"token limit of {tpm} tokens per minute reached", retry)
            if cur is None:
                conn.execute(insert(usage_windows).values(key_name=key, window=minute, requests=1, tokens=0))
            else:
                conn.execute(
                    update(usage_windows)
                    .where(and_(usage_windows.c.key_name == key, usage_windows.c.window == minute))
                    .values(requests=usage_windows.c.requests + 1)
                )
        return QuotaDecision(True)

    def add_tokens(self, key: str, tokens: int, now: float | None = None) -> None:
        if tokens <= 0:
            return
        minute = int((now or time.time()) // 60)
        with self.engine.begin() as conn:
            n = conn.execute(
                update(usage_windows)
                .where(and_(usage_windows.c.key_name == key, usage_windows.c.window == minute))
                .values(tokens=usage_windows.c.tokens + tokens)
            ).rowcount
            if not n:
                conn.execute(
                    insert(usage_windows).values(key_name=key, window=minute, requests=0, tokens=tokens)
                )
