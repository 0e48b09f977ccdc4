"""The coding order: which code is coded when, written once for encoder, decoder, sampler and tests.

This module is ``bitstream_spec/vqz.md`` §7 in code, and knows nothing of torch.

**Wavefronts.** The code at row ``y``, column ``x`` of a map belongs to step ``t = x + 2 y``. All
codes of one step are coded together, so a ``H x W`` map takes ``W + 2 (H - 1)`` sequential steps
instead of ``H W``. Every code still sees its left neighbour and the three neighbours above it
(steps ``t - 1``, ``t - 3``, ``t - 2``, ``t - 1``), and everything further up and to the left, like a
raster-order PixelCNN. The causal structure of every prior derives from ``step_of``:

* the first layer at ``p`` reads codes at ``q`` only if ``step(q) < step(p)`` (mask "A");
* every later layer at ``p`` reads features at ``q`` if ``step(q) <= step(p)`` (mask "B"):
  features at a position depend only on codes of strictly earlier steps, so a layer can be
  evaluated for a whole wavefront at once, layer after layer.

**Tiles.** A map may be cut into tiles (``tiles``), each coded as the map of an independent image:
their wavefronts run side by side, so tiles coded together take the steps of the largest of them.

**Waves.** The tiles of a level are walked in waves of at most ``TILE_WAVE`` pixel rows (all tiles
of a wave side by side), one wave after the other, top level first (``CodingOrder.waves``).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SLOPE = 2
"""Steps between a code and the one below it."""

TILE_WAVE = 4096
"""The tiles of a level are walked in waves of ``TILE_WAVE // H`` tiles H pixels tall, one wave after
the other: the wave's tiles together are at most as tall as a 4096-pixel image, which bounds the
memory of the decoder's caches. Normative: it decides the order of the codes in a file."""

MIN_TILE = 32
"""Smallest tile width and height in pixels (TILES chunk): smaller tiles cost many bits, and the
decoder's memory per tile (the tile and the rows its priors read above and below it) would be mostly
border."""

DEFAULT_TILE = 256
"""Largest side in pixels of the tiles coded as independent images: the side of the crops the priors
are trained on, so that a tile's context is the one they learned from (``benchmarks/README.md``
measures what tiles cost in bits and gain in steps)."""


def step_of(y: int, x: int) -> int:
    """The wavefront step at which the code at (y, x) is coded."""
    return x + SLOPE * y


def n_steps(height: int, width: int) -> int:
    """Number of sequential wavefronts of a height x width map."""
    return (width - 1) + SLOPE * (height - 1) + 1


def step_map(height: int, width: int) -> np.ndarray:
    """A [height, width] int64 array holding the step of every position."""
    return np.arange(width, dtype=np.int64)[None, :] + SLOPE * np.arange(height, dtype=np.int64)[:, None]


def wavefront(t: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns (int64, rows ascending) of the positions coded at step ``t``."""
    ys = np.arange(
        max(0, (t - width + 1 + SLOPE - 1) // SLOPE), min(height - 1, t // SLOPE) + 1, dtype=np.int64
    )
    return ys, t - SLOPE * ys


def tiles(height: int, width: int, tile_height: int, tile_width: int) -> list[tuple[int, int, int, int]]:
    """``(y, x, h, w)`` of the tile_height x tile_width tiles of a height x width map, cut from the top
    left (those of the last row and column may be smaller), in raster order."""
    if tile_height < 1 or tile_width < 1:
        raise ValueError(f"tile sides must be positive, got {tile_height}x{tile_width}")
    return [
        (y, x, min(tile_height, height - y), min(tile_width, width - x))
        for y in range(0, height, tile_height)
        for x in range(0, width, tile_width)
    ]


def offset_allowed(dy: int, dx: int, first_layer: bool) -> bool:
    """Whether a layer may read relative offset (dy, dx): mask "A" if ``first_layer`` else "B"."""
    delta = dx + SLOPE * dy
    return delta < 0 if first_layer else delta <= 0


def conv_mask(kernel_size: int, first_layer: bool) -> np.ndarray:
    """The [k, k] float32 0/1 mask of a causal convolution with odd kernel size ``k``."""
    if kernel_size % 2 != 1:
        raise ValueError("causal convolutions need an odd kernel size")
    r = kernel_size // 2
    offsets = range(-r, r + 1)
    return np.array(
        [[offset_allowed(dy, dx, first_layer) for dx in offsets] for dy in offsets], dtype=np.float32
    )


def attention_offsets(radius: int) -> list[tuple[int, int]]:
    """Relative (dy, dx) offsets an attention query may look at: a causal window of ``radius``.

    The window covers rows ``-radius..0`` and columns ``-radius..radius`` restricted to mask "B"
    offsets; the query's own position (0, 0) is included. The list is ordered by (dy, dx).
    """
    return [
        (dy, dx)
        for dy in range(-radius, 1)
        for dx in range(-radius, radius + 1)
        if offset_allowed(dy, dx, first_layer=False)
    ]


Rect = tuple[int, tuple[int, int, int, int]]
"""A tile: its rank in raster order, and its top-left code's row and column and its height and width."""


@dataclass(frozen=True)
class CodingOrder:
    """The order of a file's codes, for a model whose top-level codes cover ``multiple`` pixels a side:
    levels top first, each in waves of tiles, each wave in wavefront steps."""

    multiple: int
    tile_wave: int = TILE_WAVE
    """Pixel rows of a wave: normative (``TILE_WAVE``); another value only in tests of the walk."""

    def check_tile(self, tile: int | None) -> None:
        """Raise ValueError unless ``tile`` (a largest tile side in pixels) is None or a multiple of the
        model's multiple, at least ``2 * MIN_TILE``."""
        if tile is not None and (
            isinstance(tile, bool)
            or not isinstance(tile, numbers.Integral)
            or tile < 2 * MIN_TILE
            or tile % self.multiple
        ):
            raise ValueError(
                f"tile side must be a multiple of {self.multiple} pixels, at least {2 * MIN_TILE}, got {tile}"
            )

    def tile_size(self, top_height: int, top_width: int, tile: int | None) -> tuple[int, int] | None:
        """The (width, height) of the tiles that cut an image of this top-level map as evenly as
        possible into as few tiles as tiles of ``tile`` pixels a side would; None: one tile."""
        if tile is None:
            return None
        sides = []
        for codes in (top_width, top_height):
            cells = tile // self.multiple  # a tile's side in top-level codes, at most
            count = -(-codes // cells)
            sides.append(-(-codes // count) * self.multiple)  # at least tile / 2 when count > 1
        whole = sides == [top_width * self.multiple, top_height * self.multiple]
        return None if whole else (sides[0], sides[1])

    def tiles_per_wave(self, tile_height: int) -> int:
        """How many tiles ``tile_height`` pixels tall a wave holds."""
        return max(1, self.tile_wave // tile_height)

    def waves(
        self, shapes: Sequence[tuple[int, int]], level: int, tile: tuple[int, int] | None
    ) -> list[list[Rect]]:
        """A level's tiles in raster order, in the waves that are walked one after the other (one wave
        of the whole map without tiles); ``shapes``: every level's map, top first; ``tile``: the
        (width, height) of the tiles in pixels."""
        height, width = shapes[level]
        if tile is None:
            return [[(0, (0, 0, height, width))]]
        scale = height // shapes[0][0]  # this level's codes per top-level code, a side
        tile_width, tile_height = (side // self.multiple * scale for side in tile)
        rects = list(enumerate(tiles(height, width, tile_height, tile_width)))
        size = self.tiles_per_wave(tile[1])
        return [rects[start : start + size] for start in range(0, len(rects), size)]

    def n_steps(
        self,
        shapes: Sequence[tuple[int, int]],
        tile: tuple[int, int] | None,
        levels: Sequence[int] | None = None,
    ) -> int:
        """The sequential steps of the walk of maps of these shapes (of ``levels``, default all): of each
        wave, its largest tile's."""
        levels = range(len(shapes)) if levels is None else levels
        return sum(wave_steps(wave) for level in levels for wave in self.waves(shapes, level, tile))


def wave_steps(wave: list[Rect]) -> int:
    """The steps of a wave of tiles: up to the last of its largest tile's."""
    return max(n_steps(h, w) for _, (_, _, h, w) in wave)
