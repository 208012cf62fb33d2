"""Checking a software bundle on arrival, before anything is installed from it:
every file against SHA256SUMS, every lock entry against a wheel with that hash,
and nothing but wheels (an sdist would run its build code on install)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from airlock.bundle import (
    LOCK,
    MANIFEST,
    SUMS,
    WHEELS,
    BundleError,
    sha256_file,
    target_tags,
    wheel_metadata,
)

_SUM_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")
_LOCK_LINE = re.compile(
    r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)"
    r"((?:\s+--hash=sha256:[0-9a-f]{64})+)$"
)


@dataclass
class BundleReport:
    """What a bundle holds, once it has checked out."""

    root: Path
    files: int = 0
    wheels: int = 0
    size: int = 0
    lock_entries: int = 0
    target: dict = field(default_factory=dict)
    project: str | None = None
    constraints: str | None = None  # the constraints file the versions were pinned by
    left_out: list[str] = field(default_factory=list)  # wheels the build left out on purpose

    def summary(self) -> str:
        here = target_tags()
        t = self.target
        same = all(t.get(k) == here[k] for k in ("python", "abi", "platform"))
        where = (
            "this Python: the same"
            if same
            else f"this Python is {here['python']}-{here['abi']}-{here['platform']}, not the target"
        )
        own = f"; {self.project}" if self.project else "; without Sekisho's own wheel"
        own += f"; pinned by {self.constraints}" if self.constraints else ""
        own += f"; left out on purpose: {', '.join(self.left_out)}" if self.left_out else ""
        return (
            f"bundle {self.root}: ok: {self.files} files match {SUMS}; {self.wheels} wheels "
            f"({self.size / 1e6:.1f} MB), {self.lock_entries} lock entries with matching "
            f"hashes{own}; target {t.get('python')}-{t.get('abi')}-{t.get('platform')} "
            f"({where})."
        )


def verify_bundle(root: Path) -> BundleReport:
    """Check a bundle folder; return what it holds.

    Raises:
        BundleError: naming every missing, extra, changed or non-wheel file and every
            lock entry without a matching wheel.
    """
    root = Path(root)
    if not (root / SUMS).is_file():
        raise BundleError(
            f"{root / SUMS}: not found; {root} is not a Sekisho bundle (or is "
            f"incomplete). Build one with `sekisho bundle build --out DIR`."
        )
    problems: list[str] = []
    present = _files(root, problems)
    hashes = {rel: sha256_file(root / rel) for rel in present}
    _check_sums(root, hashes, problems)
    wheels = _check_wheels(root, present, problems)
    report = BundleReport(
        root=root, files=len(present), wheels=len(wheels), size=sum((root / w).stat().st_size for w in wheels)
    )
    _check_lock(root, {w: hashes[w] for w in wheels}, report, problems)
    _read_manifest(root, report, problems)
    if problems:
        raise BundleError(
            f"{root}: the bundle failed verification, install nothing from it: " + "; ".join(problems) + "."
        )
    return report


def _files(root: Path, problems: list[str]) -> list[str]:
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            problems.append(f"{rel}: a link, not a file")
        elif p.is_file() and rel != SUMS:
            out.append(rel)
    return out


def _check_sums(root: Path, hashes: dict[str, str], problems: list[str]) -> None:
    listed: dict[str, str] = {}
    for n, line in enumerate((root / SUMS).read_text(encoding="utf-8").splitlines(), 1):
        m = _SUM_LINE.match(line)
        if not m:
            problems.append(f"{SUMS}:{n}: not a `sha256  path` line")
            continue
        listed[m.group(2)] = m.group(1)
    for rel, digest in listed.items():
        if rel not in hashes:
            problems.append(f"{rel}: missing (listed in {SUMS})")
        elif hashes[rel] != digest:
            problems.append(f"{rel}: changed (SHA-256 {hashes[rel]}, {SUMS} says {digest})")
    for rel in hashes.keys() - listed.keys():
        problems.append(f"{rel}: extra file, not listed in {SUMS}")


def _check_wheels(root: Path, present: list[str], problems: list[str]) -> list[str]:
    wheels = []
    for rel in present:
        if rel in (LOCK, MANIFEST):
            continue
        if not (rel.startswith(f"{WHEELS}/") and rel.count("/") == 1 and rel.endswith(".whl")):
            problems.append(
                f"{rel}: not a wheel (sdists and other files are refused: they "
                f"would run build code on install)"
            )
            continue
        try:
            wheel_metadata(root / rel)
        except BundleError:
            problems.append(f"{rel}: not a wheel (no .dist-info/METADATA in a zip archive)")
            continue
        wheels.append(rel)
    return wheels


def _check_lock(root: Path, wheels: dict[str, str], report: BundleReport, problems: list[str]) -> None:
    from packaging.utils import (
        InvalidWheelFilename,
        canonicalize_name,
        parse_wheel_filename,
    )
    from packaging.version import InvalidVersion, Version

    if not (root / LOCK).is_file():
        problems.append(f"{LOCK}: missing")
        return
    by_hash = {digest: rel for rel, digest in wheels.items()}
    locked = set()
    for n, line in enumerate((root / LOCK).read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = _LOCK_LINE.match(line)
        if not m:
            problems.append(f"{LOCK}:{n}: not `name==version --hash=sha256:...`")
            continue
        name, version = m.group(1), m.group(2)
        report.lock_entries += 1
        digests = re.findall(r"sha256:([0-9a-f]{64})", m.group(3))
        rel = next((by_hash[d] for d in digests if d in by_hash), None)
        if rel is None:
            problems.append(f"{LOCK}:{n}: {name}=={version}: no wheel in {WHEELS}/ has its hash")
            continue
        locked.add(rel)
        try:
            w_name, w_version, _, _ = parse_wheel_filename(rel.split("/", 1)[1])
            same = canonicalize_name(name) == w_name and Version(version) == w_version
        except (InvalidWheelFilename, InvalidVersion):
            same = False
        if not same:
            problems.append(f"{LOCK}:{n}: {name}=={version}: its hash is that of {rel}")
        elif w_name == "sekisho":
            report.project = f"sekisho {version}"
    for rel in sorted(wheels.keys() - locked):
        problems.append(f"{rel}: not in {LOCK}")


def _read_manifest(root: Path, report: BundleReport, problems: list[str]) -> None:
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
        report.target = dict(manifest["target"])
        report.constraints = (manifest.get("constraints") or {}).get("file")
        report.left_out = [w.split("-", 1)[0] for w in manifest.get("left_out", [])]
    except FileNotFoundError:
        problems.append(f"{MANIFEST}: missing")
    except (ValueError, KeyError, TypeError) as exc:
        problems.append(f"{MANIFEST}: unreadable ({exc})")
