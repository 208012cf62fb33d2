"""Anchors: the audit chain's head written where the database's writers cannot
reach, and read back by `sekisho audit verify --anchors`.

A target is a file (one JSON object a line, appended, created 0600) or a syslog
collector: `syslog://HOST:PORT` sends each anchor as one RFC 5424 message in a
UDP datagram, `syslog+tcp://HOST:PORT` over TCP with RFC 6587 octet counting.
The message has facility 13 (log audit), severity notice, APP-NAME
`sekisho-audit`, MSGID `anchor`, and the anchor's JSON as its MSG, so a file the
collector writes (whatever it puts before each message) reads back as anchors:
each line's JSON object with the anchor's fields counts, other lines are skipped
and counted.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

APP_NAME = "sekisho-audit"
MSGID = "anchor"
PRI = 13 * 8 + 5  # facility 13 (log audit), severity 5 (notice)
SYSLOG_SCHEMES = {"syslog": "udp", "syslog+tcp": "tcp"}
SEND_TIMEOUT_S = 5.0
_HASH = re.compile(r"[0-9a-f]{64}")
_FIELDS = ("chain", "seq", "hash", "time")


@dataclass(frozen=True)
class Anchor:
    """A chain head written outside the database."""

    chain: str
    seq: int
    hash: str
    time: float

    def json(self) -> str:
        return json.dumps({"chain": self.chain, "seq": self.seq, "hash": self.hash, "time": self.time})

    def line(self) -> str:
        return self.json() + "\n"


@dataclass(frozen=True)
class SyslogTarget:
    """A syslog collector anchors are sent to."""

    host: str
    port: int
    transport: str  # "udp" or "tcp"

    def __str__(self) -> str:
        scheme = next(s for s, t in SYSLOG_SCHEMES.items() if t == self.transport)
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


@dataclass(frozen=True)
class AnchorsRead:
    """What an anchor file held for one chain."""

    anchors: list[Anchor]
    other_chains: int  # anchors of other chains
    skipped_lines: int  # non-empty lines with no anchor in them


def parse_target(value: str) -> Path | SyslogTarget:
    """The anchor target `value` names: a file path, `syslog://HOST:PORT` or
    `syslog+tcp://HOST:PORT`.

    Raises:
        ValueError: what is wrong with it.
    """
    expected = "expected a file path, syslog://HOST:PORT (UDP) or syslog+tcp://HOST:PORT"
    if not value.strip():
        raise ValueError(f"empty anchor target: {expected}")
    if "://" not in value:
        return Path(value)
    scheme = value.split("://", 1)[0]
    if scheme not in SYSLOG_SCHEMES:
        raise ValueError(f"{value!r}: unknown scheme {scheme!r}; {expected}")
    try:
        url = urlsplit(value)
        port = url.port
    except ValueError as exc:
        raise ValueError(f"{value!r}: {exc}; {expected}") from None
    if url.username is not None or url.password is not None:
        raise ValueError(f"{value!r}: a syslog target takes no user or password; {expected}")
    if url.path or url.query or url.fragment:
        raise ValueError(f"{value!r}: a syslog target takes no path, query or fragment; {expected}")
    if not url.hostname:
        raise ValueError(f"{value!r}: no host; {expected}")
    if port is None or port == 0:
        raise ValueError(f"{value!r}: no port (1-65535); {expected}")
    return SyslogTarget(url.hostname, port, SYSLOG_SCHEMES[scheme])


def write_anchor(anchor: Anchor, target: Path | SyslogTarget) -> None:
    """Append `anchor` to the file `target` (created 0600, synced) or send it to the
    syslog collector `target`.

    Raises:
        OSError: the file cannot be written or the collector cannot be reached.
    """
    if isinstance(target, SyslogTarget):
        send_syslog(target, syslog_message(anchor))
        return
    fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(anchor.line())
        f.flush()
        os.fsync(f.fileno())


def syslog_message(anchor: Anchor) -> bytes:
    """The RFC 5424 message carrying `anchor` (its MSG is the anchor's JSON, ASCII)."""
    when = dt.datetime.fromtimestamp(anchor.time, dt.UTC).isoformat(timespec="microseconds")
    host = socket.gethostname()
    if not host or len(host) > 255 or not all(33 <= ord(c) <= 126 for c in host):
        host = "-"
    return f"<{PRI}>1 {when.replace('+00:00', 'Z')} {host} {APP_NAME} {os.getpid()} {MSGID} - {anchor.json()}".encode(
        "ascii"
    )


def send_syslog(target: SyslogTarget, message: bytes) -> None:
    """Send one syslog message: a UDP datagram, or an octet-counted TCP frame.

    Raises:
        OSError: the host does not resolve, or the collector refuses or times out.
    """
    if target.transport == "tcp":
        with socket.create_connection((target.host, target.port), timeout=SEND_TIMEOUT_S) as s:
            s.sendall(b"%d " % len(message) + message)
            s.shutdown(socket.SHUT_WR)
        return
    family, kind, proto, _, addr = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, kind, proto) as s:
        s.settimeout(SEND_TIMEOUT_S)
        s.sendto(message, addr)


def scan_anchors(path: str | Path, chain: str) -> AnchorsRead:
    """The anchors of `chain` in an anchor file, or in a file of syslog lines a
    collector wrote: each line's JSON object with the fields chain, seq, hash and
    time is an anchor; lines without one are skipped.

    Raises:
        ValueError: a line's anchor object has a wrong value (its line number named).
    """
    anchors: list[Anchor] = []
    other = skipped = 0
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        found = _anchor_object(line)
        if found is None:
            skipped += 1
            continue
        try:
            anchor = _anchor(found)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}:{n}: not an anchor ({exc})") from None
        if anchor.chain == chain:
            anchors.append(anchor)
        else:
            other += 1
    return AnchorsRead(anchors, other, skipped)


def _anchor_object(line: str) -> dict | None:
    """The first JSON object in `line` that has every anchor field."""
    decoder = json.JSONDecoder()
    start = line.find("{")
    while start != -1:
        try:
            obj, _ = decoder.raw_decode(line, start)
        except ValueError:
            start = line.find("{", start + 1)
            continue
        if isinstance(obj, dict) and all(k in obj for k in _FIELDS):
            return obj
        start = line.find("{", start + 1)  # an object nested in this one may be it
    return None


def _anchor(obj: dict) -> Anchor:
    chain, seq, h, when = (obj[k] for k in _FIELDS)
    if not isinstance(chain, str) or not chain:
        raise ValueError(f"chain {chain!r} is not a name")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise ValueError(f"seq {seq!r} is not a record number")
    if not isinstance(h, str) or not _HASH.fullmatch(h):
        raise ValueError(f"hash {h!r} is not a SHA-256 in hex")
    if isinstance(when, bool) or not isinstance(when, int | float):
        raise ValueError(f"time {when!r} is not a number")
    return Anchor(chain, seq, h, float(when))
