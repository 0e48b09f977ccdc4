"""Stage 2: train one PixelSNAIL prior per level on the cached codes of stage 1 (see ``extract.py``).

The prior of level i learns p(codes_i | codes_0..i-1) by cross-entropy; its validation NLL in bits
per code on training and validation codes shows overfitting (Table 1 of the paper). The loop,
seeding, resuming and DDP are ``loop.py``'s.

With ``quantised`` a trained prior (or a model's own, from ``train from-model``) is fine-tuned through
the integer prior's roundings (``fake_quant``), its learning rate decaying along a cosine as a
refinement's does: on the inputs' ranges of the model file it came from, else measured once, at the
start, as ``export`` measures them; kept in the checkpoint and exported as they are.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vqcodec.exact.calibrate import prior_ranges
from vqcodec.models.config import ModelConfig, level_names
from vqcodec.models.model import build_prior
from vqcodec.models.vqvae import VQVAE
from vqcodec.train import dist
from vqcodec.train.checkpoint import (
    checkpoint_path,
    learnt_roundings,
    load_weights,
    read_model_state,
    read_state,
    refuse_float_resume,
)
from vqcodec.train.data import CALIBRATION_IMAGES, StreamSampler, calibration_images
from vqcodec.train.evaluate import nll_bits, spread_rows
from vqcodec.train.extract import code_sources, extract_codes, load_codes
from vqcodec.train.fake_quant import with_roundings
from vqcodec.train.loop import Schedule, Stage, Validation, check_resume, train_stage
from vqcodec.train.run import default_device, prior_stage, read_config, resolve_precision

CODES_HINT = "other codes: --data, --crop, --crops-per-image, --seed or the VQ-VAE changed"
"""What changes the digest of the codes a prior trains on, for a refused resume's message."""


def resolve_level(level: int | str, n_levels: int) -> int:
    """A level index (0 = top) from an index or a name ("top", "middle", "bottom", "level2")."""
    names = level_names(n_levels)
    if isinstance(level, str) and level in names:
        return names.index(level)
    if (isinstance(level, int) or level.isdigit()) and 0 <= int(level) < n_levels:
        return int(level)
    raise ValueError(
        f"unknown level {level!r}: this model has levels {', '.join(names)} (or 0..{n_levels - 1})"
    )


@dataclass
class PriorStage(Stage):
    """Stage 2 for one level as the training loop sees it.

    ``codes`` holds each split's code maps of the levels up to this one (the last is the target);
    ``val_rows`` the rows of each split that a validation measures; a fine-tune through the roundings
    starts from the weights ``initial`` with the inputs' ``ranges``.
    """

    config: ModelConfig
    level: int
    codes: dict[str, list[torch.Tensor]]
    val_rows: dict[str, torch.Tensor]
    batch_size: int
    seed: int
    initial: dict[str, torch.Tensor] | None = None
    ranges: dict[str, int] | None = None

    @property
    def name(self) -> str:
        return prior_stage(self.config.vqvae.n_levels, self.level)

    @property
    def title(self) -> str:
        return f"Prior {level_names(self.config.vqvae.n_levels)[self.level]}"

    @property
    def seed_parts(self) -> tuple[int | str, ...]:
        return (self.seed, self.name)

    def build(self) -> nn.Module:
        prior = build_prior(self.config, self.level)
        if self.initial is not None:
            prior.load_state_dict(self.initial)
        return prior if self.ranges is None else with_roundings(prior, self.ranges)

    def lr_factor(self, step: int, steps: int) -> float:
        if self.ranges is None:
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * step / steps))  # a fine-tune ends at rest

    def batches(self, start: int, stop: int) -> Iterator[list[torch.Tensor]]:
        env, train_codes = self.env, self.codes["train"]
        sampler = StreamSampler(
            len(train_codes[0]), self.batch_size, self.seed, start, stop, env.rank, env.world_size
        )
        for step in range(start, stop):
            rows = torch.tensor([index for index, _ in sampler.batch(step)])
            yield [c[rows].to(env.device, non_blocking=True).long() for c in train_codes]

    def forward(self, net: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
        *cond, target = batch
        return net(target, cond_codes=cond)

    def loss(self, output: torch.Tensor, batch: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        loss = F.cross_entropy(output.float(), batch[-1])
        return loss, loss.detach().reshape(1)

    def summarize(self, totals: torch.Tensor, count: int) -> dict[str, Any]:
        mean = totals.item() / count
        return {"loss": mean, "bits": mean / math.log(2)}

    def progress(self, record: dict[str, Any]) -> str:
        return f"{record['bits']:.3f} bits/code"

    def validate(self, model: nn.Module) -> Validation:
        batch_size = self.batch_size // self.env.world_size
        bits = {
            f"{split}_bits": nll_bits(
                model, codes, self.val_rows[split], batch_size, self.env, self.precision
            )
            for split, codes in self.codes.items()
        }
        return Validation(bits, "NLL " + ", ".join(f"{k} {v:.4f}" for k, v in bits.items()) + " bits/code")


def train_prior(
    run: str | Path,
    level: int | str,
    steps: int,
    batch_size: int = 32,
    device: str | None = None,
    lr: float = 3e-4,
    data: str | Path | None = None,
    val_data: str | Path | None = None,
    crops_per_image: int | None = None,
    crop: int | None = None,
    val_every: int = 1000,
    val_size: int = 512,
    ckpt_every: int = 1000,
    log_every: int = 10,
    seed: int = 0,
    workers: int | None = None,
    precision: str | None = None,
    resume: bool | None = None,
    quantised: bool = False,
) -> dict[str, Any]:
    """Train the prior of ``level`` (index or name) of the run in ``run`` for ``steps`` steps in total.

    Extracts (or reuses) the codes first, see ``extract.extract_codes``. ``batch_size`` is the global
    batch of code maps; ``val_size`` caps the code maps of each validation NLL (train and val). With
    ``quantised`` the run's prior is fine-tuned through the integer roundings (module docstring) and its
    checkpoint replaced. The other arguments are as for ``stage1.train_vqvae``. Returns the last
    logged metrics.
    """
    run = Path(run)
    config = read_config(run)
    level = resolve_level(level, config.vqvae.n_levels)

    env = dist.setup(device or default_device())
    precision = resolve_precision(precision, env.device)
    codes_source = code_sources(run, data, crops_per_image, crop, val_data, seed)["train"]
    path = checkpoint_path(run, prior_stage(config.vqvae.n_levels, level))
    initial, ranges, resume = _fine_tune(path, quantised, resume)
    settings = {
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "precision": precision,
        "codes": hashlib.sha256(json.dumps(codes_source, sort_keys=True).encode()).hexdigest()[:16],
        # a fine-tune's learning rate follows a cosine over its steps
        **({"quantised": True, "steps": steps} if quantised else {}),
    }
    check_resume(path, settings, resume, {"codes": CODES_HINT})  # before extracting codes, minutes long
    code_files = extract_codes(
        run, data, crops_per_image, crop, env.device, val_data, seed=seed, workers=workers
    )
    codes = {split: load_codes(path)[: level + 1] for split, path in code_files.items()}
    if initial is not None and ranges is None:  # as export measures them, on the codes' training images
        ranges = _prior_ranges(run, config, level, initial, data or codes_source["data"])
    stage = PriorStage(
        env=env,
        precision=precision,
        settings=settings,
        meta={"level": level, "codes_source": codes_source, **({"input_ranges": ranges} if ranges else {})},
        config=config,
        level=level,
        codes=codes,
        val_rows={split: spread_rows(len(split_codes[0]), val_size) for split, split_codes in codes.items()},
        batch_size=batch_size,
        seed=seed,
        initial=initial,
        ranges=ranges,
    )
    return train_stage(stage, run, Schedule(steps, log_every, val_every, ckpt_every), lr, resume)


def _fine_tune(
    path: Path, quantised: bool, resume: bool | None
) -> tuple[dict[str, torch.Tensor] | None, dict[str, int] | None, bool | None]:
    """Where a prior's training starts: ``(initial weights, ranges, resume)``. A fine-tune through the
    roundings resumes its own checkpoint, else starts anew from the prior in ``path`` with the ranges
    its checkpoint names (a model file's, from ``train from-model``; None: to be measured); a plain
    run never resumes a fine-tune's checkpoint, whose weights learnt the roundings."""
    state = read_state(path) if path.exists() else None
    if not quantised:
        if resume is not False:
            refuse_float_resume(path, state)
            if state is not None and not state["meta"]["settings"]:  # train from-model's copy
                raise ValueError(
                    f"{path} is the prior of the model the run came from, not a run to resume: fine-tune it"
                    " (--quantised) or train a new one (--no-resume)"
                )
        return None, None, resume
    if learnt_roundings(state) and resume is not False:
        return None, state["meta"]["input_ranges"], resume
    if state is None:
        raise FileNotFoundError(
            f"no prior at {path} to fine-tune through the roundings: train it first, or make the run"
            " from a model file (vqcodec train from-model)"
        )
    return read_model_state(path), state["meta"].get("input_ranges"), False


def _prior_ranges(
    run: Path, config: ModelConfig, level: int, weights: dict[str, torch.Tensor], data: str | Path
) -> dict[str, int]:
    """The input ranges of the prior with ``weights`` on the codes of the first images of ``data``, as
    ``export`` measures them (``exact.calibrate``)."""
    vqvae = VQVAE(config.vqvae)
    source = checkpoint_path(run, "vqvae")
    load_weights(vqvae, read_model_state(source), source)
    prior = build_prior(config, level)
    prior.load_state_dict(weights)
    with torch.no_grad():
        codes = [
            vqvae.eval().encode(image)
            for image in calibration_images(data, CALIBRATION_IMAGES, config.vqvae.multiple)
        ]
    return prior_ranges(prior.eval(), [(maps[level], maps[:level]) for maps in codes])
