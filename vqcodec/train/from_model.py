"""A run folder whose stage 1 is a trained model's VQ-VAE: new priors or a refined decoder for the
same codes.

The priors are what decoding spends its time in, so their size is worth changing without training
the VQ-VAE again (which would change every code); the decoder can be refined for the codes as they
are (``decoder.py``). ``run_from_model`` writes ``RUN/config.json`` (the model's configuration with
the given prior settings changed), a stage-1 checkpoint holding the model's VQ-VAE and, for every
level whose prior keeps its configuration, a checkpoint of the model's prior; ``vqcodec train prior``
then trains the new priors, ``vqcodec train decoder`` refines the decoder, and ``vqcodec export``
writes the new model. Each checkpoint keeps the model's input ranges of its part (``input_ranges`` in
its meta), which export keeps for the parts no stage changes: weights that learnt their roundings
(``--quantised``) go with the ranges they learnt on, not with ranges measured again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vqcodec import zoo
from vqcodec.errors import ModelFileError
from vqcodec.exact.quantise import ranges_under
from vqcodec.models.config import ModelConfig, level_names
from vqcodec.train.checkpoint import checkpoint_path, file_sha256, save_checkpoint
from vqcodec.train.run import prior_stage, write_config
from vqcodec.zoo.modelfile import config_from_dict, expected_tensors


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
    changed = set()
    for name, key, value in map(parse_setting, settings):
        if name not in names:
            raise ValueError(f"unknown level {name!r}: this model has {', '.join(names)}")
        data["priors"][names.index(name)][key] = value
        changed.add(names.index(name))
    config = config_from_dict(data)
    try:
        expected_tensors(config)  # settings that build no model are refused before the run exists
    except ModelFileError as e:
        reason = str(e).removeprefix("config does not describe a buildable model: ")
        raise ValueError(f"these settings build no model: {reason}") from e
    write_config(out, config)
    scaler = torch.amp.GradScaler("cpu", False)
    vqvae = loaded.vqvae  # float32 (model files load as float32), and only read here
    meta = {
        "settings": {"crop": 256},
        "data": None,
        "val_data": None,
        "model_sha256": sha256,
        "input_ranges": ranges_under(loaded.input_ranges, "vqvae."),
    }
    vqvae_path = checkpoint_path(out, "vqvae")
    save_checkpoint(vqvae_path, vqvae, torch.optim.Adam(vqvae.parameters()), scaler, 0, meta)
    # the model's own priors are trained on exactly this VQ-VAE's codes
    codes_source = {"vqvae_sha256": file_sha256(vqvae_path), "vqvae_step": 0, "model_sha256": sha256}
    for level, prior in enumerate(loaded.priors):
        if level not in changed:
            path = checkpoint_path(out, prior_stage(len(names), level))
            prior_meta = {
                "settings": {},
                "level": level,
                "codes_source": codes_source,
                "input_ranges": ranges_under(loaded.input_ranges, f"priors.{level}."),
            }
            save_checkpoint(path, prior, torch.optim.Adam(prior.parameters()), scaler, 0, prior_meta)
    return config
