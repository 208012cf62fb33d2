"""`sekisho audit`: the gateway's hash-chained audit trail."""

from __future__ import annotations

import datetime as dt
import json
import sys

from foundation import UserError
from sekisho.cli_common import home_from_args


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
    print(f"audit chain {args.app!r}: BROKEN at record {r.broken_at}: {r.reason} "
          f"({r.records} records verified before it)", file=sys.stderr)
    return 1


def cmd_audit_tail(args) -> int:
    """Show the latest records."""
    for r in _log(args).records(limit=args.n):
        when = dt.datetime.fromtimestamp(r["ts"]).isoformat(timespec="seconds")
        print(f"{r['seq']:>7} {when} {r['status']} key={r.get('key')} model={r.get('model')} "
              f"tokens={r.get('prompt_tokens', 0)}+{r.get('completion_tokens', 0)} "
              f"{r.get('latency_ms', 0):.0f}ms {r.get('error') or ''}")
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
    audit = groups.add_parser("audit", help="the audit trail").add_subparsers(
        dest="command", required=True, metavar="COMMAND")
    c = audit.add_parser("verify", help=cmd_audit_verify.__doc__)
    c.set_defaults(fn=cmd_audit_verify)
    c = audit.add_parser("tail", help=cmd_audit_tail.__doc__)
    c.add_argument("-n", type=int, default=20)
    c.set_defaults(fn=cmd_audit_tail)
    c = audit.add_parser("export", help=cmd_audit_export.__doc__)
    c.add_argument("--since", help="ISO 8601 date or time")
    c.set_defaults(fn=cmd_audit_export)
    for p in audit.choices.values():
        p.add_argument("--app", default="demo", help="serve app name (one chain per app)")
        p.add_argument("--db", help="gateway database URL (default: SQLite in the Sekisho home)")
