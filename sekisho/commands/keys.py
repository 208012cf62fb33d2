"""`sekisho keys`: API keys for the gateway (secrets shown once, stored as hashes)."""

from __future__ import annotations

import datetime as dt

from foundation import UserError
from sekisho.cli_common import (
    add_command,
    add_gateway_db_options,
    command_group,
    gateway_db_url,
    home_from_args,
)


def _expiry(value: str | None) -> float | None:
    if not value:
        return None
    try:
        d = dt.datetime.fromisoformat(value)
    except ValueError:
        raise UserError(f"--expires {value!r}: expected a date like 2027-03-31 or 2027-03-31T18:00") from None
    if d.tzinfo is None:
        d = d.astimezone()
    return d.timestamp()


def cmd_keys_create(args) -> int:
    """Create a key for some models; prints the secret once."""
    from serve.gateway import KeyStore

    home_from_args(args)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    secret = KeyStore(gateway_db_url(args)).create(
        args.name, models, args.rpm, args.tpm, _expiry(args.expires), args.admin
    )
    print(f"key {args.name!r} for {', '.join(models)} (shown once; store it now):\n{secret}")
    return 0


def cmd_keys_list(args) -> int:
    """List keys (names, models, limits, state; never secrets)."""
    from serve.gateway import KeyStore

    home_from_args(args)
    for k in KeyStore(gateway_db_url(args)).list():
        state = "revoked" if k.revoked_at else ("expired" if not k.usable() else "active")
        exp = dt.datetime.fromtimestamp(k.expires_at).isoformat(timespec="minutes") if k.expires_at else "-"
        print(
            f"{k.name:28} {state:8} {k.prefix}…  models={','.join(k.models)}  rpm={k.rpm or '-'} "
            f"tpm={k.tpm or '-'} expires={exp}{'  admin' if k.admin else ''}"
        )
    return 0


def cmd_keys_revoke(args) -> int:
    """Revoke a key (every gateway replica refuses it within 5 seconds)."""
    from serve.gateway import KeyStore

    home_from_args(args)
    KeyStore(gateway_db_url(args)).revoke(args.name)
    print(f"revoked {args.name!r}")
    return 0


def register(groups) -> None:
    keys = command_group(groups, "keys", "gateway API keys")
    c = add_command(keys, "create", cmd_keys_create)
    c.add_argument("--name", required=True, help="key name (shown in the audit trail)")
    c.add_argument("--models", required=True, help="comma-separated model names, or '*'")
    c.add_argument("--rpm", type=int, help="requests per minute")
    c.add_argument("--tpm", type=int, help="tokens per minute")
    c.add_argument("--expires", help="expiry date (ISO 8601)")
    c.add_argument("--admin", action="store_true", help="may read /metrics from anywhere")
    c = add_command(keys, "list", cmd_keys_list)
    c = add_command(keys, "revoke", cmd_keys_revoke)
    c.add_argument("name", help="key name (from `sekisho keys list`)")
    for p in keys.choices.values():
        add_gateway_db_options(p)
