"""The input ranges of the integer layers, measured on images (``exact.md`` §3.2, §11): informative.

A layer's 8-bit input covers ``[-range, range]`` of its activations (``[0, range]`` after a ReLU; the
encoder's 16-bit one alike); a model file stores every range (``CodecModel.input_ranges``), so decoders
read them and never measure anything. How they were chosen changes no rule of the format, only how
well the integers follow the float model: here, the largest input each convolution of the float model
sees on a few training images (never the benchmark's). Clipping the rarest largest inputs (a 99.99 %
quantile, ``experiments/int8_cost.py``) cost the decoder more than the coarser step of the maximum;
the maximum over more images costs more than it saves (``experiments/calibration_cost.py``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor, nn

from vqcodec.exact.arithmetic import ACT_MAX, FA
from vqcodec.exact.vqvae import FP
from vqcodec.models.model import CodecModel
from vqcodec.models.pixelsnail import PixelSNAILPrior
from vqcodec.models.vqvae import VQVAE

_CONVS = nn.Conv2d | nn.ConvTranspose2d


@contextlib.contextmanager
def largest_inputs(
    module: nn.Module, found: dict[str, float], under: tuple[str, ...] = ("",)
) -> Iterator[None]:
    """While open, raise ``found[name]`` to the largest |input| that each convolution of ``module`` whose
    name starts with one of ``under`` sees."""

    def record(name: str) -> Callable[[nn.Module, tuple[Tensor, ...]], None]:
        def hook(_conv: nn.Module, args: tuple[Tensor, ...]) -> None:
            found[name] = max(found.get(name, 0.0), args[0].detach().abs().max().item())

        return hook

    handles = [
        conv.register_forward_pre_hook(record(name))
        for name, conv in module.named_modules()
        if isinstance(conv, _CONVS) and name.startswith(under)
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def to_units(found: dict[str, float], frac_bits: int) -> dict[str, int]:
    """Ranges in real units as the model file's integers: ``ceil(range 2**frac_bits)`` in 1..ACT_MAX."""
    return {name: min(ACT_MAX, max(1, math.ceil(value * 2**frac_bits))) for name, value in found.items()}


@torch.no_grad()
def prior_ranges(prior: PixelSNAILPrior, codes: Iterable[tuple[Tensor, list[Tensor]]]) -> dict[str, int]:
    """The input ranges (at FA, by module name) of ``prior``'s convolutions over batches of codes [B, H,
    W] and the levels above them; the embeddings' whole tables count for the layers that read them,
    since any code may come."""
    found: dict[str, float] = {}
    with largest_inputs(prior, found):
        for level_codes, above in codes:
            prior(level_codes, above or None)
    found["input_conv"] = max(found.get("input_conv", 0.0), prior.embed.weight.abs().max().item())
    if prior.cond_codebook_sizes:
        largest = max(table.weight.abs().max().item() for table in prior.cond_embeds)
        found["cond_conv"] = max(found.get("cond_conv", 0.0), largest)
    return to_units(found, FA)


@torch.no_grad()
def decoder_ranges(vqvae: VQVAE, codes: Iterable[list[Tensor]]) -> dict[str, int]:
    """The input ranges (at FP, by module name within ``vqvae``) of the pixel decoder's convolutions
    over code maps (per level, top first, [B, h, w])."""
    found: dict[str, float] = {}
    with largest_inputs(vqvae, found, ("upsamplers.", "decoder.")):
        for maps in codes:
            vqvae.decode_codes(maps)
    return to_units(found, FP)


@torch.no_grad()
def encoder_ranges(model: CodecModel, images: Iterable[Tensor]) -> tuple[dict[str, int], list[list[Tensor]]]:
    """The input ranges (at FP, by module name within ``model.vqvae``) of the encoder's convolutions
    over ``images``, and the images' codes."""
    found: dict[str, float] = {}
    with largest_inputs(model.vqvae, found, ("encoders.", "quant_convs.", "context_decoders.")):
        codes = [model.vqvae.encode(image) for image in images]
    return to_units(found, FP), codes


@torch.no_grad()
def calibrate(model: CodecModel, images: Iterable[Tensor]) -> dict[str, int]:
    """Every input range of ``model`` (by module name in the model) measured on ``images`` (each [1, 3,
    H, W] in the model's convention, sides multiples of ``model.config.vqvae.multiple``); also stored
    in ``model.input_ranges``."""
    model.eval()
    encoding, all_codes = encoder_ranges(model, images)
    if not all_codes:
        raise ValueError("calibration needs at least one image")
    decoding = decoder_ranges(model.vqvae, all_codes)
    ranges = {f"vqvae.{name}": value for name, value in {**encoding, **decoding}.items()}
    for level, prior in enumerate(model.priors):
        batches = [(codes[level], codes[:level]) for codes in all_codes]
        ranges.update({f"priors.{level}.{name}": v for name, v in prior_ranges(prior, batches).items()})
    model.input_ranges = ranges
    return ranges
