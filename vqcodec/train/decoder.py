"""Stage 1b: refine the VQ-VAE's decoder for the codes its frozen encoder already gives.

Stage 1 trains encoder, codebooks and decoder together, so its decoder learnt to draw images from
codes that kept moving. With the encoder and the codebooks frozen, every code stays as it was and
the priors stay valid (they are trained on those codes), but the decoder (upsamplers and decoder)
can be trained further on the final codes alone: PSNR rises at no cost in bits. The decoder is
small, so this stage also runs on a CPU. ``export`` takes the refined decoder from
``RUN/decoder/checkpoint.safetensors`` when it exists.

With ``quantised`` the decoder learns through the integer decoder's roundings (``fake_quant``) on the
inputs' ranges of the model file the run came from (``train from-model``), else measured once, at the
start, as ``export`` measures them; they are kept in the checkpoint and exported as they are, so that
the file's integer layers round on the grid the weights learnt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vqcodec.exact.calibrate import decoder_ranges
from vqcodec.models.vqvae import VQVAE
from vqcodec.train import dist
from vqcodec.train.checkpoint import (
    checkpoint_path,
    file_sha256,
    learnt_roundings,
    load_weights,
    read_model_state,
    read_state,
    refuse_float_resume,
)
from vqcodec.train.data import CALIBRATION_IMAGES, calibration_images
from vqcodec.train.evaluate import psnr_of_mse
from vqcodec.train.fake_quant import quantised_forward
from vqcodec.train.loop import Schedule, Validation, train_stage
from vqcodec.train.run import default_device, default_workers, read_config, resolve_precision
from vqcodec.train.stage1 import ImageStage, image_folders, images_digest

STAGE = "decoder"
DECODER_PARTS = ("upsamplers", "decoder")
"""The VQ-VAE's modules that turn codewords into pixels: all this stage trains."""


class DecoderHalf(nn.Module):
    """The VQ-VAE's upsamplers and decoder, shared with it (state-dict names as in ``VQVAE``); given
    ``ranges`` (their inputs', by module name in ``VQVAE``), through the integer decoder's roundings."""

    def __init__(self, vqvae: VQVAE, ranges: dict[str, int] | None = None) -> None:
        super().__init__()
        self.upsamplers = vqvae.upsamplers
        self.decoder = vqvae.decoder
        self.ranges = ranges

    def forward(self, quantized: list[torch.Tensor]) -> torch.Tensor:
        if self.ranges is None:
            upsampled = [up(q) for up, q in zip(self.upsamplers, quantized, strict=True)]
            return self.decoder(torch.cat(upsampled, 1))
        upsampled = [
            quantised_forward(up, q, self.ranges, f"upsamplers.{level}.")
            for level, (up, q) in enumerate(zip(self.upsamplers, quantized, strict=True))
        ]
        return quantised_forward(self.decoder.net, torch.cat(upsampled, 1), self.ranges, "decoder.net.")


@dataclass
class DecoderStage(ImageStage):
    """Stage 1b as the training loop sees it: stage 1's data, a frozen encoder, MSE of the decoder."""

    vqvae: VQVAE
    ranges: dict[str, int] | None = None  # the decoder's input ranges when it learns through roundings

    @property
    def name(self) -> str:
        return STAGE

    @property
    def title(self) -> str:
        return "Stage 1b (decoder)"

    @property
    def seed_parts(self) -> tuple[int | str, ...]:
        return (self.seed, STAGE)

    def build(self) -> nn.Module:
        return DecoderHalf(self.vqvae, self.ranges)

    def lr_factor(self, step: int, steps: int) -> float:
        # a cosine decay to zero: a refinement should end at rest, not at its learning rate's noise
        return 0.5 * (1.0 + math.cos(math.pi * step / steps))

    def forward(self, net: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            quantized = [out.quantized for out in self.vqvae.quantize(batch, update=False)]
        return net(quantized)

    def loss(self, output: torch.Tensor, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mse = F.mse_loss(output.float(), batch)
        return mse, mse.detach().reshape(1)

    def summarize(self, totals: torch.Tensor, count: int) -> dict[str, Any]:
        mse = totals.item() / count
        return {"mse": mse, "psnr": psnr_of_mse(mse)}

    def progress(self, record: dict[str, Any]) -> str:
        return f"psnr {record['psnr']:.2f}"

    def validate(self, model: nn.Module) -> Validation | None:
        if self.ranges is None:
            return self.reconstruction(self.vqvae, "validation")
        return self.reconstruction(
            self.vqvae, "validation (integer roundings)", lambda x: self.forward(model, x)
        )


def train_decoder(
    run: str | Path,
    data: str | Path,
    steps: int,
    batch_size: int = 8,
    crop: int = 128,
    device: str | None = None,
    lr: float = 1e-4,
    val_data: str | Path | None = None,
    val_every: int = 1000,
    ckpt_every: int = 1000,
    log_every: int = 10,
    seed: int = 0,
    workers: int | None = None,
    precision: str | None = None,
    resume: bool | None = None,
    quantised: bool = False,
) -> dict[str, Any]:
    """Refine the decoder of the run in ``run`` (after stage 1) for ``steps`` steps in total.

    The learning rate decays from ``lr`` to zero along a cosine. With ``quantised`` the decoder trains
    through the integer decoder's roundings, its inputs' ranges measured on the first images of
    ``data`` (module docstring). The other arguments are as for ``stage1.train_vqvae``. Returns the
    last logged metrics.
    """
    run = Path(run)
    config = read_config(run).vqvae
    dataset, val_set, sources = image_folders(data, val_data, crop, config.multiple)
    source = checkpoint_path(run, "vqvae")
    if not source.exists():
        raise FileNotFoundError(f"no stage-1 checkpoint at {source}: train the VQ-VAE first")
    env = dist.setup(device or default_device())
    precision = resolve_precision(precision, env.device)
    vqvae = VQVAE(config)
    load_weights(vqvae, read_model_state(source), source)
    vqvae.requires_grad_(False).eval().to(env.device)
    for name in DECODER_PARTS:
        getattr(vqvae, name).requires_grad_(True)
    vqvae_sha256 = file_sha256(source)
    ranges = _input_ranges(run, vqvae, data, resume, quantised)
    stage = DecoderStage(
        env=env,
        precision=precision,
        settings={
            "batch_size": batch_size,
            "crop": crop,
            "lr": lr,
            "steps": steps,  # the cosine's length
            "seed": seed,
            "precision": precision,
            "vqvae_sha256": vqvae_sha256,
            "images": images_digest(dataset),
            **({"quantised": True} if quantised else {}),
        },
        meta={
            "vqvae_sha256": vqvae_sha256,
            "vqvae_step": read_state(source)["step"],
            **({"input_ranges": ranges} if ranges is not None else {}),
            **sources,
        },
        data=dataset,
        val_data=val_set,
        batch_size=batch_size,
        seed=seed,
        workers=default_workers(env.device) if workers is None else workers,
        vqvae=vqvae,
        ranges=ranges,
    )
    return train_stage(stage, run, Schedule(steps, log_every, val_every, ckpt_every), lr, resume)


def _input_ranges(
    run: Path, vqvae: VQVAE, data: str | Path, resume: bool | None, quantised: bool
) -> dict[str, int] | None:
    """The decoder's input ranges for learning through roundings (None: a plain refinement, which
    never resumes a checkpoint that learnt them): a resumed run's own, else those of the model file
    the run came from (``train from-model``), else measured on the first images of ``data`` as
    ``export`` measures them (``exact.calibrate``)."""
    path = checkpoint_path(run, STAGE)
    resuming = resume is not False and path.exists()
    state = read_state(path) if resuming else None
    if not quantised:
        refuse_float_resume(path, state)
        return None
    if state is not None:
        if not learnt_roundings(state):
            raise ValueError(f"{path} did not learn through the integer roundings: start over (--no-resume)")
        return state["meta"]["input_ranges"]
    model_ranges = read_state(checkpoint_path(run, "vqvae"))["meta"].get("input_ranges")
    if model_ranges is not None:
        return {name: value for name, value in model_ranges.items() if name.startswith(DECODER_PARTS)}
    device = next(vqvae.parameters()).device
    images = calibration_images(data, CALIBRATION_IMAGES, vqvae.config.multiple)
    with torch.no_grad():
        return decoder_ranges(vqvae, [vqvae.encode(image.to(device)) for image in images])


def refined_decoder(
    run: Path, vqvae_sha256: str
) -> tuple[dict[str, torch.Tensor], dict[str, int] | None] | None:
    """The refined decoder's weights of ``run`` and, where it learnt through the integer roundings, its
    inputs' ranges (by module name in ``VQVAE``); None: the stage never ran. Checked to refine the
    run's current VQ-VAE checkpoint, whose SHA-256 is ``vqvae_sha256``."""
    path = checkpoint_path(run, STAGE)
    if not path.exists():
        return None
    state = read_state(path)
    refines = state["meta"].get("vqvae_sha256")
    if refines != vqvae_sha256:
        raise ValueError(
            f"{path} refines the decoder of another VQ-VAE than the run's current"
            f" {checkpoint_path(run, 'vqvae')}: refine it again (vqcodec train decoder --no-resume)"
        )
    return read_model_state(path), state["meta"].get("input_ranges")
