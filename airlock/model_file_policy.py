"""Which files may enter the closed network as part of a model.

Only data formats that no loader executes are accepted: safetensors weights,
JSON configs, tokenizer vocabularies, text and Jinja templates. Pickle formats
(.bin .pt .pth .pkl .ckpt) run code when loaded, `*.py` and `auto_map` /
`trust_remote_code` in a config make transformers or vLLM import code from the
model folder; all of them are refused, as is anything not on the list.
"""

from __future__ import annotations

import json
from pathlib import Path

from airlock.errors import ModelImportRefused
from experiments.registry import PICKLE_SUFFIXES

ACCEPTED_SUFFIXES = {".safetensors", ".json", ".txt", ".model", ".jinja", ".md", ".tiktoken", ""}
CODE_SUFFIXES = {".py", ".pyc", ".so", ".dll", ".dylib", ".exe", ".sh", ".ipynb"}
# Keys that make a loader fetch or import code named by the model itself.
REMOTE_CODE_KEYS = {"auto_map", "trust_remote_code", "custom_pipelines"}
MAGIC = {b"PK\x03\x04": "a zip archive (the torch.save format)", b"\x93NUM": "a NumPy array"}
MAX_JSON_BYTES = 512 * 1024 * 1024


def _refuse(path: Path, reason: str) -> ModelImportRefused:
    return ModelImportRefused(f"{path}: refused: {reason}.")


def model_files(folder: str | Path) -> list[Path]:
    """Every file under `folder`, sorted as `registry.dir_sha256` sorts them, after
    the name policy.

    Raises:
        ModelImportRefused: a symlink, a pickle or code file, or a type not accepted.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ModelImportRefused(f"{root}: refused: not a folder.")
    files = []
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            raise _refuse(p, "symbolic links are not imported (the store keeps real files only)")
        if p.is_dir():
            continue
        if not p.is_file():
            raise _refuse(p, "not a regular file (a pipe, socket or device)")
        suffix = p.suffix.lower()
        if suffix in PICKLE_SUFFIXES:
            raise _refuse(p, f"{suffix} is a pickle format, which runs code when loaded; "
                             "convert the weights to safetensors before import")
        if suffix in CODE_SUFFIXES:
            raise _refuse(p, f"{suffix} files are code; models that need their own code "
                             "(trust_remote_code) are not imported")
        if suffix not in ACCEPTED_SUFFIXES:
            raise _refuse(p, f"{suffix} is not an accepted model file type "
                             f"(accepted: {', '.join(sorted(s for s in ACCEPTED_SUFFIXES if s))})")
        files.append(p)
    if not files:
        raise ModelImportRefused(f"{root}: refused: the folder holds no files.")
    return files


def _walk(value, path: Path, where: str) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            if key in REMOTE_CODE_KEYS and inner not in (False, None, {}, []):
                raise _refuse(path, f"{where}{key} asks for remote code (a loader would import "
                                    f"{inner!r} from the model folder or the hub)")
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
