"""Stage 1: train the hierarchical VQ-VAE on random crops (loss = MSE + commitment; EMA codebooks).

The loop, seeding, resuming and DDP are ``loop.py``'s; this module says what stage 1 trains on,
what it minimises and what it logs (codebook perplexity and usage per level).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from vqcodec.models.config import PRESETS, ModelConfig, VQVAEConfig
from vqcodec.models.vqvae import VQVAE, VQVAEOutput
from vqcodec.train import dist
from vqcodec.train.checkpoint import checkpoint_path
from vqcodec.train.data import ImageFolder, StreamSampler
from vqcodec.train.evaluate import psnr_of_mse, reconstruction_mse
from vqcodec.train.loop import Schedule, Stage, Validation, check_resume, train_stage
from vqcodec.train.run import (
    default_device,
    default_workers,
    read_config,
    resolve_precision,
    write_config,
)

STAGE = "vqvae"


@dataclass
class ImageStage(Stage):
    """A stage that learns from random crops of images (stage 1, and 1b in ``decoder.py``): their
    stream of batches, and the reconstruction error on the validation crops."""

    data: ImageFolder
    val_data: ImageFolder | None
    batch_size: int
    seed: int
    workers: int

    def batches(self, start: int, stop: int) -> Iterator[torch.Tensor]:
        env = self.env
        sampler = StreamSampler(
            len(self.data), self.batch_size, self.seed, start, stop, env.rank, env.world_size
        )
        loader = DataLoader(
            self.data, batch_sampler=sampler, num_workers=self.workers, pin_memory=env.device.type == "cuda"
        )
        for x in loader:
            yield x.to(env.device, non_blocking=True)

    def reconstruction(
        self, vqvae: nn.Module, what: str, reconstruct: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> Validation | None:
        """The MSE and PSNR of ``vqvae``'s reconstructions (``reconstruct``'s, if given) of the
        validation crops; None without them. ``what`` names the validation in the log."""
        if self.val_data is None:
            return None
        batch_size = max(1, self.batch_size // self.env.world_size)
        mse = reconstruction_mse(vqvae, self.val_data, batch_size, self.env, self.precision, reconstruct)
        return Validation(
            {"val_mse": mse, "val_psnr": psnr_of_mse(mse)},
            f"{what} mse {mse:.5f}, psnr {psnr_of_mse(mse):.2f} dB",
        )


@dataclass
class VQVAEStage(ImageStage):
    """Stage 1 as the training loop sees it."""

    config: VQVAEConfig

    @property
    def name(self) -> str:
        return STAGE

    @property
    def title(self) -> str:
        return "Stage 1"

    @property
    def seed_parts(self) -> tuple[int | str, ...]:
        return (self.seed,)

    def build(self) -> nn.Module:
        return VQVAE(self.config)

    def forward(self, net: nn.Module, batch: torch.Tensor) -> VQVAEOutput:
        return net(batch)

    def loss(self, output: VQVAEOutput, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mse = F.mse_loss(output.recon.float(), batch)
        loss = mse + output.commitment_loss.float()
        codebook_stats = torch.tensor(output.perplexity + output.usage, device=loss.device)
        return loss, torch.cat([torch.stack([loss.detach(), mse.detach()]), codebook_stats])

    def summarize(self, totals: torch.Tensor, count: int) -> dict[str, Any]:
        means = (totals / count).tolist()
        n_levels = self.config.n_levels
        return {
            "loss": means[0],
            "mse": means[1],
            "psnr": psnr_of_mse(means[1]),
            "perplexity": means[2 : 2 + n_levels],
            "usage": means[2 + n_levels :],
        }

    def progress(self, record: dict[str, Any]) -> str:
        ppl = "/".join(f"{p:.0f}" for p in record["perplexity"])
        return f"loss {record['loss']:.4f} psnr {record['psnr']:.2f} ppl {ppl}"

    def validate(self, model: nn.Module) -> Validation | None:
        return self.reconstruction(model, "validation")


def train_vqvae(
    data: str | Path,
    out: str | Path,
    steps: int,
    batch_size: int = 32,
    crop: int = 256,
    device: str | None = None,
    lr: float = 3e-4,
    config: ModelConfig | str | None = None,
    val_data: str | Path | None = None,
    val_every: int = 1000,
    ckpt_every: int = 1000,
    log_every: int = 10,
    seed: int = 0,
    workers: int | None = None,
    precision: str | None = None,
    resume: bool | None = None,
) -> dict[str, Any]:
    """Train the VQ-VAE of ``config`` (a ModelConfig or a preset name) for ``steps`` steps in total.

    ``config`` None means the run's own (``out/config.json``) when it exists, else the default preset.

    ``batch_size`` is the global batch, split over the processes. ``resume`` None continues from
    ``out/vqvae/checkpoint.safetensors`` when it exists, True requires it, False starts over.
    ``precision`` is fp32, bf16 or fp16 (default: bf16 autocast on CUDA, fp32 on CPU). ``workers``
    are data-loading processes (default: 4 on CUDA, 0 on CPU). Returns the last logged metrics.
    """
    run = Path(out)
    config = resolve_config(run, config)
    dataset, val_set, sources = image_folders(data, val_data, crop, config.vqvae.multiple)

    env = dist.setup(device or default_device())
    precision = resolve_precision(precision, env.device)
    settings = {
        "batch_size": batch_size,
        "crop": crop,
        "lr": lr,
        "seed": seed,
        "precision": precision,
        "images": images_digest(dataset),
    }
    check_resume(checkpoint_path(run, STAGE), settings, resume)  # a refused start leaves no config.json
    write_config(run, config)
    dist.barrier()

    stage = VQVAEStage(
        env=env,
        precision=precision,
        settings=settings,
        meta=sources,
        config=config.vqvae,
        data=dataset,
        val_data=val_set,
        batch_size=batch_size,
        seed=seed,
        workers=default_workers(env.device) if workers is None else workers,
    )
    return train_stage(stage, run, Schedule(steps, log_every, val_every, ckpt_every), lr, resume)


def image_folders(
    data: str | Path, val_data: str | Path | None, crop: int, multiple: int
) -> tuple[ImageFolder, ImageFolder | None, dict[str, str | None]]:
    """The random training crops and the validation centre crops of a stage that learns from images,
    and the folders as its checkpoint records them. ``crop`` must be a multiple of the model's
    ``multiple``."""
    if crop % multiple:
        raise ValueError(f"crop {crop} must be a multiple of {multiple} for this model")
    val_set = ImageFolder(val_data, crop, train=False) if val_data is not None else None
    sources = {
        "data": str(Path(data).resolve()),
        "val_data": str(Path(val_data).resolve()) if val_data is not None else None,
    }
    return ImageFolder(data, crop), val_set, sources


def images_digest(dataset: ImageFolder) -> str:
    """Identifies the training images by their names under the folder and their sizes, wherever the
    folder lies: a run resumes only on the images it has seen so far (a setting of its stages)."""
    root = Path(dataset.root)
    lines = "".join(f"{path.relative_to(root).as_posix()}\t{path.stat().st_size}\n" for path in dataset.paths)
    return hashlib.sha256(lines.encode()).hexdigest()[:16]


def resolve_config(run: Path, config: ModelConfig | str | None) -> ModelConfig:
    """The ModelConfig a stage-1 run trains: the one given, else the run's own, else the default preset."""
    if config is None:
        config = read_config(run) if (run / "config.json").exists() else "default"
    if isinstance(config, str):
        if config not in PRESETS:
            raise ValueError(f"unknown preset {config!r}; choose one of {', '.join(PRESETS)}")
        config = PRESETS[config]()
    return config
