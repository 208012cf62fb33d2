"""`sekisho audit`: the gateway's hash-chained audit trail.

`audit anchor` writes the chain's head outside the database (to the file or syslog
collector the app config's `gateway.audit_anchor_path` names); run it from cron, e.g. every 5
minutes: `sekisho audit anchor --config configs/serve/APP.yaml`.
"""

from __future__ import annotations

import datetime as dt
import json
import sys

from foundation import UserError
from sekisho.cli_common import (
    add_command,
    add_gateway_db_options,
    app_config,
    command_group,
    gateway_db_url,
    home_from_args,
)


def _config(args):
    """The app config named by --config (app name, database, anchor file), or None."""
    return app_config(args)


def _log(args):
    from serve.gateway import AuditLog

    home_from_args(args)
    cfg = _config(args)
    app = args.app or (cfg.name if cfg else "demo")
    return AuditLog(app, gateway_db_url(args))


def cmd_audit_verify(args) -> int:
    """Check the whole chain (read-only); exit 1 and name the first bad record if it
    is broken, no longer reaches an anchored head (--anchors), or does not exist."""
    from serve.gateway.anchors import scan_anchors

    log = _log(args)
    anchors = []
    if args.anchors:
        try:
            found = scan_anchors(args.anchors, log.chain)
        except (OSError, ValueError) as exc:
            raise UserError(f"--anchors {args.anchors}: {exc}") from None
        anchors = found.anchors
        if not anchors:
            raise UserError(
                f"--anchors {args.anchors}: no anchor of chain {log.chain!r} in it "
                f"({found.other_chains} of other chains, {found.skipped_lines} lines without an anchor)"
            )
        print(
            f"--anchors {args.anchors}: read {len(anchors)} anchors of chain {log.chain!r} "
            f"({found.other_chains} of other chains, {found.skipped_lines} other lines skipped)"
        )
    r = log.verify(anchors)
    if r.ok:
        extra = f", reaches its {r.anchors} anchored heads" if anchors else ""
        print(f"audit chain {log.chain!r}: {r.records} records, intact{extra}")
        if r.open_admissions:
            print(
                f"  {r.open_admissions} admitted requests have no completed record yet "
                "(in flight, or their gateway stopped mid-answer)"
            )
        return 0
    where = f"BROKEN at record {r.broken_at}: " if r.broken_at is not None else "FAILED: "
    print(
        f"audit chain {log.chain!r}: {where}{r.reason} ({r.records} records verified before it)",
        file=sys.stderr,
    )
    return 1


def cmd_audit_anchor(args) -> int:
    """Write the chain's head (sequence, hash, time) to the anchor target (--to, else
    the app config's gateway.audit_anchor_path: a file or a syslog collector); cron-ready."""
    cfg = _config(args)
    target = args.to or (cfg.gateway.audit_anchor_path if cfg else None)
    if not target:
        raise UserError(
            "audit anchor: no anchor file; pass --to FILE or --config with gateway.audit_anchor_path set"
        )
    log = _log(args)
    try:
        a = log.anchor(target)
    except LookupError as exc:
        raise UserError(f"audit anchor: {exc} (check --app)") from None
    except ValueError as exc:
        raise UserError(
            f"audit anchor: {'--to' if args.to else 'gateway.audit_anchor_path'}: {exc}"
        ) from None
    except OSError as exc:
        raise UserError(f"audit anchor: cannot write {target}: {exc}") from None
    print(f"anchored chain {a.chain!r} at record {a.seq} ({a.hash[:16]}…) in {target}")
    return 0


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
    c.add_argument(
        "--anchors",
        help="anchor file (from `audit anchor`, or a syslog collector's file of its messages): "
        "the chain must reach every head in it",
    )
    c = add_command(audit, "anchor", cmd_audit_anchor)
    c.add_argument(
        "--to",
        help="anchor file to append to, or syslog://HOST:PORT / syslog+tcp://HOST:PORT "
        "(default: the app config's gateway.audit_anchor_path)",
    )
    c = add_command(audit, "tail", cmd_audit_tail)
    c.add_argument("-n", type=int, default=20, help="records to show (default 20)")
    c = add_command(audit, "export", cmd_audit_export)
    c.add_argument("--since", help="ISO 8601 date or time")
    for p in audit.choices.values():
        p.add_argument("--app", help="serve app name (one chain per app; default: the --config's, else demo)")
        add_gateway_db_options(p)
