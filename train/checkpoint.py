"""Resumable training state on disk, without pickle: trainable weights, optimizer
state and RNG state as safetensors, everything else (step, data position, attempt,
param groups) as JSON. Shared by the recipes; the adapter or merged weights a job
exports are written separately by each recipe's `save`.

Layout of a checkpoint folder:

    trainable.safetensors   parameters with requires_grad, by name
    optimizer.safetensors   optimizer state tensors, keyed "<param index>.<name>"
    rng.safetensors         torch CPU RNG state of each rank that wrote one
    trainer_state.json      step, data position, attempt, param groups, fingerprint
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STATE_FILE = "trainer_state.json"


def save_state(folder: str | Path, model, optimizer, state: dict[str, Any], rank: int = 0) -> Path:
    """Write `model`'s trainable parameters, `optimizer`'s state and `state` to `folder`."""
    import torch
    from safetensors.torch import save_file

    out = save_rng(folder, rank)
    if rank != 0:
        return out
    trainable = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(trainable, str(out / "trainable.safetensors"))
    opt = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, per_param in opt["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value.detach().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    save_file(tensors, str(out / "optimizer.safetensors"))
    (out / STATE_FILE).write_text(
        json.dumps(
            {**state, "optimizer": {"param_groups": opt["param_groups"], "scalars": scalars}}, indent=1
        )
    )
    return out


def load_state(folder: str | Path, model, optimizer, rank: int = 0) -> dict[str, Any]:
    """Restore what `save_state` wrote into `model` and `optimizer`; returns the JSON state.

    Raises:
        ValueError: the checkpoint's trainable parameters don't match the model's.
    """
    from safetensors.torch import load_file

    src = Path(folder)
    state = json.loads((src / STATE_FILE).read_text())
    trainable = load_file(str(src / "trainable.safetensors"))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(trainable):
        missing, extra = sorted(set(params) - set(trainable)), sorted(set(trainable) - set(params))
        raise ValueError(
            f"checkpoint {src} does not match the model (missing {missing[:3]}, unexpected {extra[:3]})"
        )
    import torch

    with torch.no_grad():
        for name, p in params.items():
            p.copy_(trainable[name])
    flat = load_file(str(src / "optimizer.safetensors"))
    per_param: dict[int, dict[str, Any]] = {}
    for key, value in list(flat.items()) + list(state["optimizer"]["scalars"].items()):
        idx, name = key.split(".", 1)
        per_param.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": per_param, "param_groups": state["optimizer"]["param_groups"]})
    load_rng(src, rank)
    return state


def save_rng(folder: str | Path, rank: int) -> Path:
    """Write this rank's torch CPU RNG state to `folder` (created if missing); returns it."""
    import torch
    from safetensors.torch import save_file

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    save_file({"cpu": torch.get_rng_state()}, str(out / f"rng-rank{rank}.safetensors"))
    return out


def load_rng(folder: str | Path, rank: int) -> None:
    """Restore this rank's RNG state from `folder`, if `save_rng` wrote one for it."""
    import torch
    from safetensors.torch import load_file

    rng = Path(folder) / f"rng-rank{rank}.safetensors"
    if rng.is_file():
        torch.set_rng_state(load_file(str(rng))["cpu"])


def read_state(folder: str | Path) -> dict[str, Any]:
    """The JSON part of a checkpoint (step, attempt, fingerprint, ...)."""
    return json.loads((Path(folder) / STATE_FILE).read_text())
