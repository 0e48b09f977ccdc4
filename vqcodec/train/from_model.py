"""A run folder whose stage 1 is a trained model's VQ-VAE: new priors for the same codes.

The priors are what decoding spends its time in, so their size is worth changing without training
the VQ-VAE again (which would change every code). ``run_from_model`` writes ``RUN/config.json``
(the model's configuration with the given prior settings changed) and a stage-1 checkpoint holding
the model's VQ-VAE; ``vqcodec train prior --run RUN --data ... --val ...`` then trains the priors
and ``vqcodec export`` writes the new model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vqcodec import zoo
from vqcodec.models.config import ModelConfig, level_names
from vqcodec.train.checkpoint import checkpoint_path, save_checkpoint
from vqcodec.train.run import write_config
from vqcodec.zoo.modelfile import config_from_dict


def parse_setting(text: str) -> tuple[str, str, Any]:
    """``LEVEL.KEY=VALUE`` (VALUE as JSON, else as a string) -> (level, key, value)."""
    target, sep, value = text.partition("=")
    level, dot, key = target.partition(".")
    if not (sep and dot and level and key):
        raise ValueError(f"expected LEVEL.KEY=VALUE (e.g. top.channels=64), got {text!r}")
    try:
        return level, key, json.loads(value)
    except json.JSONDecodeError:
        return level, key, value


def run_from_model(model: str | Path | None, out: str | Path, settings: list[str]) -> ModelConfig:
    """Make the run folder ``out`` from ``model`` (a bundled name or file; None: the default), with
    each ``LEVEL.KEY=VALUE`` of ``settings`` changing that level's prior configuration."""
    out = Path(out)
    if (out / "config.json").exists():
        raise FileExistsError(f"{out} already holds a run: choose a new folder")
    path = zoo.resolve_model(model)
    loaded, sha256 = zoo.load_cached(path, torch.device("cpu"))
    data = json.loads(loaded.config.to_json())  # plain lists and dicts, as a config file has them
    names = level_names(loaded.config.vqvae.n_levels)
    for level, key, value in map(parse_setting, settings):
        if level not in names:
            raise ValueError(f"unknown level {level!r}: this model has {', '.join(names)}")
        data["priors"][names.index(level)][key] = value
    config = config_from_dict(data)
    write_config(out, config)
    vqvae = loaded.vqvae  # float32 (model files load as float32), and only read here
    meta = {"settings": {"crop": 256}, "data": None, "val_data": None, "model_sha256": sha256}
    optimizer = torch.optim.Adam(vqvae.parameters())
    save_checkpoint(
        checkpoint_path(out, "vqvae"), vqvae, optimizer, torch.amp.GradScaler("cpu", False), 0, meta
    )
    return config
