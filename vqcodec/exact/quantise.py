"""Quantisation of a float prior into the integers of exact inference (``exact.md`` §3): normative.

Every convolution becomes a linear map of its gathered input taps (§3.1) with 8-bit inputs (an input
quantiser from the model file's range), 8-bit weights with a scale per output channel, a 15-bit
output multiplier and shift, and integer biases (§3.2); the embeddings are rounded to ``FA``
fractional bits (§3.3). The result depends only on the float weights and the ranges, through
correctly rounded IEEE operations, so every platform derives the same integers. The encoder's layers
(§11) are the same with 16-bit inputs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor, nn

from vqcodec.coding import order
from vqcodec.exact.arithmetic import (
    ACT_MAX,
    DEFAULT_RANGE,
    FA,
    MAX_BIAS,
    MAX_FAN_IN,
    MAX_HEAD_DIM,
    MAX_OFFSETS,
    Q_MAX,
    T_MAX,
    TABLE_SIZE,
    clamp,
    elu,
    lookup,
)
from vqcodec.models.pixelsnail import CausalAttention, ELUResBlock, MaskedConv2d

INT8_DEVICES = frozenset({"cpu"})
"""Devices whose products run as int8 x int8 -> int32 (``torch._int_mm``); the others multiply the same
8-bit integers in float64 GEMMs, as exact (exact.md §8): CUDA's int8 kernel wants shapes in multiples
of 8 and more than 16 rows."""


def int8_products(device: torch.device) -> bool:
    """Whether the products on ``device`` are int8 ones (:data:`INT8_DEVICES`)."""
    return device.type in INT8_DEVICES


def int_mm(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` of int8 matrices as their exact int32 sums: torch's int8 product where it is exact on
    this CPU (``int_mm_is_exact``), else float64 products of the same integers, as exact (exact.md §8)
    and slower. A product with a side of 1 (one row, a layer of one channel) takes float64 always:
    torch's (oneDNN's) misreads such a matrix stored transposed, whose strides are then (1, 1), and
    returns sums of memory beyond it."""
    if int_mm_is_exact() and 1 not in (*a.shape, b.shape[1]):
        return torch._int_mm(a, b)
    return torch.mm(a.double(), b.double()).to(torch.int32)


@functools.cache
def int_mm_is_exact() -> bool:
    """Whether ``torch._int_mm`` gives exact sums on this CPU. oneDNN's int8 kernels for CPUs without
    VNNI (AVX2, AVX-512 without VNNI, SSE4.1) add pairs of products in 16 bits and saturate them (its
    documentation's "nuances of int8 computations"): there the bytes and pixels would depend on the
    CPU. Checked once, on full-range random matrices, against float64 products."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 128, (256, 576), generator=generator, dtype=torch.int8)
    b = torch.randint(-128, 128, (576, 64), generator=generator, dtype=torch.int8)
    a[:, :16], b[:16] = 127, 127  # pairs of products far beyond 16 bits
    return torch.equal(torch._int_mm(a, b), torch.mm(a.double(), b.double()).to(torch.int32))


def input_quantiser(in_range: int, top: int = Q_MAX) -> tuple[int, int]:
    """``(m, t)`` of an input whose range ``in_range`` (units of the activations) maps to ``top`` (127,
    255 unsigned, or the encoder's 16-bit 32767; exact.md §3.2): the smallest ``t`` with ``top 2**t >=
    2**14 in_range``, and ``m`` the integer nearest to ``top 2**t / in_range``, ties up, so that ``m
    2**-t`` is ``top / in_range`` in ``[2**14, 2**15]`` multiples of ``2**-t``. Integers only."""
    if not 1 <= in_range <= ACT_MAX:
        raise ValueError(f"an input range must lie in 1..{ACT_MAX}, got {in_range}")
    shift = 0
    while top << shift < 2**14 * in_range:
        shift += 1
    return (top * 2 ** (shift + 1) + in_range) // (2 * in_range), shift


@dataclasses.dataclass
class Rows8:
    """One layer in 8 bits (exact.md §3.2), as integers and as the float64 forms that GEMMs take."""

    weight: np.ndarray  # float64 [out, fan_in]: W_c, integers in [-Q_MAX, Q_MAX]
    scaled: np.ndarray  # float64 [out, fan_in]: W_c M_c 2**-t_c
    scale: np.ndarray  # float64 [out]: M_c 2**-t_c
    bias_low: np.ndarray  # float64 [out]: low_c 2**-t_c
    bias_high: np.ndarray  # float64 [out]: high_c
    in_multiplier: int  # m
    in_shift: int  # t


def quantise_rows8(
    weight: np.ndarray, bias: np.ndarray, frac_bits: int, in_range: int, in_top: int = Q_MAX
) -> Rows8:
    """A layer's float64 weight rows [out, fan_in] and biases [out] in 8 bits, its input's range
    ``in_range`` mapped to ``in_top`` (``input_quantiser``) and output at ``frac_bits`` (exact.md §3.2);
    ValueError outside the proven bounds.

    ``W_c = rhe(w_c 127 / m_c)`` with ``m_c = max |w_c|``; ``r_c = m_c 2**t / (127 m)``, the output per
    unit of ``W_c . q``, becomes ``M_c 2**-t_c`` (``M_c <= 2**15``, ``t_c <= T_MAX``); ``B_c = rhe(b_c
    2**(frac_bits + t_c))``, stored as ``B_c + 2**(t_c - 1) = high_c 2**t_c + low_c``. Every float64
    operation is one correctly rounded IEEE operation, so every platform derives the same integers.
    """
    if weight.shape[1] > MAX_FAN_IN:
        raise ValueError(f"fan-in {weight.shape[1]} exceeds {MAX_FAN_IN}")
    if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
        raise ValueError("non-finite weights")
    if np.abs(bias).max() >= MAX_BIAS:
        raise ValueError(f"a bias exceeds {MAX_BIAS} in magnitude")
    in_multiplier, in_shift = input_quantiser(in_range, in_top)
    row_max = np.abs(weight).max(axis=1)
    safe_max = np.where(row_max > 0, row_max, 1.0)[:, None]
    w_int = np.where(row_max[:, None] > 0, np.rint(weight * float(Q_MAX) / safe_max), 0.0)
    ratio = np.ldexp(row_max, in_shift) / float(Q_MAX * in_multiplier)  # r_c
    mantissa, exponent = np.frexp(ratio)  # r_c = f 2**e, 0.5 <= f < 1 (0, 0 for r_c = 0)
    shift = np.where(ratio > 0, np.minimum(15 - exponent, T_MAX), T_MAX).astype(np.int64)
    if shift.min() < 0:
        raise ValueError("a layer's output scale is too large for 8-bit quantisation")
    multiplier = np.rint(np.ldexp(ratio, shift))  # M_c <= 2**15
    scale = np.ldexp(multiplier, -shift)
    b_int = np.rint(np.ldexp(bias, frac_bits + shift))
    low, high = np.empty(len(bias)), np.empty(len(bias))
    for c, (b, t) in enumerate(zip(b_int.tolist(), shift.tolist(), strict=True)):
        folded = int(b) + (1 << t >> 1)  # rshr's rounding term 2**(t - 1), none for t = 0
        high[c], low[c] = folded >> t, math.ldexp(folded - (folded >> t << t), -t)
    return Rows8(w_int, w_int * scale[:, None], scale, low, high, in_multiplier, in_shift)


@dataclasses.dataclass
class Linear:
    """A quantised convolution of a prior as a linear map of its gathered input taps (rows tap-major,
    then channel), in 8 bits (exact.md §3.2, §5).

    Its input ``g`` (integers at FA) becomes ``q = clamp8(rshr(g m, t))``; output channel c computes
    ``clamp(rshr(M_c acc_c + B_c, t_c))`` with ``acc_c = W_c . q``. With the rounding term folded into
    ``B_c + 2**(t_c - 1) = high 2**t_c + low``, that is ``clamp(floor((M_c acc_c + low) 2**-t_c) +
    high)``. On the CPU ``acc`` is an int8 x int8 -> int32 product (``int_mm``), exact since
    ``|acc_c| <= 127**2 fan_in < 2**31``; elsewhere one float64 GEMM of ``q`` with ``W_c M_c 2**-t_c``
    starting from ``low 2**-t_c`` gives ``(M_c acc_c + low) 2**-t_c`` exactly: every partial sum is a
    multiple of ``2**-t_c`` below ``2**47`` of them (exact.md §8).
    """

    weight8: Tensor  # int8 [fan_in, out]: W_c
    weight: Tensor  # float64 [fan_in, out]: W_c M_c 2**-t_c
    scale: Tensor  # float64 [out]: M_c 2**-t_c
    bias_low: Tensor  # float64 [out]: low 2**-t_c
    bias_high: Tensor  # float64 [out]: high
    in_scale: float  # m 2**-t: exact, and g m 2**-t too (|g m| < 2**35)
    elu_inputs: Tensor | None = None
    """int8 [TABLE_SIZE + top + 1]: the 8-bit input ``q(elu(x))`` for x = -TABLE_SIZE .. top, where the
    layer reads an ELU's output (``with_elu_inputs``); elu(x) is constant below -TABLE_SIZE + 1 and q
    is 127 from ``top`` up."""

    @classmethod
    def from_conv(
        cls, conv: nn.Conv2d, taps: list[tuple[int, int]], in_range: int, scale: float | None = None
    ) -> Linear:
        """Quantise ``conv`` restricted to ``taps`` (its mask's nonzero offsets), times ``scale`` if
        given, for inputs of range ``in_range`` (at FA)."""
        r = conv.kernel_size[0] // 2
        weight = conv.weight.detach().cpu().double().numpy()
        weight = np.stack([weight[:, :, dy + r, dx + r] for dy, dx in taps], axis=1)
        weight = weight.reshape(len(weight), -1)  # [out, taps * in]
        bias = conv.bias.detach().cpu().double().numpy()
        if scale is not None:  # IEEE float64 products: correctly rounded, hence the same everywhere
            weight, bias = weight * scale, bias * scale
        rows = quantise_rows8(weight, bias, FA, in_range)
        return cls(
            torch.from_numpy(np.ascontiguousarray(rows.weight.T)).to(torch.int8),
            torch.from_numpy(np.ascontiguousarray(rows.scaled.T)),
            torch.from_numpy(rows.scale),
            torch.from_numpy(rows.bias_low),
            torch.from_numpy(rows.bias_high),
            math.ldexp(rows.in_multiplier, -rows.in_shift),
        )

    def with_elu_inputs(self) -> Linear:
        """This layer with ``elu_inputs``: one lookup then gives the 8-bit input of an ELU's output,
        instead of the ELU's lookup and the four operations of ``quantise``."""
        top = min(ACT_MAX, math.ceil(Q_MAX / self.in_scale))
        xs = torch.arange(-TABLE_SIZE, top + 1, dtype=torch.float64)
        return dataclasses.replace(self, elu_inputs=self.quantise(elu(xs)).to(torch.int8))

    def quantise_elu(self, x: Tensor) -> Tensor:
        """The 8-bit inputs ``q(elu(x))`` of activations ``x`` (a layer ``with_elu_inputs``): int8 for
        int8 products, else float64."""
        assert self.elu_inputs is not None, "a layer with_elu_inputs"
        top = float(len(self.elu_inputs) - 1 - TABLE_SIZE)
        q = lookup(self.elu_inputs, x.clamp(-TABLE_SIZE, top).add_(float(TABLE_SIZE)))
        return q if int8_products(q.device) else q.double()

    def on_elu(self, x: Tensor) -> Tensor:
        """The layer's outputs at activations ``x`` whose ELU it reads (float64 at FA)."""
        return self.finish(self.accumulate(None, self.quantise_elu(x), slice(None)))

    def quantise(self, x: Tensor) -> Tensor:
        """The 8-bit inputs ``clamp8(rshr(g m, t))`` (integer-valued float64) of activations ``g``."""
        return x.mul(self.in_scale).add_(0.5).floor_().clamp_(-Q_MAX, Q_MAX)

    def __call__(self, inputs: Tensor) -> Tensor:
        """float64 [n, out] at FA from integer-valued float64 activations [n, fan_in] at FA, exactly."""
        q = self.quantise(inputs)
        if int8_products(q.device):
            q = q.to(torch.int8)
        return self.finish(self.accumulate(None, q, slice(None)))

    def accumulate(self, out: Tensor | None, q: Tensor, rows: slice) -> Tensor:
        """``out`` plus the products of 8-bit inputs ``q`` [n, k] with the weight rows ``rows``: int32
        sums ``acc`` for int8 ``q``, else float64 ``(M acc + low) 2**-t``."""
        if q.dtype == torch.int8:
            if q.stride(1) != 1 or (len(q) > 1 and q.stride(0) < q.shape[1]):
                q = q.contiguous()  # the CPU kernel takes strided rows, but not overlapping ones
            part = int_mm(q, self.weight8[rows])
            return part if out is None else out.add_(part)
        weight = self.weight[rows]
        return torch.addmm(self.bias_low, q, weight) if out is None else out.addmm_(q, weight)

    def finish(self, out: Tensor) -> Tensor:
        """The outputs (float64 at FA) from :meth:`accumulate`'s sums: scaled, floored, ``high`` added,
        clamped."""
        if out.dtype == torch.int32:
            out = torch.addcmul(self.bias_low, out.double(), self.scale)
        return clamp(out.floor_().add_(self.bias_high))


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


Ranges = Mapping[str, int]
"""The input range of convolutions by module name (``CodecModel.input_ranges``, relative to a part)."""


def ranges_under(ranges: Ranges, prefix: str) -> dict[str, int]:
    """The ranges of the modules under ``prefix`` (``"priors.0."``, ``"vqvae."``), named within it."""
    return {name.removeprefix(prefix): value for name, value in ranges.items() if name.startswith(prefix)}


def input_range(ranges: Ranges, name: str, frac_bits: int) -> int:
    """The range of the input of convolution ``name`` in units of ``2**-frac_bits``: the model file's, or
    ``DEFAULT_RANGE`` (exact.md §3.2)."""
    return ranges.get(name, DEFAULT_RANGE << frac_bits)


def quantise_res_block(block: ELUResBlock, ranges: Ranges, name: str) -> QuantResBlock:
    """An ELU residual block, whose two layers read ELU outputs."""
    taps = all_taps(block.conv1.kernel_size[0])
    return QuantResBlock(
        Linear.from_conv(block.conv1, taps, input_range(ranges, f"{name}.conv1", FA)).with_elu_inputs(),
        Linear.from_conv(block.conv2, taps, input_range(ranges, f"{name}.conv2", FA)).with_elu_inputs(),
    )


def quantise_attention(attn: CausalAttention, radius: int, ranges: Ranges, name: str) -> QuantAttention:
    channels = attn.query.in_channels
    d = channels // attn.n_heads
    if attn.offsets != order.attention_offsets(radius):
        raise ValueError("an attention block does not use the decode order's causal window")
    if d > MAX_HEAD_DIM or len(attn.offsets) > MAX_OFFSETS:
        raise ValueError(f"attention needs head dim <= {MAX_HEAD_DIM} and <= {MAX_OFFSETS} offsets")
    point = [(0, 0)]
    return QuantAttention(
        query=Linear.from_conv(
            attn.query, point, input_range(ranges, f"{name}.query", FA), scale=1.0 / math.sqrt(d)
        ),
        key=Linear.from_conv(attn.key, point, input_range(ranges, f"{name}.key", FA)),
        value=Linear.from_conv(attn.value, point, input_range(ranges, f"{name}.value", FA)),
        proj=Linear.from_conv(attn.proj, point, input_range(ranges, f"{name}.proj", FA)),
        n_heads=attn.n_heads,
    )
