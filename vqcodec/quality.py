"""Operating points: quality N codes the image at a smaller size, resized back on decoding.

One trained model serves every quality, as cjxl's ``--resampling`` does for JPEG XL: a VQ-VAE's
codes cost about the same per code whatever the image size, so coding 1/2 of each side takes about
1/4 of the bits, and at low rates a smaller sharp image beats a blocky full-size one. Kept free of
torch so that the command line can describe the qualities without loading it.

The tile side is the other encoder setting: a file's code maps are cut into tiles coded as
independent images, whose wavefronts the decoder runs side by side (``bitstream_spec/vqz.md`` §5.2).
"""

from __future__ import annotations

QUALITY_SCALES: dict[int, float] = {1: 2.0, 2: 1.5, 3: 1.25, 4: 1.0}
"""Quality N → how many times smaller each side of the coded image is than the image's."""
DEFAULT_QUALITY = max(QUALITY_SCALES)

DEFAULT_TILE = 256
"""Largest side in pixels of the tiles coded as independent images: the side of the crops the priors
are trained on, so that a tile's context is the one they learned from. A Kodak image is then cut into
6 tiles of 256 x 256 and takes 284 sequential steps instead of 668, for 0.9 % more bits."""


def coded_size(width: int, height: int, quality: int) -> tuple[int, int]:
    """The (width, height) an image is coded at for ``quality`` (1 = smallest file)."""
    if quality not in QUALITY_SCALES:
        raise ValueError(f"quality must be one of {', '.join(map(str, QUALITY_SCALES))}, got {quality!r}")
    scale = QUALITY_SCALES[quality]
    return max(1, int(width / scale + 0.5)), max(1, int(height / scale + 0.5))


def describe_qualities() -> str:
    """One line for help texts: what each quality codes."""
    return ", ".join(
        f"{quality} = {'full size' if scale == 1 else f'1/{scale:g} of each side'}"
        for quality, scale in QUALITY_SCALES.items()
    )
