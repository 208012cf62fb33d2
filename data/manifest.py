"""Dataset manifests: what went in, what came out, and a version naming it.

The version is a content hash: the sources' SHA-256, the settings that shape the
output, the tokenizer's hash and a hash of the token rows written. Renaming or
moving files does not change it; changing a byte of input, a setting or the
tokenizer does.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

MANIFEST_FILE = "manifest.json"


def sources_sha256(sources: list[dict]) -> str:
    """One hash for all sources: the file's own hash when there is one file."""
    if len(sources) == 1:
        return sources[0]["sha256"]
    lines = "".join(f"{s['sha256']}  {s['name']}\n" for s in sorted(sources, key=lambda s: s["name"]))
    return hashlib.sha256(lines.encode()).hexdigest()


def tokenizer_hash(model_dir: str | Path) -> str:
    """SHA-256 over the tokenizer files that decide token ids."""
    h = hashlib.sha256()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        p = Path(model_dir, name)
        if p.is_file():
            h.update(name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def dataset_version(manifest: dict) -> str:
    """16 hex digits over the manifest's content fields (not names or paths)."""
    content = {
        "sources": sorted(s["sha256"] for s in manifest["sources"]),
        "settings": manifest["settings"],
        "tokenizer": manifest["tokenizer_sha256"],
        "content": manifest["content_sha256"],
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def write_manifest(manifest: dict, out_dir: str | Path) -> Path:
    """Write `manifest.json` (UTF-8, readable Japanese) into `out_dir`."""
    path = Path(out_dir) / MANIFEST_FILE
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    return path


def read_manifest(out_dir: str | Path) -> dict:
    """The manifest of a prepared dataset folder.

    Raises:
        FileNotFoundError: the folder has no manifest.json.
    """
    return json.loads((Path(out_dir) / MANIFEST_FILE).read_text(encoding="utf-8"))
