"""A whole codec model: the hierarchical VQ-VAE and one PixelSNAIL prior per level, top first.

This is the unit that model files store and the codec runs; training builds its parts separately.
"""

from __future__ import annotations

import torch
from torch import nn

from vqcodec.models.config import ModelConfig
from vqcodec.models.pixelsnail import PixelSNAILPrior
from vqcodec.models.sampling import sample_codes
from vqcodec.models.vqvae import VQVAE


def build_prior(config: ModelConfig, level: int) -> PixelSNAILPrior:
    """The prior of ``level`` (0 = top), conditioned on the codebooks of all levels above it."""
    sizes = tuple(lvl.codebook_size for lvl in config.vqvae.levels)
    return PixelSNAILPrior(config.priors[level], sizes[level], sizes[:level])


class CodecModel(nn.Module):
    """The VQ-VAE (``vqvae``) and the priors (``priors[i]`` models level i given levels 0..i-1)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.vqvae = VQVAE(config.vqvae)
        self.priors = nn.ModuleList(build_prior(config, level) for level in range(config.vqvae.n_levels))
        self.input_ranges: dict[str, int] = {}
        """The input range of convolutions by module name, for the codec's 8-bit integer layers
        (``bitstream_spec/exact.md`` §3.2; measured by ``vqcodec.exact.calibrate``): model data, saved
        in model files beside the weights."""

    def code_shapes(self, height: int, width: int) -> list[tuple[int, int]]:
        """(H, W) of every level's code map for a ``height`` x ``width`` image, top first."""
        vq = self.config.vqvae
        if height <= 0 or width <= 0 or height % vq.multiple or width % vq.multiple:
            raise ValueError(f"image size {width}x{height} must be positive multiples of {vq.multiple}")
        return [(height // vq.stride(level), width // vq.stride(level)) for level in range(vq.n_levels)]


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Model-convention images (pixel / 255 - 0.5) as uint8 pixels, rounded and clamped."""
    return ((images.float() + 0.5) * 255.0).round().clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def sample_images(
    model: CodecModel, n: int, height: int, width: int, temperature: float = 1.0, seed: int = 0
) -> torch.Tensor:
    """``n`` images drawn from the priors and decoded, as uint8 [n, 3, height, width] on the model's device.

    The same seed gives the same images on the same device (the draws use a generator of their own).
    """
    if n <= 0:
        raise ValueError("the number of samples must be positive")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    codes = sample_codes(list(model.priors), model.code_shapes(height, width), n, temperature, generator)
    return to_uint8(model.vqvae.decode_codes(codes))
