"""Model configurations as dataclasses that round-trip through JSON.

A model file carries its configuration beside its weights, so every model is self-describing.
Levels are always listed top first (coarsest map first), which is also the order in which they are
decoded.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class LevelConfig:
    """One level of the VQ-VAE hierarchy: its codebook."""

    codebook_size: int = 512
    code_dim: int = 64


@dataclass(frozen=True)
class VQVAEConfig:
    """Stage 1: the hierarchical VQ-VAE (section 3.1 of the paper).

    The bottom level downsamples the image by ``bottom_stride`` (4 for 256 px ImageNet, 8 for the
    3-level 1024 px FFHQ model); each level above halves the resolution again.
    """

    in_channels: int = 3
    channels: int = 128
    res_channels: int = 64
    n_res_blocks: int = 2
    bottom_stride: int = 4
    levels: tuple[LevelConfig, ...] = (LevelConfig(), LevelConfig())
    ema_decay: float = 0.99
    commitment_cost: float = 0.25

    @property
    def n_levels(self) -> int:
        return len(self.levels)

    def stride(self, level: int) -> int:
        """Downsampling factor of ``level`` (0 = top) with respect to the image."""
        return self.bottom_stride * 2 ** (self.n_levels - 1 - level)

    @property
    def multiple(self) -> int:
        """Image sides must be a multiple of this (the top level's stride)."""
        return self.stride(0)


@dataclass(frozen=True)
class PriorConfig:
    """Stage 2: one PixelSNAIL prior over the codes of one level (section 3.2).

    ``attention_every`` > 0 puts a causal multi-head self-attention block after every that many
    gated residual blocks (the top prior); 0 means none (the lower priors by default).
    ``n_cond_blocks`` residual blocks condition a lower prior on all the levels above it.
    ``attention_context`` is "window" (the causal window of ``attention_radius`` that wavefront
    decoding allows) or "raster" (every earlier position in raster order, the PixelSNAIL paper's
    full context): a raster model cannot be decoded in wavefronts, it is the reference that
    ``experiments/context_cost.py`` measures the window against.
    """

    channels: int = 128
    kernel_size: int = 3
    n_blocks: int = 4
    attention_every: int = 2
    n_heads: int = 4
    attention_radius: int = 6
    attention_context: str = "window"
    n_out_blocks: int = 2
    n_cond_blocks: int = 0
    cond_channels: int = 128
    dropout: float = 0.1


@dataclass(frozen=True)
class ModelConfig:
    """A whole codec model: the VQ-VAE and one prior per level (top first)."""

    vqvae: VQVAEConfig = field(default_factory=VQVAEConfig)
    priors: tuple[PriorConfig, ...] = (
        PriorConfig(),
        PriorConfig(attention_every=0, n_cond_blocks=4),
    )

    def __post_init__(self) -> None:
        if len(self.priors) != self.vqvae.n_levels:
            raise ValueError(
                f"{len(self.priors)} priors for {self.vqvae.n_levels} levels: need one prior per level"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def three_level_config() -> ModelConfig:
    """The paper's 3-level layout (as for 1024 px FFHQ): bottom at 1/8, middle 1/16, top 1/32."""
    return ModelConfig(
        vqvae=VQVAEConfig(bottom_stride=8, levels=(LevelConfig(), LevelConfig(), LevelConfig())),
        priors=(
            PriorConfig(),
            PriorConfig(attention_every=0, n_cond_blocks=6),
            PriorConfig(attention_every=0, n_cond_blocks=6),
        ),
    )


def level_names(n_levels: int) -> tuple[str, ...]:
    """Human names of the levels, top first: ("top", "bottom") or ("top", "middle", "bottom")."""
    if n_levels == 2:
        return ("top", "bottom")
    if n_levels == 3:
        return ("top", "middle", "bottom")
    return tuple(f"level{i}" for i in range(n_levels))


def tiny_config() -> ModelConfig:
    """A very small 2-level model for tests and CPU smoke runs."""
    return ModelConfig(
        vqvae=VQVAEConfig(
            channels=16,
            res_channels=8,
            n_res_blocks=1,
            levels=(LevelConfig(codebook_size=32, code_dim=8), LevelConfig(codebook_size=32, code_dim=8)),
        ),
        priors=(
            PriorConfig(channels=16, n_blocks=2, n_heads=2, attention_radius=2, n_out_blocks=1),
            PriorConfig(
                channels=16, n_blocks=2, attention_every=0, n_cond_blocks=1, cond_channels=16, n_out_blocks=1
            ),
        ),
    )


PRESETS = {
    "tiny": tiny_config,
    "default": ModelConfig,
    "3level": three_level_config,
}
