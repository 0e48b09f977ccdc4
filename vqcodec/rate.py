"""Rate control: the quality that meets a target file size or PSNR, as ``cwebp -size`` and ``-psnr``.

A file's size grows with the quality (the image is coded at a larger size), so the best quality
under a size, or the smallest file over a PSNR, is found by bisection over the continuous quality
scale (``vqcodec.quality``): each step encodes the image once, and a PSNR target also runs the VQ-VAE
decoder on the codes (no range decoding). A size target then grows the coded image by a column
and a row of codes at a time while the file still fits. The result never breaks the target: when
even the smallest (or the best) quality cannot meet it, a ValueError says what it reached.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from vqcodec import rdo
from vqcodec.codec import Codec, Decoded, ImageInput
from vqcodec.coding.container import VQZFile
from vqcodec.coding.order import DEFAULT_TILE
from vqcodec.imageio import SourceImage
from vqcodec.metrics import psnr
from vqcodec.quality import MAX_QUALITY, MIN_QUALITY, coded_size

SEARCH_STEPS = 8
"""Encodes after the two ends of the scale: the quality is then known to 4 / 2**8 of the scale."""
REFINE_ROUNDS = 2
"""Rounds after the search for a size target, each up to three encodes of one more column and/or row
of codes."""


@dataclass(frozen=True)
class Reached:
    """What a target search settled on."""

    data: bytes
    quality: float
    """The quality found; a size target may then have grown the coded image (``coded_size``)."""
    coded_size: tuple[int, int]
    """The (width, height) the image was coded at."""
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
        value = given[0]
        number = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if not (number and value > 0 and _finite(value)):
            raise ValueError(f"a target must be a positive finite number, got {value!r:.40}")


def _finite(value: float) -> bool:
    """Whether ``value`` is finite as a float (an int too large for one is not)."""
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def compress_to_target(
    codec: Codec,
    image: ImageInput,
    target: Target,
    tile: int | None = DEFAULT_TILE,
    metadata: str | Iterable[str] = "all",
    progress: Callable[[int, int], None] | None = None,
    effort: int = rdo.DEFAULT_EFFORT,
) -> Reached:
    """The highest quality whose file is no larger than the size target, or the lowest whose decoded
    image reaches the PSNR target, every trial encoded at ``effort`` (``vqcodec.rdo``); ``progress`` is
    called with (encodes done, encodes at most).

    A size target then tries one more column and one more row of codes, twice: at low rates the next
    quality's map can be several per cent larger, and the file should come as close as it can.
    """
    codec.order.check_tile(tile)
    rdo.levels(effort, len(codec.exact_priors))
    source = codec.source(image, metadata)
    source = dataclasses.replace(source, warnings=[])  # shown once, by codec.source
    limit = target.max_bytes
    if target.max_bpp is not None:
        limit = int(min(target.max_bpp * source.width * source.height / 8, 2**62))  # 1e308 bpp: no limit
    total = SEARCH_STEPS + 2 + (3 * REFINE_ROUNDS if limit is not None else 0)
    encodes = 0

    def trial(quality: float, size: tuple[int, int] | None = None) -> tuple[Reached, bool]:
        nonlocal encodes
        size = size or coded_size(source.width, source.height, quality)
        data, codes = codec.encode(source, quality, tile, size=size, effort=effort)
        encodes += 1
        if progress is not None:
            progress(encodes, total)
        if limit is not None:
            return Reached(data, quality, size, None), len(data) <= limit
        reached = Reached(data, quality, size, _psnr(codec, source, data, codes))
        return reached, reached.psnr >= target.min_psnr  # type: ignore[operator]

    low, high = float(MIN_QUALITY), float(MAX_QUALITY)
    # A size target is met at the low end; a PSNR target at the high end.
    sure, sure_ok = trial(low if limit is not None else high)
    if not sure_ok:
        what = f"{target.min_psnr} dB" if limit is None else f"{limit:,} bytes"
        what += f" ({target.max_bpp:g} bpp)" if target.max_bpp is not None else ""
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
    return best if limit is None else _refine(best, source, codec.multiple, trial)


def _refine(
    best: Reached,
    source: SourceImage,
    multiple: int,
    trial: Callable[[float, tuple[int, int]], tuple[Reached, bool]],
) -> Reached:
    """The largest file under the size target among ``best`` and ``best`` coded one column of codes
    wider, one row taller, or both (at most the image's own size), grown again from a size that fits.

    A column of codes is ``multiple`` pixels of the coded image, whatever its padding: the image is
    widened, not its padded map, so that the padding stays as small as the search left it.
    """
    for _ in range(REFINE_ROUNDS):
        width, height = best.coded_size
        sizes = [
            (min(w, source.width), min(h, source.height))
            for w, h in (
                (width + multiple, height + multiple),
                (width + multiple, height),
                (width, height + multiple),
            )
        ]
        grown = None
        for size in dict.fromkeys(sizes):  # in order, each once (the image's edge may merge two)
            if size[0] * size[1] <= width * height:
                continue
            reached, ok = trial(best.quality, size)
            if ok:  # the sizes are in decreasing order: the first that fits is the largest
                grown = reached
                break
        if grown is None:
            return best
        best = grown
    return best


def _psnr(codec: Codec, source: SourceImage, data: bytes, codes: list[np.ndarray]) -> float:
    """PSNR of the image the file decodes to, from its codes: the range decoder would give the same."""
    decoded = codec.render(Decoded(VQZFile.from_bytes(data), codes, []))
    return psnr(source.rgb, np.asarray(decoded.convert("RGB")))
