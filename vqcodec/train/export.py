"""Export: turn a training run folder into one model file (VQ-VAE + every level's prior)."""

from __future__ import annotations

from pathlib import Path

import torch

from vqcodec.models.model import CodecModel
from vqcodec.train.checkpoint import checkpoint_path, read_model_state
from vqcodec.train.run import prior_stage, read_config, say
from vqcodec.zoo.modelfile import save_model


def export(run: str | Path, out: str | Path, allow_untrained: bool = False, half: bool = False) -> str:
    """Write the model of ``run`` to the model file ``out``; return the file's SHA-256 (hex).

    ``half`` stores the parameters as float16, as the bundled models do.

    Every level needs a trained prior; with ``allow_untrained`` a missing one keeps its (seeded,
    so reproducible) random initialisation, which is only useful for testing the plumbing.
    """
    run = Path(run)
    config = read_config(run)
    n_levels = config.vqvae.n_levels
    vqvae = checkpoint_path(run, "vqvae")
    if not vqvae.exists():
        raise FileNotFoundError(
            f"no stage-1 checkpoint at {vqvae}: train the VQ-VAE first (vqcodec train vqvae)"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CodecModel(config)
    model.vqvae.load_state_dict(read_model_state(vqvae))
    for level, prior in enumerate(model.priors):
        stage = prior_stage(n_levels, level)
        path = checkpoint_path(run, stage)
        if path.exists():
            prior.load_state_dict(read_model_state(path))
        elif allow_untrained:
            say(f"Warning: no trained prior at {path}; exporting an untrained {stage}")
        else:
            raise FileNotFoundError(
                f"no trained prior at {path}: train it (vqcodec train prior --run {run} "
                f"--level {stage.removeprefix('prior-')}) or allow untrained priors"
            )
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    return save_model(model, out, half=half)
