"""Which files may enter the closed network as part of a model.

Only data formats that no loader executes are accepted: safetensors weights,
JSON configs, tokenizer vocabularies, text and Jinja templates. Pickle formats
(.bin .pt .pth .pkl .ckpt) run code when loaded, `*.py` and `auto_map` /
`trust_remote_code` in a config make transformers or vLLM import code from the
model folder; all of them are refused, as is anything not on the list.

A folder made by `hf download --local-dir` also holds the download's own
metadata (`.cache/huggingface/`, left out) and documents (README, LICENSE,
`.gitattributes`: kept with the import's run, never in the store); the user
leaves out more with `exclude` globs (e.g. `original/*`, Llama's pickled
checkpoint beside the safetensors).
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path

from airlock.errors import ModelImportRefused
from experiments.registry import PICKLE_SUFFIXES

ACCEPTED_SUFFIXES = {".safetensors", ".json", ".txt", ".model", ".jinja", ".tiktoken", ""}
DOWNLOAD_METADATA = ".cache/huggingface/"
DOCUMENTS = ("README*", "LICENSE*", "LICENCE*", "NOTICE*", "USE_POLICY*", "*.md", ".gitattributes")
CODE_SUFFIXES = {".py", ".pyc", ".so", ".dll", ".dylib", ".exe", ".sh", ".ipynb"}
# Keys that make a loader fetch or import code named by the model itself.
REMOTE_CODE_KEYS = {"auto_map", "trust_remote_code", "custom_pipelines"}
MAGIC = {b"PK\x03\x04": "a zip archive (the torch.save format)", b"\x93NUM": "a NumPy array"}
MAX_JSON_BYTES = 512 * 1024 * 1024


def _refuse(path: Path, reason: str) -> ModelImportRefused:
    return ModelImportRefused(f"{path}: refused: {reason}.")


@dataclass
class FolderFiles:
    """A model folder sorted out: what enters the store, the documents kept with the
    import's run, and what was left out (relative path -> why)."""

    files: list[Path] = field(default_factory=list)
    documents: list[Path] = field(default_factory=list)
    left_out: dict[str, str] = field(default_factory=dict)


def select_files(folder: str | Path, exclude: tuple[str, ...] | list[str] = ()) -> FolderFiles:
    """Sort every file under `folder` by the name policy; model files are sorted as
    `registry.dir_sha256` sorts them.

    Args:
        exclude: globs on the path relative to `folder` (`original/*`) to leave out.

    Raises:
        ModelImportRefused: naming every refused file (a symlink, a pickle or code
            file, a type not accepted) and why, or a folder with no model files.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ModelImportRefused(f"{root}: refused: not a folder.")
    out, refused = FolderFiles(), []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if rel.startswith(DOWNLOAD_METADATA) or rel + "/" == DOWNLOAD_METADATA:
            out.left_out.setdefault(DOWNLOAD_METADATA, "the download's own metadata (hf download)")
            continue
        glob = next((g for g in exclude if fnmatch.fnmatchcase(rel, g)), None)
        if glob is not None:
            out.left_out[rel] = f"--exclude {glob}"
            continue
        if p.is_dir() and not p.is_symlink():
            continue
        if p.is_file() and not p.is_symlink() and any(fnmatch.fnmatch(p.name, d) for d in DOCUMENTS):
            out.documents.append(p)
            continue
        reason = _name_problem(p)
        if reason:
            refused.append(f"{p}: refused: {reason}")
        else:
            out.files.append(p)
    if refused:
        raise ModelImportRefused(
            f"{root}: {len(refused)} file(s) may not enter the store:\n  "
            + "\n  ".join(refused)
            + _exclude_hint(root, refused)
        )
    if not out.files:
        raise ModelImportRefused(f"{root}: refused: the folder holds no model files.")
    return out


def _name_problem(p: Path) -> str | None:
    """Why a file may not enter the store by its kind and name, or None."""
    if p.is_symlink():
        return "symbolic links are not imported (the store keeps real files only)"
    if not p.is_file():
        return "not a regular file (a pipe, socket or device)"
    suffix = p.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        return (
            f"{suffix} is a pickle format, which runs code when loaded; convert the weights to "
            "safetensors before import"
        )
    if suffix in CODE_SUFFIXES:
        return (
            f"{suffix} files are code; models that need their own code (trust_remote_code) are not imported"
        )
    if suffix not in ACCEPTED_SUFFIXES:
        return (
            f"{suffix} is not an accepted model file type "
            f"(accepted: {', '.join(sorted(s for s in ACCEPTED_SUFFIXES if s))})"
        )
    return None


def _exclude_hint(root: Path, refused: list[str]) -> str:
    """`--exclude 'DIR/*'` when every refused file lies in one subfolder."""
    tops = {Path(line.split(": ", 1)[0]).relative_to(root).parts[0] for line in refused}
    paths = [Path(line.split(": ", 1)[0]).relative_to(root) for line in refused]
    if len(tops) == 1 and all(len(rel.parts) > 1 for rel in paths):
        return f"\nThey are all under {tops.pop()}/: leave them out with --exclude '{paths[0].parts[0]}/*'."
    return ""


def model_files(folder: str | Path) -> list[Path]:
    """The files of `folder` that enter the store (see `select_files`)."""
    return select_files(folder).files


def _walk(value, path: Path, where: str) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            if key in REMOTE_CODE_KEYS and inner not in (False, None, {}, []):
                raise _refuse(
                    path,
                    f"{where}{key} asks for remote code (a loader would import "
                    f"{inner!r} from the model folder or the hub)",
                )
            _walk(inner, path, f"{where}{key}.")
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            _walk(inner, path, f"{where}{i}.")


def check_file_content(path: Path) -> None:
    """Content rules for one accepted file: JSON parses and asks for no remote code;
    no file is a pickle, zip or NumPy archive under another name.

    Raises:
        ModelImportRefused: naming the file and the reason.
    """
    if path.suffix.lower() == ".safetensors":
        return  # its first 8 bytes are a length; safetensors_check reads the rest
    with path.open("rb") as fh:
        head = fh.read(4)
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise _refuse(path, "the content is a pickle stream under another name")
    for magic, what in MAGIC.items():
        if head.startswith(magic):
            raise _refuse(path, f"the content is {what} under another name")
    if path.suffix.lower() != ".json":
        return
    if path.stat().st_size > MAX_JSON_BYTES:
        raise _refuse(path, f"JSON file larger than {MAX_JSON_BYTES} bytes")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _refuse(path, f"not valid JSON ({type(exc).__name__}: {exc})") from None
    if path.name == "vocab.json":
        return  # its keys are tokens (one may be spelt "auto_map"), not settings
    if path.name == "tokenizer.json" and isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in ("model", "added_tokens")}
    _walk(data, path, "")
