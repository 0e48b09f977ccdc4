"""The decode order of a code map, written once for encoder, decoder, sampler and tests.

Codes are decoded in *wavefronts*: the code at row ``y``, column ``x`` belongs to step
``t = x + 2 * y``. All codes of one step are decoded together, so a ``H x W`` map takes
``W + 2 * (H - 1)`` sequential steps instead of ``H * W``. Every code still sees its left
neighbour and the three neighbours above it (steps ``t - 1``, ``t - 3``, ``t - 2``, ``t - 1``),
and everything further up and to the left, like a raster-order PixelCNN.

The causal structure of every prior is derived from this one function:

* the first layer at ``p`` reads codes at ``q`` only if ``step(q) < step(p)`` (mask "A");
* every later layer at ``p`` reads features at ``q`` if ``step(q) <= step(p)`` (mask "B"):
  features at a position depend only on codes of strictly earlier steps, so a layer can be
  evaluated for a whole wavefront at once, layer after layer.

Hence the prior's output at ``p`` depends only on codes at strictly earlier steps.

A map may also be cut into *tiles* (``tiles``), each coded as the map of an independent image:
their wavefronts run side by side, so tiles coded together take the steps of the largest of them.
"""

from __future__ import annotations

import torch

SLOPE = 2


def step_of(y: int, x: int) -> int:
    """The wavefront step at which the code at (y, x) is decoded."""
    return x + SLOPE * y


def n_steps(height: int, width: int) -> int:
    """Number of sequential wavefronts of a height x width map."""
    return (width - 1) + SLOPE * (height - 1) + 1


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


def step_map(height: int, width: int) -> torch.Tensor:
    """A [height, width] int64 tensor holding the step of every position."""
    ys = torch.arange(height).unsqueeze(1)
    xs = torch.arange(width).unsqueeze(0)
    return xs + SLOPE * ys


def wavefront(t: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows and columns (int64, rows ascending) of the positions decoded at step ``t``."""
    ys = torch.arange(max(0, (t - width + 1 + SLOPE - 1) // SLOPE), min(height - 1, t // SLOPE) + 1)
    xs = t - SLOPE * ys
    return ys, xs


def offset_allowed(dy: int, dx: int, first_layer: bool) -> bool:
    """Whether a layer may read relative offset (dy, dx): mask "A" if ``first_layer`` else "B"."""
    delta = dx + SLOPE * dy
    return delta < 0 if first_layer else delta <= 0


def conv_mask(kernel_size: int, first_layer: bool) -> torch.Tensor:
    """The [k, k] 0/1 mask of a causal convolution with odd kernel size ``k``."""
    if kernel_size % 2 != 1:
        raise ValueError("causal convolutions need an odd kernel size")
    r = kernel_size // 2
    mask = torch.zeros(kernel_size, kernel_size)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if offset_allowed(dy, dx, first_layer):
                mask[dy + r, dx + r] = 1.0
    return mask


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
