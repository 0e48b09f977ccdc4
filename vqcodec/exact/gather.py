"""Execution helpers of exact inference: gathering taps and running a layer in bounded GEMMs.

Nothing here changes a result: how positions are gathered and chunked only decides memory and speed,
since every product sum is exact in any order (``exact.md`` §8).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from vqcodec.exact.quantise import Linear, int_mm

GEMM_CHUNK = 2**22
"""Gathered float64 elements per GEMM (32 MiB) by default: bounds memory when many positions run at
once (``ExactPrior.chunk``)."""


def to_device(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor inside (dataclasses and lists) moved to ``device``."""
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, list):
        return [to_device(item, device) for item in obj]
    if dataclasses.is_dataclass(obj):
        moved = {f.name: to_device(getattr(obj, f.name), device) for f in dataclasses.fields(obj)}
        return dataclasses.replace(obj, **moved)
    return obj


def padded(features: Tensor, pad: int) -> Tensor:
    """A zero-padded copy [(h + 2 pad) (w + 2 pad), C] of float64 features [h, w, C], to gather from."""
    h, w, c = features.shape
    out = features.new_zeros((h + 2 * pad, w + 2 * pad, c))
    out[pad : pad + h, pad : pad + w] = features
    return out.view(-1, c)


def tap_index(taps: list[tuple[int, int]], padded_width: int, device: torch.device) -> Tensor:
    """Flat offsets [T] of the taps in a padded map of width ``padded_width``."""
    return torch.tensor([dy * padded_width + dx for dy, dx in taps], dtype=torch.int64, device=device)


def gather(source: Tensor, index: Tensor) -> Tensor:
    """Rows ``index`` [n, T] of ``source`` [cells, C], as [n, T, C]."""
    return source.index_select(0, index.reshape(-1)).view(*index.shape, source.shape[1])


def gathered_linear(layer: Linear, source: Tensor, index: Tensor, chunk: int = GEMM_CHUNK) -> Tensor:
    """``layer`` at the positions whose taps are rows ``index`` [n, T] of ``source``, gathering at most
    about ``chunk`` values at once."""
    fan_in = layer.weight.shape[0]
    rows = max(1, chunk // fan_in)
    if len(index) <= rows:
        return layer(gather(source, index).view(len(index), fan_in))
    out = torch.empty(len(index), layer.weight.shape[1], dtype=torch.float64, device=source.device)
    for start in range(0, len(index), rows):
        part = index[start : start + rows]
        out[start : start + len(part)] = gathered_linear(layer, source, part, chunk)
    return out


def linear_rows(
    layer: Linear,
    inputs: Tensor,
    dtype: torch.dtype,
    chunk: int = GEMM_CHUNK,
    apply: Callable[[Linear, Tensor], Tensor] | None = None,
) -> Tensor:
    """``layer`` on integer rows ``inputs`` [n, fan_in] in GEMMs of about ``chunk`` values (by
    ``apply(layer, rows)`` if given: the same outputs), the outputs stored as ``dtype``."""
    out = torch.empty(len(inputs), layer.weight.shape[1], dtype=dtype, device=inputs.device)
    rows = max(1, chunk // max(layer.weight.shape))
    for start in range(0, len(inputs), rows):
        part = inputs[start : start + rows]
        out[start : start + rows] = layer(part) if apply is None else apply(layer, part)
    return out


def tap_sums(
    padded: Tensor, taps: list[tuple[int, int]], weights: Tensor, bias: Tensor, height: int
) -> Tensor:
    """``sum over taps (dy, dx) of padded[y + dy, x + dx] @ weights[tap]`` for ``y < height`` and every
    column of ``padded`` (columns past the output's width are garbage): one product per tap on a flat
    slice of the map, or one of the slices side by side, [height, padded width, out]. An int8 map gives
    int32 sums (``quantise.int_mm``, exact); a float64 one float64 sums starting from ``bias``."""
    _, width, c = padded.shape
    flat = padded.view(-1, c)
    n = height * width
    slices = [flat[dy * width + dx : dy * width + dx + n] for dy, dx in taps]
    if padded.dtype == torch.int8 and weights.shape[2] >= c:  # the taps side by side, one product: a
        # copy of the inputs costs less than adding up one product per tap where outputs are as wide
        operand = torch.cat(slices, dim=1) if len(slices) > 1 else slices[0]
        return int_mm(operand, weights.reshape(-1, weights.shape[2])).view(height, width, -1)
    if padded.dtype == torch.int8:
        out = torch.zeros(n, weights.shape[2], dtype=torch.int32, device=padded.device)
        for part, weight in zip(slices, weights, strict=True):
            out.add_(int_mm(part, weight))
        return out.view(height, width, -1)
    out = bias.expand(n, -1).clone()
    for part, weight in zip(slices, weights, strict=True):
        out.addmm_(part, weight)
    return out.view(height, width, -1)
