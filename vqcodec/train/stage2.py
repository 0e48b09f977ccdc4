"""Stage 2: train one PixelSNAIL prior per level on the cached codes of stage 1 (see ``extract.py``).

The prior of level i learns p(codes_i | codes_0..i-1) by cross-entropy; its validation NLL in bits
per code on training and validation codes shows overfitting (Table 1 of the paper). The loop,
seeding, resuming and DDP are ``loop.py``'s.
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

from vqcodec.models.config import ModelConfig, level_names
from vqcodec.models.model import build_prior
from vqcodec.train import dist
from vqcodec.train.data import StreamSampler
from vqcodec.train.evaluate import nll_bits, spread_rows
from vqcodec.train.extract import cached_source, extract_codes, load_codes
from vqcodec.train.loop import Schedule, Stage, Validation, train_stage
from vqcodec.train.run import default_device, prior_stage, read_config, resolve_precision


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
    ``val_rows`` the rows of each split that a validation measures.
    """

    config: ModelConfig
    level: int
    codes: dict[str, list[torch.Tensor]]
    val_rows: dict[str, torch.Tensor]
    batch_size: int
    seed: int

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
        return build_prior(self.config, self.level)

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
) -> dict[str, Any]:
    """Train the prior of ``level`` (index or name) of the run in ``run`` for ``steps`` steps in total.

    Extracts (or reuses) the codes first, see ``extract.extract_codes``. ``batch_size`` is the global
    batch of code maps; ``val_size`` caps the code maps of each validation NLL (train and val). The
    other arguments are as for ``stage1.train_vqvae``. Returns the last logged metrics.
    """
    run = Path(run)
    config = read_config(run)
    level = resolve_level(level, config.vqvae.n_levels)

    env = dist.setup(device or default_device())
    precision = resolve_precision(precision, env.device)
    code_files = extract_codes(
        run, data, crops_per_image, crop, env.device, val_data, seed=seed, workers=workers
    )
    codes = {split: load_codes(path)[: level + 1] for split, path in code_files.items()}
    codes_source = cached_source(code_files["train"])
    codes_digest = hashlib.sha256(json.dumps(codes_source, sort_keys=True).encode()).hexdigest()[:16]
    stage = PriorStage(
        env=env,
        precision=precision,
        settings={
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "precision": precision,
            "codes": codes_digest,
        },
        meta={"level": level, "codes_source": codes_source},
        config=config,
        level=level,
        codes=codes,
        val_rows={split: spread_rows(len(split_codes[0]), val_size) for split, split_codes in codes.items()},
        batch_size=batch_size,
        seed=seed,
    )
    return train_stage(stage, run, Schedule(steps, log_every, val_every, ckpt_every), lr, resume)
