"""Training checkpoints as safetensors files: resumable, and never unpickled.

``RUN/<stage>/checkpoint.safetensors`` holds

* tensors ``model/<name>``: the state dict of the module the stage trains;
* tensors ``optim/<param index>/<name>``: the optimizer's per-parameter state (Adam's moments and
  step counters);
* metadata ``format`` = "vqcodec-checkpoint", ``version`` = "1" and ``state``: JSON with the step,
  the optimizer's param groups (hyperparameters) and non-tensor per-parameter state, the gradient
  scaler's state and the stage's own ``meta`` (training arguments and the like).

No RNG state is stored: the training loop (``loop.py``) reseeds every step from (seed, step, rank),
and the data stream is a function of (seed, step) (see ``data.StreamSampler``), so the step is all a
resumed run needs to continue exactly like an uninterrupted one, on every rank.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from vqcodec.zoo.modelfile import atomic_path

FORMAT = "vqcodec-checkpoint"
VERSION = "1"
FILENAME = "checkpoint.safetensors"


def checkpoint_path(run: str | Path, stage: str) -> Path:
    """Where the checkpoint of ``stage`` ("vqvae", "prior-top", ...) of a run lives."""
    return Path(run) / stage / FILENAME


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    step: int,
    meta: dict[str, Any],
) -> None:
    """Write a checkpoint atomically (a crash while writing leaves the previous one intact)."""
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    optim = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, state in optim["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{index}/{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    state = {
        "step": step,
        "param_groups": optim["param_groups"],
        "optim_scalars": scalars,
        "scaler": scaler.state_dict(),
        "meta": meta,
    }
    metadata = {"format": FORMAT, "version": VERSION, "state": json.dumps(state)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        safetensors.torch.save_file(tensors, tmp, metadata=metadata)


def file_sha256(path: str | Path) -> str:
    """The SHA-256 (hex) of a checkpoint file: which VQ-VAE a prior's codes came from."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_state(path: str | Path) -> dict[str, Any]:
    """The JSON state of a checkpoint (step, meta, ...) without loading its tensors."""
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
    except SafetensorError as e:
        raise ValueError(f"{path} is not a readable checkpoint: {e}") from e
    if metadata.get("format") != FORMAT or metadata.get("version") != VERSION:
        raise ValueError(f"{path} is not a vqcodec checkpoint (version {VERSION})")
    return json.loads(metadata["state"])


def learnt_roundings(state: dict[str, Any] | None) -> bool:
    """Whether a checkpoint's (``read_state``) weights learnt the integer engine's roundings."""
    return state is not None and state["meta"]["settings"].get("quantised", False)


def refuse_float_resume(path: Path, state: dict[str, Any] | None) -> None:
    """A run without ``--quantised`` must not resume weights that learnt the roundings: float training
    would unlearn them while the checkpoint still claims them."""
    if learnt_roundings(state):
        raise ValueError(f"{path} learnt through the integer roundings: resume it with --quantised")


def _model_part(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("model/"): v for k, v in tensors.items() if k.startswith("model/")}


def read_model_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of the trained module alone (for export and code extraction)."""
    read_state(path)
    return _model_part(safetensors.torch.load_file(path))


def load_weights(module: nn.Module, weights: dict[str, torch.Tensor], path: str | Path) -> None:
    """``module.load_state_dict(weights)``, the weights of the checkpoint at ``path``: ValueError when
    they do not fit it (a checkpoint of another stage or configuration), not torch's RuntimeError."""
    try:
        module.load_state_dict(weights)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise ValueError(f"{path} does not fit the run's configuration: {first}") from e


def load_checkpoint(
    path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler
) -> dict[str, Any]:
    """Restore model, optimizer and scaler in place from ``path``; return the JSON state (step, meta)."""
    state = read_state(path)
    tensors = safetensors.torch.load_file(path)
    load_weights(model, _model_part(tensors), path)
    per_param: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, index, name = key.split("/", 2)
            per_param.setdefault(int(index), {})[name] = value
    for index, scalars in state["optim_scalars"].items():
        per_param.setdefault(int(index), {}).update(scalars)
    optimizer.load_state_dict({"state": per_param, "param_groups": state["param_groups"]})
    scaler.load_state_dict(state["scaler"])
    return state
