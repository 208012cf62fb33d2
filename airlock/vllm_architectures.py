"""Is a model's architecture one the installed vLLM implements natively?

Read from vLLM's model registry (its table of architecture -> module), without
starting an engine or importing any model code. Importing vLLM takes several
seconds, so the answer is computed once per process.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from airlock.errors import ModelImportRefused


@lru_cache(maxsize=1)
def supported_architectures() -> frozenset[str]:
    """Architecture names (config.json `architectures`) the installed vLLM serves."""
    from vllm.model_executor.models import ModelRegistry

    return frozenset(ModelRegistry.get_supported_archs())


def check_architecture(folder: str | Path, supported: frozenset[str] | None = None) -> list[str]:
    """Check config.json names only architectures vLLM implements.

    Args:
        folder: the model folder.
        supported: the accepted names; vLLM's registry when None.

    Returns:
        The architectures from config.json.

    Raises:
        ModelImportRefused: no config.json, no `architectures`, or one vLLM lacks.
    """
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ModelImportRefused(
            f"{path}: refused: missing (a model needs config.json naming its architecture)."
        )
    archs = json.loads(path.read_text(encoding="utf-8")).get("architectures")
    if not isinstance(archs, list) or not archs or not all(isinstance(a, str) for a in archs):
        raise ModelImportRefused(
            f"{path}: refused: `architectures` must be a non-empty list of names, got {archs!r}."
        )
    supported = supported if supported is not None else supported_architectures()
    unknown = [a for a in archs if a not in supported]
    if unknown:
        raise ModelImportRefused(
            f"{path}: refused: architecture {unknown[0]!r} is not one the "
            "installed vLLM implements natively (models that need their "
            "own code are not imported)."
        )
    return archs
