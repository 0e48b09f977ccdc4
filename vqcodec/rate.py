"""Rate control: the quality that meets a target file size or PSNR, as ``cwebp -size`` and ``-psnr``.

A file's size grows with the quality (the image is coded at a larger size), so the best quality
under a size, or the smallest file over a PSNR, is found by bisection over the continuous quality
scale (``vqcodec.quality``): each step encodes the image once, and a PSNR target also runs the VQ-VAE
decoder on the codes (no range decoding). The result never breaks the target: when even the
smallest (or the best) quality cannot meet it, a ValueError says what it reached.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from vqcodec.codec import Codec, Decoded, ImageInput
from vqcodec.coding.container import VQZFile
from vqcodec.imageio import SourceImage
from vqcodec.quality import DEFAULT_TILE, MAX_QUALITY, MIN_QUALITY

SEARCH_STEPS = 8
"""Encodes after the two ends of the scale: the quality is then known to 4 / 2**8 of the scale."""


@dataclass(frozen=True)
class Reached:
    """What a target search settled on."""

    data: bytes
    quality: float
    psnr: float | None
    """PSNR (dB) of the decoded image's colour planes against the input's, for a PSNR target."""


@dataclass(frozen=True)
class Target:
    """At most ``max_bytes`` bytes (a size or bpp target), or at least ``min_psnr`` dB."""

    max_bytes: int | None = None
    max_bpp: float | None = None
    min_psnr: float | None = None

    def __post_init__(self) -> None:
        given = [value for value in (self.max_bytes, self.max_bpp, self.min_psnr) if value is not None]
        if len(given) != 1:
            raise ValueError("give exactly one target: a size in bytes, bits per pixel, or a PSNR")
        if given[0] <= 0:
            raise ValueError(f"a target must be positive, got {given[0]}")


def compress_to_target(
    codec: Codec,
    image: ImageInput,
    target: Target,
    tile: int | None = DEFAULT_TILE,
    metadata: str | Iterable[str] = "all",
    progress: Callable[[int, int], None] | None = None,
) -> Reached:
    """The highest quality whose file is no larger than the size target, or the lowest whose decoded
    image reaches the PSNR target; ``progress`` is called with (encodes done, encodes at most)."""
    codec.check_tile(tile)
    source = codec.source(image, metadata)
    source = dataclasses.replace(source, warnings=[])  # shown once, by codec.source
    limit = target.max_bytes
    if target.max_bpp is not None:
        limit = int(target.max_bpp * source.width * source.height / 8)
    total = SEARCH_STEPS + 2

    def trial(quality: float) -> tuple[Reached, bool]:
        data, codes = codec.encode(source, quality, tile)
        if progress is not None:
            progress(len(tried) + 1, total)
        if limit is not None:
            reached = Reached(data, quality, None)
            tried.append(reached)
            return reached, len(data) <= limit
        reached = Reached(data, quality, _psnr(codec, source, data, codes))
        tried.append(reached)
        return reached, reached.psnr is not None and reached.psnr >= target.min_psnr  # type: ignore[operator]

    tried: list[Reached] = []
    low, high = MIN_QUALITY, MAX_QUALITY
    # A size target is met at the low end; a PSNR target at the high end.
    sure, sure_ok = trial(low if limit is not None else high)
    if not sure_ok:
        what = f"{limit:,} bytes" if limit is not None else f"{target.min_psnr} dB"
        got = f"{len(sure.data):,} bytes" if limit is not None else f"{sure.psnr:.2f} dB"
        raise ValueError(f"cannot reach {what}: quality {sure.quality:g} gives {got}")
    other, other_ok = trial(high if limit is not None else low)
    if other_ok:  # the whole scale meets the target: its best end (a size) or its smallest (a PSNR)
        return other
    best = sure
    for _ in range(SEARCH_STEPS):
        middle = (low + high) / 2
        reached, ok = trial(middle)
        if ok:
            best = reached
        if ok == (limit is not None):
            low = middle
        else:
            high = middle
    return best


def _psnr(codec: Codec, source: SourceImage, data: bytes, codes: list[np.ndarray]) -> float:
    """PSNR of the image the file decodes to, from its codes: the range decoder would give the same."""
    decoded = np.asarray(codec.render(Decoded(VQZFile.from_bytes(data), codes, [])).convert("RGB"))
    mse = np.mean((source.rgb.astype(np.float64) - decoded) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))
