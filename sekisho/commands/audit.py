"""`sekisho audit`: the gateway's hash-chained audit trail."""

from __future__ import annotations

import datetime as dt
import json
import sys

from foundation import UserError
from sekisho.cli_common import add_command, command_group, home_from_args


def _log(args):
    from serve.gateway import AuditLog

    home_from_args(args)
    return AuditLog(args.app, args.db)


def cmd_audit_verify(args) -> int:
    """Check the whole chain; exit 1 and name the first bad record if it is broken."""
    r = _log(args).verify()
    if r.ok:
        print(f"audit chain {args.app!r}: {r.records} records, intact")
        return 0
    print(
        f"audit chain {args.app!r}: BROKEN at record {r.broken_at}: {r.reason} "
        f"({r.records} records verified before it)",
        file=sys.stderr,
    )
    return 1


def cmd_audit_tail(args) -> int:
    """Show the latest records."""
    for r in _log(args).records(limit=args.n):
        when = dt.datetime.fromtimestamp(r["ts"]).isoformat(timespec="seconds")
        print(
            f"{r['seq']:>7} {when} {r['status']} key={r.get('key')} model={r.get('model')} "
            f"tokens={r.get('prompt_tokens', 0)}+{r.get('completion_tokens', 0)} "
            f"{r.get('latency_ms', 0):.0f}ms {r.get('error') or ''}"
        )
    return 0


def cmd_audit_export(args) -> int:
    """Write records as JSON lines (with their sequence numbers) to stdout."""
    try:
        since = dt.datetime.fromisoformat(args.since).astimezone().timestamp() if args.since else None
    except ValueError:
        raise UserError(f"--since {args.since!r}: expected an ISO 8601 date or time") from None
    for r in _log(args).records(since=since):
        print(json.dumps(r, ensure_ascii=False))
    return 0


def register(groups) -> None:
    audit = command_group(groups, "audit", "the audit trail")
    c = add_command(audit, "verify", cmd_audit_verify)
    c = add_command(audit, "tail", cmd_audit_tail)
    c.add_argument("-n", type=int, default=20)
    c = add_command(audit, "export", cmd_audit_export)
    c.add_argument("--since", help="ISO 8601 date or time")
    for p in audit.choices.values():
        p.add_argument("--app", default="demo", help="serve app name (one chain per app)")
        p.add_argument("--db", help="gateway database URL (default: SQLite in the Sekisho home)")
