"""API keys: secrets shown once, stored only as SHA-256, each limited to its models.

Secrets are 256-bit random strings, so a plain SHA-256 is a safe verifier (no
password stretching needed) and lookups are a single indexed query.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import insert, select, update

from foundation import UserError
from serve.gateway.db import api_keys, connect, reading

KEY_PREFIX = "sk-sekisho-"
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


@dataclass(frozen=True)
class ApiKey:
    name: str
    models: tuple[str, ...]
    rpm: int | None
    tpm: int | None
    admin: bool
    expires_at: float | None
    revoked_at: float | None
    prefix: str

    def allows(self, model: str) -> bool:
        return "*" in self.models or model in self.models

    @property
    def limited(self) -> bool:
        """Whether requests with this key are counted (a per-minute limit is set)."""
        return self.rpm is not None or self.tpm is not None

    def usable(self, now: float | None = None) -> bool:
        now = now or time.time()
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _row_to_key(row) -> ApiKey:
    return ApiKey(
        row.name,
        tuple(json.loads(row.models)),
        row.rpm,
        row.tpm,
        bool(row.admin),
        row.expires_at,
        row.revoked_at,
        row.prefix,
    )


class KeyStore:
    """Create, list, revoke and look up keys in the gateway database."""

    def __init__(self, url: str | None = None):
        self.engine = connect(url)
        self.reader = reading(self.engine)  # reads take no write lock

    def create(
        self,
        name: str,
        models: list[str],
        rpm: int | None = None,
        tpm: int | None = None,
        expires_at: float | None = None,
        admin: bool = False,
    ) -> str:
        """Create a key; returns the secret (shown once, never stored).

        Raises:
            UserError: bad name, no models, bad limits, or the name exists.
        """
        if not NAME.match(name):
            raise UserError(f"--name {name!r}: use 1-128 letters, digits, '_', '.' or '-'.")
        if not models:
            raise UserError("--models: give at least one model name (or '*' for all).")
        for flag, v in (("--rpm", rpm), ("--tpm", tpm)):
            if v is not None and v < 1:
                raise UserError(f"{flag} {v}: must be a positive number.")
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        with self.engine.begin() as conn:
            if conn.execute(select(api_keys.c.name).where(api_keys.c.name == name)).first():
                raise UserError(f"a key named {name!r} exists already; revoke it or pick another name.")
            conn.execute(
                insert(api_keys).values(
                    name=name,
                    secret_sha256=secret_hash(secret),
                    prefix=secret[: len(KEY_PREFIX) + 4],
                    models=json.dumps(sorted(set(models))),
                    rpm=rpm,
                    tpm=tpm,
                    admin=int(admin),
                    created_at=time.time(),
                    expires_at=expires_at,
                    revoked_at=None,
                )
            )
        return secret

    def revoke(self, name: str) -> None:
        with self.engine.begin() as conn:
            n = conn.execute(
                update(api_keys)
                .where(api_keys.c.name == name, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            ).rowcount
        if not n:
            raise UserError(f"no active key named {name!r}.")

    def list(self) -> list[ApiKey]:
        with self.reader.connect() as conn:
            return [_row_to_key(r) for r in conn.execute(select(api_keys).order_by(api_keys.c.name))]

    def by_hash(self) -> dict[str, ApiKey]:
        """secret hash -> key, for the gateway's cache."""
        with self.reader.connect() as conn:
            return {r.secret_sha256: _row_to_key(r) for r in conn.execute(select(api_keys))}
