"""Operating points: a quality from 0 to 4 codes the image at a smaller size, resized back on decoding.

One trained model serves every quality, as cjxl's ``--resampling`` does for JPEG XL: a VQ-VAE's
codes cost about the same per code whatever the image size, so coding 1/2 of each side takes about
1/4 of the bits, and at low rates a smaller sharp image beats a blocky full-size one. The scale is
continuous: between the whole qualities, which name fixed scales (``QUALITY_SCALES``), the scale's
logarithm is interpolated linearly, so that the bits grow steadily with the quality. Kept free of
torch so that the command line can describe the qualities without loading it.
"""

from __future__ import annotations

import math
import numbers

QUALITY_SCALES: dict[int, float] = {0: 4.5, 1: 2.0, 2: 1.5, 3: 1.25, 4: 1.0}
"""Whole quality N → how many times smaller each side of the coded image is than the image's."""
MIN_QUALITY, MAX_QUALITY = min(QUALITY_SCALES), max(QUALITY_SCALES)
DEFAULT_QUALITY = MAX_QUALITY
SWEEP_QUALITIES = (0, 0.5, 1, 1.5, 2, 2.5, 3, 3.25, 3.5, 3.75, 4)
"""The qualities ``vqcodec bench`` runs by default: a curve from the lowest rate to the highest."""


def scale(quality: float) -> float:
    """How many times smaller each side of the coded image is than the image's, at ``quality``."""
    if (
        isinstance(quality, bool)
        or not isinstance(quality, numbers.Real)
        or not (MIN_QUALITY <= quality <= MAX_QUALITY)
    ):
        raise ValueError(f"quality must be a number from {MIN_QUALITY} to {MAX_QUALITY}, got {quality!r}")
    low = min(math.floor(quality), MAX_QUALITY - 1)
    fraction = quality - low
    return math.exp(
        (1 - fraction) * math.log(QUALITY_SCALES[low]) + fraction * math.log(QUALITY_SCALES[low + 1])
    )


def coded_size(width: int, height: int, quality: float) -> tuple[int, int]:
    """The (width, height) an image is coded at for ``quality`` (0 = smallest file, 4 = full size)."""
    factor = scale(quality)
    return max(1, int(width / factor + 0.5)), max(1, int(height / factor + 0.5))


def describe_qualities() -> str:
    """One line for help texts: what the whole qualities code."""
    return ", ".join(
        f"{quality} = {'full size' if factor == 1 else f'1/{factor:g} of each side'}"
        for quality, factor in QUALITY_SCALES.items()
    )
