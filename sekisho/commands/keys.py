"""`sekisho keys`: API keys for the gateway (secrets shown once, stored as hashes)."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

from foundation import UserError
from sekisho.cli_common import add_command, command_group, home_from_args


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


def add_db_options(parser) -> None:
    """The gateway database options: a URL without a password, or one read from a file."""
    parser.add_argument(
        "--db",
        help="gateway database URL without a password (default: $SEKISHO_GATEWAY_DB, else SQLite in "
        "the Sekisho home); a URL with a password goes in $SEKISHO_GATEWAY_DB or --db-file",
    )
    parser.add_argument("--db-file", help="file holding the gateway database URL (keep it mode 0600)")


def db_url(args) -> str | None:
    """The database URL from --db-file or --db (None: $SEKISHO_GATEWAY_DB or the default).

    Raises:
        UserError: the --db-file cannot be read or is empty.
    """
    if getattr(args, "db_file", None):
        try:
            url = Path(args.db_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UserError(f"--db-file {args.db_file}: {exc.strerror}") from None
        if not url:
            raise UserError(f"--db-file {args.db_file}: the file is empty")
        return url
    url = getattr(args, "db", None)
    if url:
        from sqlalchemy.engine import make_url

        try:
            has_password = make_url(url).password is not None
        except Exception:
            raise UserError(f"--db: not a database URL: {url!r}") from None
        if has_password:
            print(
                "warning: --db carries a password, which every user of this machine can read on the "
                "command line; use $SEKISHO_GATEWAY_DB or --db-file instead",
                file=sys.stderr,
            )
    return url


def cmd_keys_create(args) -> int:
    """Create a key for some models; prints the secret once."""
    from serve.gateway import KeyStore

    home_from_args(args)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    secret = KeyStore(db_url(args)).create(
        args.name, models, args.rpm, args.tpm, _expiry(args.expires), args.admin
    )
    print(f"key {args.name!r} for {', '.join(models)} (shown once; store it now):\n{secret}")
    return 0


def cmd_keys_list(args) -> int:
    """List keys (names, models, limits, state; never secrets)."""
    from serve.gateway import KeyStore

    home_from_args(args)
    for k in KeyStore(db_url(args)).list():
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
    KeyStore(db_url(args)).revoke(args.name)
    print(f"revoked {args.name!r}")
    return 0


def register(groups) -> None:
    keys = command_group(groups, "keys", "gateway API keys")
    c = add_command(keys, "create", cmd_keys_create)
    c.add_argument("--name", required=True)
    c.add_argument("--models", required=True, help="comma-separated model names, or '*'")
    c.add_argument("--rpm", type=int, help="requests per minute")
    c.add_argument("--tpm", type=int, help="tokens per minute")
    c.add_argument("--expires", help="expiry date (ISO 8601)")
    c.add_argument("--admin", action="store_true", help="may read /metrics from anywhere")
    c = add_command(keys, "list", cmd_keys_list)
    c = add_command(keys, "revoke", cmd_keys_revoke)
    c.add_argument("name")
    for p in keys.choices.values():
        add_db_options(p)
