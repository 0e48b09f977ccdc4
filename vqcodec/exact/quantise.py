"""Quantisation of a float prior into the integers of exact inference (``exact.md`` §3): normative.

Every convolution becomes a linear map of its gathered input taps (§3.1), with integer weights of at
most ``WEIGHT_MAX`` and a power-of-two scale per output channel, and integer biases (§3.2); the
embeddings are rounded to ``FA`` fractional bits (§3.3). The result depends only on the float
weights, through correctly rounded IEEE operations, so every platform derives the same integers.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch import Tensor, nn

from vqcodec.coding import order
from vqcodec.exact.arithmetic import (
    ACT_MAX,
    FA,
    MAX_BIAS,
    MAX_FAN_IN,
    MAX_HEAD_DIM,
    MAX_OFFSETS,
    MAX_SHIFT,
    WEIGHT_MAX,
    clamp,
)
from vqcodec.models.pixelsnail import CausalAttention, ELUResBlock, MaskedConv2d


def _scale_exponent(row_max: float) -> int:
    """The largest s <= MAX_SHIFT with round_half_even(row_max * 2**s) <= WEIGHT_MAX (exact.md §3)."""
    if row_max == 0.0:
        return MAX_SHIFT
    _, e = math.frexp(row_max)  # row_max = m * 2**e with 0.5 <= m < 1
    s = 15 - e  # row_max * 2**s lies in [2**14, 2**15): the rounding can only reach 2**15
    if round(math.ldexp(row_max, s)) > WEIGHT_MAX:
        s -= 1
    return min(s, MAX_SHIFT)


def quantise_rows(
    weight: np.ndarray, bias: np.ndarray, frac_bits: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer weights ``W`` (float64 [out, fan_in]), biases ``B`` (int64 [out]) and scale exponents ``s``
    (int64 [out]) of one layer's float64 weight rows and biases, output at ``frac_bits`` (exact.md §3.2).

    ``W_c = rhe(w_c 2**s_c)`` with the largest ``s_c <= MAX_SHIFT`` that keeps ``|W_c| <= WEIGHT_MAX``,
    and ``B_c = rhe(b_c 2**(s_c + frac_bits))``; ValueError for a layer outside the proven bounds.
    """
    if weight.shape[1] > MAX_FAN_IN:
        raise ValueError(f"fan-in {weight.shape[1]} exceeds {MAX_FAN_IN}")
    if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
        raise ValueError("non-finite weights")
    if np.abs(bias).max() >= MAX_BIAS:
        raise ValueError(f"a bias exceeds {MAX_BIAS} in magnitude")
    shift = np.array([_scale_exponent(float(m)) for m in np.abs(weight).max(axis=1)], dtype=np.int64)
    if shift.min() < 0:
        raise ValueError(f"weights too large for {WEIGHT_MAX.bit_length()}-bit quantisation")
    w_int = np.rint(np.ldexp(weight, shift[:, None]))  # exact scaling, then round half to even
    b_int = np.rint(np.ldexp(bias, shift + frac_bits)).astype(np.int64)
    return w_int, b_int, shift


def scaled_rows(
    weight: np.ndarray, bias: np.ndarray, frac_bits: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A layer quantised (``quantise_rows``) and stored for float64 GEMMs: ``W_c 2**-s_c``, ``low 2**-s_c``
    and ``high`` (float64 [out, fan_in], [out], [out]) and ``s`` (int64 [out]), where
    ``B_c + 2**(s_c - 1) = high 2**s_c + low`` with ``0 <= low < 2**s_c`` (see ``Linear``)."""
    w_int, b_int, shift = quantise_rows(weight, bias, frac_bits)
    b_int += np.where(shift > 0, 2 ** np.maximum(shift - 1, 0), 0)  # rounds the shift half up
    high = b_int >> shift
    low = b_int - (high << shift)
    return (
        np.ldexp(w_int, -shift[:, None]),
        np.ldexp(low.astype(np.float64), -shift),
        high.astype(np.float64),
        shift,
    )


@dataclasses.dataclass
class Linear:
    """A quantised convolution as a linear map of its gathered input taps (rows tap-major, then channel).

    Output channel c computes ``clamp(rshr(acc_c + B_c, s_c))`` (exact.md §5). With the rounding term
    folded in, ``B = B_c + 2**(s_c - 1) = high 2**s_c + low`` (``0 <= low < 2**s_c``), this is
    ``clamp(floor((acc_c + low) 2**-s_c) + high)``. The weights and ``low`` are stored times
    ``2**-s_c``, so one float64 GEMM with the bias as its starting value gives
    ``(acc_c + low) 2**-s_c`` exactly: every partial sum is a multiple of ``2**-s_c`` below ``2**52``
    (exact.md §8), hence representable. ``|high| < 2**32`` (biases are below ``2**21``), so adding it
    is exact too.
    """

    weight: Tensor  # float64 [fan_in, out]: W_c 2**-s_c, |W_c| <= WEIGHT_MAX
    bias_low: Tensor  # float64 [out]: low 2**-s_c
    bias_high: Tensor  # float64 [out]: high
    shift: Tensor  # int64 [out]: s_c

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, taps: list[tuple[int, int]], scale: float | None = None) -> Linear:
        """Quantise ``conv`` restricted to ``taps`` (its mask's nonzero offsets), times ``scale`` if given."""
        r = conv.kernel_size[0] // 2
        weight = conv.weight.detach().cpu().double().numpy()
        weight = np.stack([weight[:, :, dy + r, dx + r] for dy, dx in taps], axis=1)
        weight = weight.reshape(len(weight), -1)  # [out, taps * in]
        bias = conv.bias.detach().cpu().double().numpy()
        if scale is not None:  # IEEE float64 products: correctly rounded, hence the same everywhere
            weight, bias = weight * scale, bias * scale
        weight, low, high, shift = scaled_rows(weight, bias, FA)
        return cls(
            torch.from_numpy(np.ascontiguousarray(weight.T)),
            torch.from_numpy(low),
            torch.from_numpy(high),
            torch.from_numpy(shift),
        )

    def __call__(self, inputs: Tensor) -> Tensor:
        """float64 [n, out] at FA from integer-valued float64 inputs [n, fan_in] at FA, exactly."""
        return self.finish(torch.addmm(self.bias_low, inputs, self.weight))

    def finish(self, scaled: Tensor) -> Tensor:
        """The outputs from ``(acc + low) 2**-s`` (in place): floor, add ``high``, clamp."""
        return clamp(scaled.floor_().add_(self.bias_high))


@dataclasses.dataclass
class QuantResBlock:
    conv1: Linear
    conv2: Linear


@dataclasses.dataclass
class QuantGatedBlock:
    conv1: Linear
    conv2: Linear
    cond_proj: Linear | None


@dataclasses.dataclass
class QuantAttention:
    query: Linear  # already scaled by 1 / sqrt(head dim)
    key: Linear
    value: Linear
    proj: Linear
    n_heads: int


def all_taps(kernel_size: int) -> list[tuple[int, int]]:
    r = kernel_size // 2
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]


def masked_offsets(kernel_size: int, first_layer: bool) -> list[tuple[int, int]]:
    """The offsets where the decode order's causal mask is 1, row-major."""
    mask = order.conv_mask(kernel_size, first_layer).flatten().tolist()
    return [tap for tap, m in zip(all_taps(kernel_size), mask, strict=True) if m]


def masked_taps(conv: MaskedConv2d, first_layer: bool) -> list[tuple[int, int]]:
    """The taps of a masked convolution, checking that it uses the decode order's mask."""
    k = conv.kernel_size[0]
    if not torch.equal(
        conv.mask.detach().cpu().reshape(k, k), torch.from_numpy(order.conv_mask(k, first_layer))
    ):
        raise ValueError("a masked convolution does not use the decode order's mask")
    return masked_offsets(k, first_layer)


def quantise_embedding(embedding: nn.Embedding) -> Tensor:
    """The embedding table at FA, clamped: integer-valued float64 [K, C]."""
    table = embedding.weight.detach().cpu().double().numpy()
    if not np.isfinite(table).all():
        raise ValueError("non-finite embeddings")
    return torch.from_numpy(np.clip(np.rint(np.ldexp(table, FA)), -ACT_MAX, ACT_MAX))


def quantise_res_block(block: ELUResBlock) -> QuantResBlock:
    taps = all_taps(block.conv1.kernel_size[0])
    return QuantResBlock(Linear.from_conv(block.conv1, taps), Linear.from_conv(block.conv2, taps))


def quantise_attention(attn: CausalAttention, radius: int) -> QuantAttention:
    channels = attn.query.in_channels
    d = channels // attn.n_heads
    if attn.offsets != order.attention_offsets(radius):
        raise ValueError("an attention block does not use the decode order's causal window")
    if d > MAX_HEAD_DIM or len(attn.offsets) > MAX_OFFSETS:
        raise ValueError(f"attention needs head dim <= {MAX_HEAD_DIM} and <= {MAX_OFFSETS} offsets")
    point = [(0, 0)]
    return QuantAttention(
        query=Linear.from_conv(attn.query, point, scale=1.0 / math.sqrt(d)),
        key=Linear.from_conv(attn.key, point),
        value=Linear.from_conv(attn.value, point),
        proj=Linear.from_conv(attn.proj, point),
        n_heads=attn.n_heads,
    )
