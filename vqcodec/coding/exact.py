"""Exact integer inference of the PixelSNAIL priors: the same frequency tables on every platform.

A range decoder needs the encoder's frequency tables bit for bit: one float that differs by an ulp
(thread count, batch composition, CPU vs CUDA, summation order) changes a table, and every later
code decodes wrongly. So the tables do not come from the float network but from an integer mirror
of it that is exact *by construction*, normatively specified in ``bitstream_spec/exact.md``:

* activations are integers in fixed point with ``FA`` fractional bits, clamped to ``|x| <= ACT_MAX``;
* weights are integers ``|w| <= WEIGHT_MAX`` with a power-of-two scale per output channel;
* every convolution is a GEMM in float64 on integer operands whose partial sums are all below 2**53,
  so the float64 result is the exact integer whatever the order of summation, BLAS or device;
* everything else (bias, shifts, clamps, residual sums, gates, attention weights) is integer
  arithmetic and lookups in tables defined mathematically and computed exactly in integers.

The activations are kept as integer-valued float64 tensors: every value and intermediate stays
below 2**53 in magnitude, so each float64 operation below (sums, products by powers of two, floors)
is exact, and the small per-step tensors never pay for conversions between int64 and float64.

Encoder and decoder both run an :class:`ExactStepper`, which evaluates each layer only at the
positions of one wavefront (``order.wavefront``) and keeps every spatially-read layer output in a
zero-padded cache over a sliding window of recent steps, so step ``t`` costs one wavefront's worth of work
and the memory grows with the map's height only.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from vqcodec.coding.entropy import MAX_ALPHABET, PRECISION
from vqcodec.models import order
from vqcodec.models.pixelsnail import (
    CausalAttention,
    MaskedConv2d,
    PixelSNAILPrior,
    ResBlock,
    check_cond_codes,
)

FA = 10
"""Fractional bits of every activation (and of the logits)."""

ACT_MAX = 2**20 - 1
"""Every layer's output is clamped to ``[-ACT_MAX, ACT_MAX]``."""

WEIGHT_MAX = 2**15 - 1
"""Largest magnitude of a quantised weight."""

MAX_SHIFT = 24
"""Largest weight scale exponent ``s_c`` (the scale of all-zero and tiny channels)."""

MAX_FAN_IN = 2**17
"""Largest number of products in one output: keeps every accumulator below 2**15 * 2**20 * 2**17 = 2**52."""

MAX_BIAS = 2.0**21
"""Biases must be smaller than this in magnitude (a looser limit than any trained model needs)."""

FE = 20
"""Fractional bits of the exponential table used by the softmaxes."""

TABLE_SIZE = 16 * 2**FA
"""Entries of the ELU and exp tables; the sigmoid table covers ``[-TABLE_SIZE, TABLE_SIZE)``."""

P_BITS = 16
"""Fractional bits of the attention weights."""

MAX_HEAD_DIM = 2**10
MAX_OFFSETS = 2**10

_CHUNK = 2**22
"""Gathered float64 elements per GEMM (32 MiB): bounds memory when many positions run at once."""

_COND_DTYPE = torch.float32
"""Storage of the conditioning tables: clamped activations, exact in float32, at half the memory of
float64 (they cover a quarter of a level's positions, which for a large image is many)."""

_NEG = -(2.0**62)
"""Stands in for the logit of an attention offset outside the map before it is excluded."""


class Tables(NamedTuple):
    """The lookup tables, int64, as defined in ``bitstream_spec/exact.md`` §4."""

    elu: np.ndarray  # [TABLE_SIZE]: round(2^FA (exp(-i / 2^FA) - 1))
    sigmoid: np.ndarray  # [2 TABLE_SIZE]: round(2^FA / (1 + exp(-(i - TABLE_SIZE) / 2^FA)))
    exp: np.ndarray  # [TABLE_SIZE]: round(2^FE exp(-i / 2^FA))


_FIXED = 192
"""Fractional bits of the fixed-point integers in which :func:`tables` computes the entries."""


def _round_checked(value: int) -> int:
    """The integer nearest to ``value * 2**-_FIXED``, refusing a value within 2**-128 of a rounding tie.

    No entry is ever that close (the exact values are irrational) and :func:`tables` computes each
    within 2**-151 of its exact value, so this only proves that the result is the correctly rounded one.
    """
    half = 1 << (_FIXED - 1)
    if abs((value & ((1 << _FIXED) - 1)) - half) < 1 << (_FIXED - 128):
        raise ArithmeticError(f"table entry {value / 2**_FIXED} is too close to a rounding tie")
    return (value + half) >> _FIXED


@functools.cache
def tables() -> Tables:
    """Build the tables once per process (about 0.04 s), exactly, in Python integers.

    Fixed point with ``_FIXED`` = 192 fractional bits (errors below in units of 2**-192):
    ``exp(-1 / 2^FA)`` from its Taylor series, each term floored (error below 2**6), and
    ``exp(-i / 2^FA)`` as its i-th power, each product floored (error below 65 i < 2**21 for
    i <= 2**14). Scaling by 2^FE, or dividing into 2^FA for the sigmoid (whose derivative in exp is
    at most 2^FA), keeps every value within 2**41 units, 2**-151, of the exact entry: far inside
    the tie margin that :func:`_round_checked` enforces, so every entry is the correctly rounded value.
    """
    one, unit = 1 << _FIXED, 1 << FA
    ratio, term, k = 0, one, 0  # exp(-x) = sum of (-x)^k / k! with x = 2^-FA
    while term:
        ratio += -term if k % 2 else term
        k += 1
        term //= unit * k
    power = one  # exp(-i / 2^FA)
    elu, exp, sig_pos, sig_neg = [], [], [], []
    for i in range(TABLE_SIZE + 1):
        sig = (unit << 2 * _FIXED) // (one + power)  # 2^FA sigmoid(+i / 2^FA)
        if i < TABLE_SIZE:
            elu.append(_round_checked((power - one) << FA))
            exp.append(_round_checked(power << FE))
            sig_pos.append(_round_checked(sig))
        if i > 0:
            sig_neg.append(_round_checked((unit << _FIXED) - sig))  # 2^FA sigmoid(-i / 2^FA)
        power = power * ratio >> _FIXED
    sigmoid = sig_neg[::-1] + sig_pos  # index i holds sigmoid((i - TABLE_SIZE) / 2^FA)
    arrays = [np.array(values, dtype=np.int64) for values in (elu, sigmoid, exp)]
    for array in arrays:
        array.setflags(write=False)
    return Tables(*arrays)


@functools.cache
def _tables_on(device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """The int64 tables on ``device`` (ELU, sigmoid, exp)."""
    return tuple(torch.from_numpy(t.copy()).to(device) for t in tables())


@functools.cache
def _exp_on(device: torch.device) -> Tensor:
    """The exp table as float64 on ``device`` (every entry is an integer below 2**21: exact)."""
    return _tables_on(device)[2].double()


@functools.cache
def _activation_tables_on(device: torch.device) -> tuple[Tensor, Tensor]:
    """ELU(x) and sig(x) 2^-FA for every activation x in [-ACT_MAX, ACT_MAX], float64 at index x + ACT_MAX.

    Every ELU and gate input is a clamped layer output, so one lookup in these 16 MiB tables replaces
    the comparison, negation and clamp of the exact.md definitions; the entries are those definitions'
    values, exact in float64.
    """
    elu, sigmoid, _ = (table.double() for table in _tables_on(device))
    n = ACT_MAX - TABLE_SIZE
    # x = -ACT_MAX .. -TABLE_SIZE read ELU's last entry, -(TABLE_SIZE - 1) .. -1 read ELU[-x], and
    # 0 .. ACT_MAX are their own ELU
    elu_full = torch.cat(
        [
            elu[-1:].expand(n + 1),
            elu[1:].flip(0),
            torch.arange(ACT_MAX + 1, dtype=torch.float64, device=device),
        ]
    )
    # x = -ACT_MAX .. -TABLE_SIZE - 1 read the sigmoid's first entry, TABLE_SIZE .. ACT_MAX its last
    sigmoid = sigmoid.mul_(2.0**-FA)
    sigmoid_full = torch.cat([sigmoid[:1].expand(n), sigmoid, sigmoid[-1:].expand(n + 1)])
    return elu_full, sigmoid_full


def _lookup(table: Tensor, index: Tensor) -> Tensor:
    """``table[index]`` for an integer-valued float64 ``index`` below 2**31 of any shape: an int32
    ``index_select``, which at a step's sizes on the CPU takes half the time of ``take`` and casts
    faster than to the int64 that ``take`` needs."""
    return table.index_select(0, index.to(torch.int32).view(-1)).view(index.shape)


def _activation_lookup(table: Tensor, x: Tensor) -> Tensor:
    """One of :func:`_activation_tables_on` at integer-valued float64 activations ``x``."""
    return _lookup(table, x.add(float(ACT_MAX)))  # a float scalar: an int one is cast on every call


def _elu(x: Tensor) -> Tensor:
    """Integer ELU of integer-valued float64 activations at FA."""
    return _activation_lookup(_activation_tables_on(x.device)[0], x)


def _gated_residual(x: Tensor, h: Tensor) -> Tensor:
    """``clamp(x + rshr(a sig(b), FA))`` with ``[a, b] = h``, of float64 activations.

    ``x + a sig(b) 2^-FA`` is exact (below 2**32, with FA fractional bits), and adding 1/2 then
    flooring is the rounding shift, since x is an integer.
    """
    c = x.shape[1]
    sig = _activation_lookup(_activation_tables_on(h.device)[1], h[:, c:])
    return _clamp(torch.addcmul(x, h[:, :c], sig).add_(0.5).floor_())


def _round_shift(x: Tensor, s: int) -> Tensor:
    """``rshr(x, s) = floor((x + 2**(s - 1)) / 2**s)``, s >= 1, of integer-valued float64 ``|x| < 2**52``:
    rounds half up (a floor would bias every layer)."""
    return x.mul(2.0**-s).add_(0.5).floor_()


def _floor_div(a: Tensor, b: Tensor) -> Tensor:
    """``a div b`` of integer-valued float64 ``0 <= a``, ``0 < b`` with ``a + b <= 2**53``, exact.

    The floor of the correctly rounded (IEEE) quotient: with ``n = a div b``, n and n + 1 are float64
    numbers and rounding is monotone, so the quotient rounds into ``[n, n + 1]``; it could only round
    up to n + 1 from within half an ulp, ``(n + 1) 2**-53``, below, but it lies at least ``1 / b``
    below, and ``1 / b <= (n + 1) 2**-53`` would need ``a > b n >= 2**53 - b``.
    """
    return torch.div(a, b).floor_()


def _clamp(x: Tensor) -> Tensor:
    """Clamp (in place) to the activation range [-ACT_MAX, ACT_MAX]."""
    return x.clamp_(-ACT_MAX, ACT_MAX)


def frequencies(logits: Tensor) -> Tensor:
    """Frequency tables int64 [n, K] (entries >= 1, rows summing to 2**PRECISION) from int64 logits at FA.

    ``z = max(l) - l``, ``e = exp[min(z, TABLE_SIZE - 1)]``, ``f = 1 + floor(e (2^24 - K) / sum(e))``,
    and what the floors leave over goes to the first index of the largest logit (exact.md §7).
    """
    if logits.dim() != 2 or logits.dtype != torch.int64:
        raise ValueError(f"logits must be int64 [n, K], got {logits.dtype} {tuple(logits.shape)}")
    if not 2 <= logits.shape[1] <= MAX_ALPHABET:
        raise ValueError(f"alphabet size must be in 2..{MAX_ALPHABET}, got {logits.shape[1]}")
    if logits.numel() and logits.abs().max() >= 2**52:
        raise ValueError("logits must be smaller than 2**52 in magnitude")
    return _frequencies(logits.double()).long()


def _frequencies(logits: Tensor) -> Tensor:
    """:func:`frequencies` of integer-valued float64 logits, as float64.

    Every value is an integer below 2**53: ``e (2^24 - K) < 2**44`` and ``sum(e) < 2**36``.
    """
    k = logits.shape[1]
    z = (logits.amax(dim=1, keepdim=True) - logits).clamp_(max=TABLE_SIZE - 1)
    e = _lookup(_exp_on(logits.device), z)
    total = e.sum(dim=1, keepdim=True)
    freqs = _floor_div(e.mul_(float(2**PRECISION - k)), total).add_(1.0)
    leftover = freqs.sum(dim=1, keepdim=True).neg_().add_(float(2**PRECISION))
    # argmax gives the first index of the largest logit, on every device
    return freqs.scatter_add_(1, logits.argmax(dim=1, keepdim=True), leftover)


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
    ``B_c + 2**(s_c - 1) = high 2**s_c + low`` with ``0 <= low < 2**s_c`` (see ``_Linear``)."""
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
class _Linear:
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
    def from_conv(cls, conv: nn.Conv2d, taps: list[tuple[int, int]], scale: float | None = None) -> _Linear:
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
        return _clamp(scaled.floor_().add_(self.bias_high))


@dataclasses.dataclass
class _ResBlock:
    conv1: _Linear
    conv2: _Linear


@dataclasses.dataclass
class _GatedBlock:
    conv1: _Linear
    conv2: _Linear
    cond_proj: _Linear | None


@dataclasses.dataclass
class _Attention:
    query: _Linear  # already scaled by 1 / sqrt(head dim)
    key: _Linear
    value: _Linear
    proj: _Linear
    n_heads: int


def _all_taps(kernel_size: int) -> list[tuple[int, int]]:
    r = kernel_size // 2
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]


def _masked_offsets(kernel_size: int, first_layer: bool) -> list[tuple[int, int]]:
    """The offsets where the decode order's causal mask is 1, row-major."""
    mask = order.conv_mask(kernel_size, first_layer).flatten().tolist()
    return [tap for tap, m in zip(_all_taps(kernel_size), mask, strict=True) if m]


def _masked_taps(conv: MaskedConv2d, first_layer: bool) -> list[tuple[int, int]]:
    """The taps of a masked convolution, checking that it uses the decode order's mask."""
    k = conv.kernel_size[0]
    if not torch.equal(conv.mask.detach().cpu().reshape(k, k), order.conv_mask(k, first_layer)):
        raise ValueError("a masked convolution does not use the decode order's mask")
    return _masked_offsets(k, first_layer)


def _quantise_embedding(embedding: nn.Embedding) -> Tensor:
    """The embedding table at FA, clamped: integer-valued float64 [K, C]."""
    table = embedding.weight.detach().cpu().double().numpy()
    if not np.isfinite(table).all():
        raise ValueError("non-finite embeddings")
    return torch.from_numpy(np.clip(np.rint(np.ldexp(table, FA)), -ACT_MAX, ACT_MAX))


def _res_block(block: ResBlock) -> _ResBlock:
    taps = _all_taps(block.conv1.kernel_size[0])
    return _ResBlock(_Linear.from_conv(block.conv1, taps), _Linear.from_conv(block.conv2, taps))


def _attention(attn: CausalAttention, radius: int) -> _Attention:
    channels = attn.query.in_channels
    d = channels // attn.n_heads
    if attn.offsets != order.attention_offsets(radius):
        raise ValueError("an attention block does not use the decode order's causal window")
    if d > MAX_HEAD_DIM or len(attn.offsets) > MAX_OFFSETS:
        raise ValueError(f"attention needs head dim <= {MAX_HEAD_DIM} and <= {MAX_OFFSETS} offsets")
    point = [(0, 0)]
    return _Attention(
        query=_Linear.from_conv(attn.query, point, scale=1.0 / math.sqrt(d)),
        key=_Linear.from_conv(attn.key, point),
        value=_Linear.from_conv(attn.value, point),
        proj=_Linear.from_conv(attn.proj, point),
        n_heads=attn.n_heads,
    )


def _to(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor inside (dataclasses and lists) moved to ``device``."""
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, list):
        return [_to(item, device) for item in obj]
    if dataclasses.is_dataclass(obj):
        moved = {f.name: _to(getattr(obj, f.name), device) for f in dataclasses.fields(obj)}
        return dataclasses.replace(obj, **moved)
    return obj


def _padded(features: Tensor, pad: int) -> Tensor:
    """A zero-padded copy [(h + 2 pad) (w + 2 pad), C] of float64 features [h, w, C], to gather from."""
    h, w, c = features.shape
    out = features.new_zeros((h + 2 * pad, w + 2 * pad, c))
    out[pad : pad + h, pad : pad + w] = features
    return out.view(-1, c)


def _tap_index(taps: list[tuple[int, int]], padded_width: int, device: torch.device) -> Tensor:
    """Flat offsets [T] of the taps in a padded map of width ``padded_width``."""
    return torch.tensor([dy * padded_width + dx for dy, dx in taps], dtype=torch.int64, device=device)


def _gather(source: Tensor, index: Tensor) -> Tensor:
    """Rows ``index`` [n, T] of ``source`` [cells, C], as [n, T, C]."""
    return source.index_select(0, index.reshape(-1)).view(*index.shape, source.shape[1])


def _gathered(layer: _Linear, source: Tensor, index: Tensor) -> Tensor:
    """``layer`` at the positions whose taps are rows ``index`` [n, T] of ``source``, in bounded chunks."""
    fan_in = layer.weight.shape[0]
    rows = max(1, _CHUNK // fan_in)
    if len(index) <= rows:
        return layer(_gather(source, index).view(len(index), fan_in))
    out = torch.empty(len(index), layer.weight.shape[1], dtype=torch.float64, device=source.device)
    for start in range(0, len(index), rows):
        part = index[start : start + rows]
        out[start : start + len(part)] = _gathered(layer, source, part)
    return out


def _linear_rows(layer: _Linear, inputs: Tensor, dtype: torch.dtype) -> Tensor:
    """``layer`` on integer rows ``inputs`` [n, fan_in] in bounded chunks, the outputs stored as ``dtype``."""
    out = torch.empty(len(inputs), layer.weight.shape[1], dtype=dtype, device=inputs.device)
    rows = max(1, _CHUNK // max(layer.weight.shape))
    for start in range(0, len(inputs), rows):
        out[start : start + rows] = layer(inputs[start : start + rows])
    return out


@dataclasses.dataclass
class ExactPrior:
    """The integer mirror of a :class:`PixelSNAILPrior` (``bitstream_spec/exact.md``)."""

    codebook_size: int
    cond_codebook_sizes: tuple[int, ...]
    channels: int
    kernel_size: int
    attention_every: int
    attention_offsets: list[tuple[int, int]]
    embed: Tensor  # float64 [K, C], integers at FA (written to the first layer's gather source)
    input_conv: _Linear
    blocks: list[_GatedBlock]
    attentions: list[_Attention]
    out_blocks: list[_ResBlock]
    out_conv: _Linear
    cond_embeds: list[Tensor]  # float64 [K_i, D], integers at FA, per upper level, top first
    cond_conv: _Linear | None
    cond_stack: list[_ResBlock]

    @classmethod
    def from_float(cls, prior: PixelSNAILPrior) -> ExactPrior:
        """Quantise ``prior`` (deterministic from its weights; dropout is the identity)."""
        config = prior.config
        if prior.attentions and config.attention_context != "window":
            raise ValueError(f"{config.attention_context} attention cannot be decoded in wavefronts")
        if prior.codebook_size > MAX_ALPHABET or any(k > MAX_ALPHABET for k in prior.cond_codebook_sizes):
            raise ValueError(f"codebook sizes must be at most {MAX_ALPHABET}")
        conditioned = len(prior.cond_codebook_sizes) > 0
        return cls(
            codebook_size=prior.codebook_size,
            cond_codebook_sizes=prior.cond_codebook_sizes,
            channels=config.channels,
            kernel_size=config.kernel_size,
            attention_every=config.attention_every,
            attention_offsets=order.attention_offsets(config.attention_radius) if prior.attentions else [],
            embed=_quantise_embedding(prior.embed),
            input_conv=_Linear.from_conv(prior.input_conv, _masked_taps(prior.input_conv, first_layer=True)),
            blocks=[
                _GatedBlock(
                    _Linear.from_conv(block.conv1, _masked_taps(block.conv1, first_layer=False)),
                    _Linear.from_conv(block.conv2, _masked_taps(block.conv2, first_layer=False)),
                    _Linear.from_conv(block.cond_proj, [(0, 0)]) if block.cond_proj is not None else None,
                )
                for block in prior.blocks
            ],
            attentions=[_attention(attn, config.attention_radius) for attn in prior.attentions],
            out_blocks=[_res_block(block) for block in prior.out_blocks],
            out_conv=_Linear.from_conv(prior.out_conv, [(0, 0)]),
            cond_embeds=[_quantise_embedding(e) for e in prior.cond_embeds] if conditioned else [],
            cond_conv=_Linear.from_conv(prior.cond_conv, [(0, 0)]) if conditioned else None,
            cond_stack=[_res_block(block) for block in prior.cond_stack] if conditioned else [],
        )

    @property
    def device(self) -> torch.device:
        return self.embed.device

    def to(self, device: torch.device | str) -> ExactPrior:
        """A copy with all integer weights on ``device`` (the results are the same on every device)."""
        return _to(self, torch.device(device))

    def stepper(self, height: int, width: int, cond_codes: list[Tensor]) -> ExactStepper:
        """Tables of one height x width map, step by step; ``cond_codes``: [h_i, w_i] per level above."""
        return self.batch_stepper(height, width, [cond_codes])

    def batch_stepper(
        self,
        height: int,
        width: int,
        cond_codes: list[list[Tensor]],
        sizes: list[tuple[int, int]] | None = None,
    ) -> ExactStepper:
        """Tables of several height x width maps at once, one per image of ``cond_codes`` (the levels
        above of each), or on the CPU of maps of the ``sizes`` within height x width: every step
        evaluates all their positions together. On a GPU, each step is one CUDA graph
        (:class:`ColumnStepper`), for maps of one size."""
        if self.device.type != "cuda":
            return ExactStepper(self, height, width, cond_codes, sizes=sizes)
        if sizes is not None and set(sizes) != {(height, width)}:
            raise ValueError("a GPU stepper takes maps of one size")
        return ColumnStepper(self, height, width, cond_codes)

    def encoder_stepper(
        self, codes: list[Tensor], cond_codes: list[list[Tensor]]
    ) -> ExactStepper | KnownCodes:
        """Tables of maps of one size whose codes are all known, as the encoder has them (``codes`` [H, W]
        and ``cond_codes``, the levels above, of each), in the order of ``batch_stepper``: each map in
        one parallel pass (``logits_full``, large efficient GEMMs) when they are small enough, else
        step by step."""
        height, width = codes[0].shape
        logits = len(codes) * height * width * self.codebook_size
        too_large = max(logits, ExactStepper.whole_cache_values(self, height, width)) > WHOLE_MAP_VALUES
        if too_large or self._band_rows(height, width) < height and self._reaches_below():
            return self.batch_stepper(height, width, cond_codes)
        known = torch.empty(
            len(codes), height, width, self.codebook_size, dtype=torch.int64, device=self.device
        )
        for i, (image_codes, image_cond) in enumerate(zip(codes, cond_codes, strict=True)):
            known[i] = self.logits_full(image_codes, image_cond)
        return KnownCodes(known)

    def logits_full(self, codes: Tensor, cond_codes: list[Tensor]) -> Tensor:
        """int64 logits [H, W, K] at FA of one image's codes [H, W], every position at once.

        Runs the stepper's evaluation on bands of whole rows instead of wavefronts (every layer reads
        only rows above and its own, or, with kernels wider than 3, one band of all the rows), so it
        equals what the stepper gives step by step (tested).
        """
        height, width = codes.shape
        stepper = ExactStepper(self, height, width, [cond_codes], whole=True)
        stepper.write_all_codes(codes.to(self.device, torch.int64))
        band = height if self._reaches_below() else self._band_rows(height, width)
        logits = torch.empty(height, width, self.codebook_size, dtype=torch.int64, device=self.device)
        for y in range(0, height, band):
            logits[y : y + band] = stepper.evaluate_rows(y, min(y + band, height)).view(
                -1, width, self.codebook_size
            )
        return logits

    def _band_rows(self, height: int, width: int) -> int:
        """Rows of a band of ``logits_full`` whose arrays hold about ``_CHUNK`` values."""
        widest = max(self.codebook_size, self.kernel_size * self.channels)
        return min(height, max(1, _CHUNK // (width * widest)))

    def _reaches_below(self) -> bool:
        """Whether a mask's taps reach the row below (kernels wider than 3: (1, -2) is on the same
        wavefront), so that a band of rows would read the next band's before it is evaluated."""
        return ExactStepper._reach(self)[1] > 0

    def _condition(self, cond_codes: list[Tensor], height: int, width: int) -> list[Tensor] | None:
        """Per gated block, ``cond_proj`` of the conditioning features at the level above's resolution.

        Returns ``_COND_DTYPE`` [ceil(H/2) * ceil(W/2), 2C] per block (None for the top prior): the
        values are clamped activations, below 2^20 in magnitude, and float32 halves the largest table
        a big image needs. The final nearest x2 upsampling of the float model commutes with the 1x1
        ``cond_proj``, so the value at (y, x) is row (y // 2) * ceil(W/2) + x // 2: a quarter of the
        work and memory.
        """
        n = len(self.cond_codebook_sizes)
        check_cond_codes(n, cond_codes)
        if n == 0:
            return None
        h2, w2 = -(-height // 2), -(-width // 2)
        ys, xs = torch.arange(h2, device=self.device), torch.arange(w2, device=self.device)
        embedded = []
        for i, (codes, table) in enumerate(zip(cond_codes, self.cond_embeds, strict=True)):
            f = 2 ** (n - i)
            codes = torch.as_tensor(codes, device=self.device)
            if tuple(codes.shape) != (-(-height // f), -(-width // f)):
                raise ValueError(f"upper level {i} has shape {tuple(codes.shape)} for a {height}x{width} map")
            if codes.numel() and (codes.min() < 0 or codes.max() >= self.cond_codebook_sizes[i]):
                raise ValueError(f"upper level {i} has codes outside its codebook")
            g = f // 2  # nearest upsampling by g to this level's half resolution
            embedded.append(table[codes[ys // g][:, xs // g]])
        features = torch.cat(embedded, dim=-1)  # [h2, w2, n * D]
        c = self.cond_conv(features.view(h2 * w2, -1))
        for block in self.cond_stack:
            h = self._conv_full(block.conv1, _elu(c).view(h2, w2, -1))
            h = self._conv_full(block.conv2, _elu(h).view(h2, w2, -1))
            c = _clamp(c + h)
        return [_linear_rows(block.cond_proj, c, _COND_DTYPE) for block in self.blocks]

    @staticmethod
    def _conv_full(layer: _Linear, features: Tensor) -> Tensor:
        """A zero-padded 3x3 ``layer`` at every position of float64 features [h, w, C] -> [h * w, out]."""
        h, w, _ = features.shape
        source = _padded(features, 1)
        ys = torch.arange(h, device=features.device).repeat_interleave(w)
        xs = torch.arange(w, device=features.device).repeat(h)
        base = (ys + 1) * (w + 2) + xs + 1
        return _gathered(layer, source, base[:, None] + _tap_index(_all_taps(3), w + 2, features.device))


WHOLE_MAP_VALUES = 2**24
"""Largest positions x K of a map that the encoder evaluates in one pass (its logits then take at most
128 MiB), and largest size of each of its caches (in values)."""

_SLIDE = 32
"""Steps a stepper's caches hold beyond the ones a layer reads (more when a layer reads further back),
before they slide back."""


class KnownCodes:
    """The stepper interface over logits computed in advance (``ExactPrior.encoder_stepper``)."""

    def __init__(self, logits: Tensor):
        self._logits = logits  # int64 [B, H, W, K]
        _, self.height, self.width, self._k = logits.shape
        self.n_steps = order.n_steps(self.height, self.width)

    def positions(self, t: int) -> tuple[Tensor, Tensor]:
        return order.wavefront(t, self.height, self.width)

    def freqs(self, t: int) -> np.ndarray:
        """Position by position, image by image within each, as ``ExactStepper.freqs``."""
        ys, xs = (index.to(self._logits.device) for index in self.positions(t))
        logits = self._logits[:, ys, xs].transpose(0, 1).reshape(-1, self._k)
        return frequencies(logits).cpu().numpy()

    def set_codes(self, t: int, codes: Tensor | np.ndarray) -> None:
        """Nothing to do: the logits already saw every code."""

    def on_map(self, t: int) -> None:
        """Every position lies on its map (``ExactStepper.on_map``)."""


class _RowTaps(NamedTuple):
    """The taps of a masked convolution in one kernel row: ``count`` neighbouring cache slots."""

    shift: int  # cache cells from a position to its first tap: dy * slots + dx_first + 2 dy
    width: int  # count * C input values, contiguous in the cache
    rows: slice  # the rows of the layer's weight that multiply them


class _Sites(NamedTuple):
    """Positions evaluated together, and how they lie in every cache.

    A wavefront (``size`` (n B,)) or a band of whole rows (``size`` (h, W)): position i sits at cache
    cell ``first + sum(i_k stride_k)``, in slot ``slot`` (one for a wavefront, one per position for a
    band). ``mask``: 1 for the positions whose values the caches keep, 0 for those to be left as the
    zero padding (a :class:`ColumnStepper`'s rows off the map, or positions off a smaller map of a
    stepper of maps of several sizes); None keeps them all.
    """

    ys: Tensor  # [n] rows, flattened in ``size`` order
    xs: Tensor  # [n] columns
    images: Tensor  # [n] the image of each position
    size: tuple[int, ...]
    stride: tuple[int, ...]
    first: int
    slot: int | Tensor
    mask: Tensor | None = None
    limits: Tensor | None = None
    """[n, 2, 1] the height and width of the map each position's attention sees; None: the stepper's."""


class ExactStepper:
    """Frequency tables of one code map, one wavefront step at a time, for encoder and decoder alike.

    Call ``freqs(t)`` and then ``set_codes(t, codes)`` for t = 0, 1, ..., n_steps - 1. Every layer whose
    output is read at other positions (conv inputs after ELU, attention keys and values, code
    embeddings) has a cache; step t evaluates each layer only at the wavefront's positions, reading its
    taps from the previous layer's cache: mask "B" taps on the same wavefront are already written,
    because each layer runs for the whole wavefront before the next one.

    A cache is sheared by the decode order: ``[(top + H + bottom) B, slots, C]`` integers in float64
    (float32 in a ``whole`` stepper), where position (y, x) of image b (of B evaluated together) lies
    in row ``(top + y) B + b`` (zero rows above and below, for taps off the map) and slot
    ``x + 2 y - origin``, its step. A wavefront of all B images is then consecutive rows of one
    slot, and a kernel row's taps of it are neighbouring slots of the rows above or of its own: every
    convolution reads its inputs as strided views (one GEMM per kernel row), with no gather. The
    slots hold only the recent steps: taps reach at most ``lag`` steps back (3 for 3x3 kernels, 3r
    for an attention radius r), so when step t runs past the last slot the caches keep steps
    ``t - lag .. t - 1`` in their first slots and clear the rest. Cells outside the map are never
    written and read as the zero padding. Memory grows with the map's height only.

    With B images, the tables of step t are [n_t B, K] and its codes n_t B, position by position and
    image by image within a position: the same integers as each image's own stepper gives.
    """

    def __init__(
        self,
        prior: ExactPrior,
        height: int,
        width: int,
        cond_codes: list[list[Tensor]],
        whole: bool = False,
        sizes: list[tuple[int, int]] | None = None,
    ):
        """``cond_codes``: the levels above of each image; ``whole``: one image, a slot for every step
        (the caches never slide), to evaluate bands of whole rows; ``sizes``: the (h, w) of each
        image's map, at most height x width, when they differ (None: all height x width)."""
        if height < 1 or width < 1:
            raise ValueError(f"empty map {height}x{width}")
        if not cond_codes or (whole and len(cond_codes) > 1):
            raise ValueError(f"{len(cond_codes)} images for a {'whole' if whole else 'batch'} stepper")
        if sizes is not None and (
            len(sizes) != len(cond_codes) or not all(1 <= h <= height and 1 <= w <= width for h, w in sizes)
        ):
            raise ValueError(
                f"sizes {sizes} must give each of {len(cond_codes)} maps, within {height}x{width}"
            )
        self.prior, self.height, self.width = prior, height, width
        self.batch = batch = len(cond_codes)
        self.n_steps = order.n_steps(height, width)
        device, channels, k = prior.device, prior.channels, prior.kernel_size
        taps_a, taps_b = _masked_offsets(k, first_layer=True), _masked_offsets(k, first_layer=False)
        self._top, bottom, self._lag = self._reach(prior)
        self._slots = self._slot_count(whole)
        self._origin = -self._lag  # the step held in slot 0
        # A band's taps are copied out anyway (they overlap), so a whole map's caches can hold its
        # activations (integers below 2**20) as float32, at half the memory.
        dtype = torch.float32 if whole else torch.float64
        n_caches = 1 + 2 * len(prior.blocks) + 2 * len(prior.attentions)
        rows = (self._top + height + bottom) * batch
        self._memory = torch.zeros(n_caches, rows, self._slots, channels, dtype=dtype, device=device)
        self._caches = list(self._memory)
        self._embedded = self._caches[0]
        pairs = list(zip(self._caches[1::2], self._caches[2::2], strict=True))
        self._block_inputs, self._keys_values = pairs[: len(prior.blocks)], pairs[len(prior.blocks) :]
        self._taps_a, self._taps_b = self._row_taps(taps_a), self._row_taps(taps_b)
        self._offset_cells = torch.tensor(
            [dy * batch * self._slots + order.step_of(dy, dx) for dy, dx in prior.attention_offsets],
            device=device,
        )
        self._offsets = torch.tensor(prior.attention_offsets, dtype=torch.int64, device=device).view(-1, 2)
        self._sizes = (
            None if sizes is None or set(sizes) == {(height, width)} else torch.tensor(sizes, device=device)
        )
        shapes = [(height, width)] * batch if self._sizes is None else sizes
        per_image = [prior._condition(codes, h, w) for codes, (h, w) in zip(cond_codes, shapes, strict=True)]
        self._cond = (
            None if per_image[0] is None else [torch.cat(tables) for tables in zip(*per_image, strict=True)]
        )
        self._cond_width = -(-width // 2)
        self._cond_size = -(-height // 2) * self._cond_width
        if self._sizes is not None:  # each image's conditioning table: its first row and its width
            cond_widths = [-(-w // 2) for _, w in sizes]
            cond_sizes = [
                -(-h // 2) * cond_width for (h, _), cond_width in zip(sizes, cond_widths, strict=True)
            ]
            self._cond_firsts = torch.tensor([0, *itertools.accumulate(cond_sizes)][:-1], device=device)
            self._cond_widths = torch.tensor(cond_widths, device=device)
            self._cond_last = sum(cond_sizes) - 1

        # All positions sorted by step, rows ascending within a step (the order of order.wavefront).
        steps = order.step_map(height, width).flatten()
        perm = torch.argsort(steps, stable=True)
        self._ys = (perm // width).repeat_interleave(batch).to(device)
        self._xs = (perm % width).repeat_interleave(batch).to(device)
        self._images = torch.arange(batch, device=device).repeat(height * width)
        self._on_map = self._limits = None  # when the sizes differ:
        if self._sizes is not None:
            sizes = self._sizes[self._images]
            on_map = (self._ys < sizes[:, 0]) & (self._xs < sizes[:, 1])
            self._on_map = on_map.to(torch.float64)[:, None]  # 1.0 where a position lies on its map
            # the map each position's attention sees: its own, or for one off it, the largest
            largest = torch.tensor([height, width], device=device)
            self._limits = torch.where(on_map[:, None], sizes, largest)[:, :, None]
        bounds = torch.cumsum(torch.bincount(steps, minlength=self.n_steps), 0).mul(batch).tolist()
        self._bounds = [0, *bounds]
        self._computed = 0  # steps whose tables were computed
        self._known = 0  # steps whose codes were set

    @staticmethod
    def _reach(prior: ExactPrior) -> tuple[int, int, int]:
        """Rows above and below, and steps back, that the prior's taps reach: (top, bottom, lag).

        (Kernels wider than 3 reach the row below: (1, -2) is on the same wavefront.)
        """
        k = prior.kernel_size
        offsets = _masked_offsets(k, first_layer=True) + _masked_offsets(k, first_layer=False)
        offsets += prior.attention_offsets
        dys = [dy for dy, _ in offsets]
        return max(0, -min(dys)), max(0, max(dys)), max(-order.step_of(dy, dx) for dy, dx in offsets)

    def _slot_count(self, whole: bool) -> int:
        """Slots of every cache: a slot for every step of a ``whole`` map; else the steps the taps
        reach back and at least as many more, so that sliding copies the last ``lag`` slots to the
        first without overlap."""
        return self.n_steps + self._lag if whole else self._lag + max(_SLIDE, self._lag)

    @classmethod
    def whole_cache_values(cls, prior: ExactPrior, height: int, width: int) -> int:
        """Values in one cache of a ``whole`` stepper of a height x width map."""
        top, bottom, lag = cls._reach(prior)
        return (top + height + bottom) * (order.n_steps(height, width) + lag) * prior.channels

    def _row_taps(self, taps: list[tuple[int, int]]) -> list[_RowTaps]:
        """Group a mask's taps (row-major) by kernel row; in each, the columns are consecutive."""
        c, groups, start = self.prior.channels, [], 0
        for dy in sorted({dy for dy, _ in taps}):
            dxs = [dx for tap_dy, dx in taps if tap_dy == dy]
            assert dxs == list(range(dxs[0], dxs[0] + len(dxs))), "a mask row's taps are contiguous"
            shift = dy * self.batch * self._slots + order.step_of(dy, dxs[0])
            groups.append(_RowTaps(shift, len(dxs) * c, slice(start * c, (start + len(dxs)) * c)))
            start += len(dxs)
        return groups

    def positions(self, t: int) -> tuple[Tensor, Tensor]:
        """Rows and columns of the codes of step ``t`` (``order.wavefront``), on the CPU."""
        return order.wavefront(t, self.height, self.width)

    def _cell(self, y: int, x: int) -> int:
        """The cache cell (row-major over [rows, slots]) of position (y, x) of the first image."""
        return (self._top + y) * self.batch * self._slots + order.step_of(y, x) - self._origin

    def _first_row(self, t: int) -> int:
        """The first row with a position at step t (``order.wavefront``)."""
        return max(0, -(-(t - self.width + 1) // order.SLOPE))

    def _wavefront(self, t: int) -> _Sites:
        lo, hi = self._bounds[t], self._bounds[t + 1]
        y_first = self._first_row(t)
        first = self._cell(y_first, t - order.SLOPE * y_first)
        where = slice(lo, hi)
        sites = self._ys[where], self._xs[where], self._images[where]
        mask = limits = None  # all on the map, unless the maps' sizes differ
        if self._on_map is not None:
            mask, limits = self._on_map[where], self._limits[where]
        return _Sites(*sites, (hi - lo,), (self._slots,), first, t - self._origin, mask, limits)

    def on_map(self, t: int) -> np.ndarray | None:
        """Which of the n_t B positions of step ``t`` lie on their image's map (None: all of them).
        With maps of several sizes, the tables of the others are computed and ignored, their codes
        may be anything, and what they write is kept as zeros, the padding off a map."""
        if self._on_map is None:
            return None
        return self._on_map[self._bounds[t] : self._bounds[t + 1], 0].cpu().numpy() > 0

    def _rows(self, y_start: int, y_stop: int) -> _Sites:
        """The positions of rows ``y_start .. y_stop - 1`` (a ``whole`` stepper's)."""
        ys = torch.arange(y_start, y_stop, device=self.prior.device).repeat_interleave(self.width)
        xs = torch.arange(self.width, device=self.prior.device).repeat(y_stop - y_start)
        size, stride = (y_stop - y_start, self.width), (self._slots + order.SLOPE, 1)
        slot = xs + order.SLOPE * ys - self._origin
        return _Sites(ys, xs, torch.zeros_like(ys), size, stride, self._cell(y_start, 0), slot)

    def freqs(self, t: int) -> np.ndarray:
        """int64 [n_t B, K] frequency tables of the codes of step ``t``, in ``positions(t)`` order (and
        image by image within each position)."""
        self._check_tables_step(t)
        self._slide(t)
        sites = self._wavefront(t)
        self._computed += 1
        if len(sites.ys) == 0:  # a step without codes (a map one column wide has them at odd steps)
            return np.zeros((0, self.prior.codebook_size), dtype=np.int64)
        return _frequencies(self._evaluate(sites)).to(torch.int64).cpu().numpy()

    def set_codes(self, t: int, codes: Tensor | np.ndarray) -> None:
        """Record the n_t B codes of step ``t`` (in the order of its tables), after its tables."""
        self._check_codes_step(t)
        sites = self._wavefront(t)
        codes = torch.as_tensor(codes, device=self.prior.device).to(torch.int64).reshape(-1)
        if len(codes) != len(sites.ys):
            raise ValueError(f"step {t} has {len(sites.ys)} codes, got {len(codes)}")
        self._write_codes(sites, codes)
        self._known += 1

    def _check_tables_step(self, t: int) -> None:
        if not 0 <= t < self.n_steps:
            raise ValueError(f"step {t} outside 0..{self.n_steps - 1}")
        if t != self._computed or self._known < t:
            raise ValueError(f"tables of step {t} asked after {self._computed} steps, {self._known} known")

    def _check_codes_step(self, t: int) -> None:
        if t != self._known or t >= self._computed:
            raise ValueError(f"codes of step {t} given after {self._known} steps, {self._computed} computed")

    def write_all_codes(self, codes: Tensor) -> None:
        """Enter every code [H, W] at once (a ``whole`` stepper, before ``evaluate_rows``)."""
        self._write_codes(self._rows(0, self.height), codes.reshape(-1))

    def evaluate_rows(self, y_start: int, y_stop: int) -> Tensor:
        """Logits [n, K] (integer-valued float64) of rows ``y_start .. y_stop - 1``, whose codes and
        rows above were entered and evaluated (a ``whole`` stepper)."""
        return self._evaluate(self._rows(y_start, y_stop))

    def _check_code_range(self, codes: Tensor) -> None:
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.prior.codebook_size):
            raise ValueError(f"codes must lie in 0..{self.prior.codebook_size - 1}")

    def _write_codes(self, sites: _Sites, codes: Tensor) -> None:
        self._check_code_range(codes)
        self._store(self._embedded, sites, self.prior.embed.index_select(0, codes))

    def _slide(self, t: int) -> None:
        """Before step t: if its slot is past the last, keep the steps its taps read and clear the rest."""
        if t - self._origin < self._slots:
            return
        kept = slice(t - self._lag - self._origin, t - self._origin)
        self._memory[:, :, : self._lag] = self._memory[:, :, kept]
        self._memory[:, :, self._lag :] = 0
        self._origin = t - self._lag

    @staticmethod
    def _cells(cache: Tensor, sites: _Sites, shift: int, width: int) -> Tensor:
        """[*size, width] strided view of the cache values from ``shift`` cells after each site."""
        c = cache.shape[2]
        strides = tuple(s * c for s in sites.stride) + (1,)
        return cache.as_strided(
            (*sites.size, width), strides, cache.storage_offset() + (sites.first + shift) * c
        )

    def _view(self, cache: Tensor, sites: _Sites, shift: int, width: int) -> Tensor:
        """float64 [n, width] of the cache values from ``shift`` cells after each site: a strided view for
        a wavefront (float64 caches), one float64 copy for a band of rows (float32 caches, overlapping
        windows)."""
        taps = self._cells(cache, sites, shift, width)
        return taps if len(sites.size) == 1 else taps.to(torch.float64).view(-1, width)

    def _store(self, cache: Tensor, sites: _Sites, values: Tensor) -> None:
        if sites.mask is not None:
            values = values * sites.mask
        cells = self._cells(cache, sites, 0, cache.shape[2])
        cells.copy_(values.view(cells.shape))

    def _conv(self, layer: _Linear, cache: Tensor, sites: _Sites, taps: list[_RowTaps]) -> Tensor:
        """A masked convolution at the sites: one GEMM per kernel row, then the rounding of ``_Linear``."""
        out = None
        for tap in taps:
            inputs, weight = self._view(cache, sites, tap.shift, tap.width), layer.weight[tap.rows]
            out = torch.addmm(layer.bias_low, inputs, weight) if out is None else out.addmm_(inputs, weight)
        return layer.finish(out)

    def _evaluate(self, sites: _Sites) -> Tensor:
        """Logits [n, K] (integer-valued float64) at the sites, all layers in order, writing the caches
        there.

        Every position that a tap reads must be final: it is one of the sites or was evaluated before.
        """
        prior, ys, xs = self.prior, sites.ys, sites.xs
        x = self._conv(prior.input_conv, self._embedded, sites, self._taps_a)
        if self._cond is not None and self._sizes is None:
            cond_rows = sites.images * self._cond_size + (ys // 2) * self._cond_width + xs // 2
        elif self._cond is not None:  # positions off their map read any row in range
            cond_rows = (
                self._cond_firsts[sites.images] + (ys // 2) * self._cond_widths[sites.images] + xs // 2
            )
            cond_rows = cond_rows.clamp_(max=self._cond_last)
        if prior.attentions:
            rows = (ys + self._top) * self.batch + sites.images
            cells = rows * self._slots + sites.slot
            oy, ox = ys[:, None] + self._offsets[:, 0], xs[:, None] + self._offsets[:, 1]
            heights, widths = (self.height, self.width) if sites.limits is None else sites.limits.unbind(1)
            valid = (oy >= 0) & (oy < heights) & (ox >= 0) & (ox < widths)  # [n, n_off]
            index_attn = cells[:, None] + self._offset_cells if len(sites.size) == 1 else None
        for i, (block, (inputs, middles)) in enumerate(zip(prior.blocks, self._block_inputs, strict=True)):
            self._store(inputs, sites, _elu(x))
            self._store(middles, sites, _elu(self._conv(block.conv1, inputs, sites, self._taps_b)))
            h = self._conv(block.conv2, middles, sites, self._taps_b)
            if self._cond is not None:
                h = _clamp(h.add_(self._cond[i].index_select(0, cond_rows)))
            x = _gated_residual(x, h)
            if prior.attention_every and (i + 1) % prior.attention_every == 0:
                j = (i + 1) // prior.attention_every - 1
                attn, (keys, values) = prior.attentions[j], self._keys_values[j]
                self._store(keys, sites, attn.key(x))
                self._store(values, sites, attn.value(x))
                if len(sites.size) == 1:  # a wavefront
                    keys, values = keys.view(-1, prior.channels), values.view(-1, prior.channels)
                    x = _attend(attn, keys, values, x, index_attn, valid)
                else:
                    x = self._attend_band(attn, keys, values, x, sites, valid)
        for block in prior.out_blocks:
            x = _clamp(x.add_(block.conv2(_elu(block.conv1(_elu(x))))))
        return prior.out_conv(_elu(x))

    def _attend_band(
        self, attn: _Attention, keys: Tensor, values: Tensor, x: Tensor, sites: _Sites, valid: Tensor
    ) -> Tensor:
        """:func:`_attend` at a band of whole rows, from the caches ``keys`` and ``values`` [rows, slots,
        C] (a ``whole`` stepper's, float32).

        The keys (and values) of one offset at all the band's positions are one strided view of a
        cache, so each offset is a product and a sum over the band, with nothing gathered: gathered,
        the windows of a band hold every cell once per offset, and copying them took half the top
        prior's time. The sums are exact as :func:`_attention_rows` says, in any order.
        """
        (h, w), c, heads = sites.size, x.shape[1], attn.n_heads
        keys, values = keys.double(), values.double()  # the same layout, cast once
        query = attn.query(x).view(h, w, heads, c // heads)
        shifts = self._offset_cells.tolist()
        raw = x.new_empty(len(shifts), h, w, heads)
        for j, shift in enumerate(shifts):
            torch.linalg.vecdot(query, self._cells(keys, sites, shift, c).view(query.shape), out=raw[j])
        raw = raw.permute(1, 2, 3, 0).contiguous().view(h * w, heads, len(shifts))
        weights = _attention_weights(raw, valid).view(h, w, heads, len(shifts))
        mixed = torch.zeros_like(query)
        for j, shift in enumerate(shifts):
            mixed.addcmul_(weights[..., j, None], self._cells(values, sites, shift, c).view(query.shape))
        return _clamp(x.add_(attn.proj(_round_shift(mixed, P_BITS).view(h * w, c))))


class ColumnStepper(ExactStepper):
    """An :class:`ExactStepper` whose every step runs the same operations on the same memory, so that a
    CUDA graph replays a step in one launch: on a GPU, launching the step's 200-odd small kernels one
    by one takes several times longer than running them.

    A step evaluates a whole slot column of the sheared caches: every row of the map, B images each.
    The rows whose position is off the map at step t (x = t - 2y outside 0..W-1) are computed too, and
    masked to zero when stored, so the caches keep their zero padding. The caches slide by one slot
    every step, so that step t always lies in slot ``lag``; the step counter lives on the device, and
    the codes and tables pass through fixed host buffers. The same integers as ``ExactStepper``, for
    2.4 times its positions on a Kodak image (the rows off the wavefront), which a GPU hardly notices.
    ``set_codes(t)`` launches step t + 1 at once and ``freqs(t + 1)`` waits for it, so that what the
    caller does in between (storing the codes, counting bits) runs while the GPU computes. On the CPU
    the step runs as it is (for the tests), without a graph.
    """

    def __init__(self, prior: ExactPrior, height: int, width: int, cond_codes: list[list[Tensor]]):
        super().__init__(prior, height, width, cond_codes)
        device, n = prior.device, height * self.batch
        self._column_ys = torch.arange(height, device=device).repeat_interleave(self.batch)
        self._column_images = torch.arange(self.batch, device=device).repeat(height)
        self._step = torch.full((), -1, dtype=torch.int64, device=device)  # the step last evaluated
        pinned = device.type == "cuda"
        self._codes_in = torch.zeros(n, dtype=torch.int64, pin_memory=pinned)
        self._codes = torch.zeros(n, dtype=torch.int64, device=device)
        self._tables = torch.zeros(n, prior.codebook_size, dtype=torch.int64, pin_memory=pinned)
        self._scratch = torch.empty_like(self._memory[:, :, 1:])
        self._graph = self._capture() if device.type == "cuda" else None
        self._launched = 0  # steps whose tables were launched

    def _slot_count(self, whole: bool) -> int:
        return self._lag + 1

    def _column(self) -> _Sites:
        """Every row at the step on the device's counter; the rows off the map masked."""
        xs = self._step - order.SLOPE * self._column_ys
        on_map = ((xs >= 0) & (xs < self.width)).to(torch.float64)[:, None]
        first = self._top * self.batch * self._slots + self._lag
        xs = xs.clamp(0, self.width - 1)  # off the map: any column, for in-range indices
        sites = self._column_ys, xs, self._column_images, (len(xs),), (self._slots,)
        return _Sites(*sites, first, self._lag, on_map)

    def _advance(self) -> None:
        """One step: enter the last step's codes, slide the caches by a slot, compute the next tables."""
        self._codes.copy_(self._codes_in, non_blocking=True)
        self._store(self._embedded, self._column(), self.prior.embed.index_select(0, self._codes))
        self._scratch.copy_(self._memory[:, :, 1:])
        self._memory[:, :, :-1].copy_(self._scratch)
        self._memory[:, :, -1].zero_()
        self._step.add_(1)
        self._tables.copy_(self._column_tables(), non_blocking=True)

    def _column_tables(self) -> Tensor:
        """int64 [n, K] tables of every row of the column at the device's step."""
        return _frequencies(self._evaluate(self._column())).to(torch.int64)

    def _capture(self) -> torch.cuda.CUDAGraph:
        """Record one step as a CUDA graph; the caches and counter are reset afterwards."""
        device = self.prior.device
        stream = _capture_stream(device)
        with torch.cuda.device(device):
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self._advance()  # allocates what a step needs outside the capture
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                self._advance()
        self._memory.zero_()
        self._step.fill_(-1)
        return graph

    def _row_range(self, t: int) -> slice:
        """The rows of the column (y B + b) that hold step t's positions."""
        y_first, y_last = self._first_row(t), min(self.height - 1, t // order.SLOPE)
        return slice(y_first * self.batch, max(y_first, y_last + 1) * self.batch)

    def __del__(self) -> None:
        """Wait for a step still running (a walk stopped by an error between ``set_codes`` and
        ``freqs``) before the host buffers it writes are freed."""
        if getattr(self, "_graph", None) is not None and self._launched > self._computed:
            torch.cuda.synchronize(self.prior.device)

    def _launch(self) -> None:
        """Start computing the tables of the next step (on the CPU: compute them)."""
        if self._graph is None:
            self._advance()
        else:
            with torch.cuda.device(self.prior.device):
                self._graph.replay()
                self._stream = torch.cuda.current_stream()  # the one to wait for
        self._launched += 1

    def freqs(self, t: int) -> np.ndarray:
        self._check_tables_step(t)
        if self._launched == t:  # the first step: nothing launched it
            self._launch()
        if self._graph is not None:
            self._stream.synchronize()
        self._computed += 1
        return self._tables[self._row_range(t)].numpy().copy()

    def set_codes(self, t: int, codes: Tensor | np.ndarray) -> None:
        self._check_codes_step(t)
        rows = self._row_range(t)
        codes = torch.as_tensor(codes).to("cpu", torch.int64).reshape(-1)
        if len(codes) != rows.stop - rows.start:
            raise ValueError(f"step {t} has {rows.stop - rows.start} codes, got {len(codes)}")
        self._check_code_range(codes)
        self._codes_in[rows] = codes
        self._known += 1
        if self._known < self.n_steps:
            self._launch()


@functools.cache
def _capture_stream(device: torch.device) -> torch.cuda.Stream:
    """The side stream on which every :class:`ColumnStepper` of ``device`` warms up and is captured:
    one for all, since cuBLAS keeps a workspace for every stream it has run on, for good."""
    return torch.cuda.Stream(device)


def _attend(
    attn: _Attention, keys: Tensor, values: Tensor, x: Tensor, index: Tensor, valid: Tensor
) -> Tensor:
    """x + proj(attention) of the positions x [n, C] (exact.md §6.3), whose keys and values are written.

    ``index`` [n, n_off] are the cells of the offsets in the flat float64 caches ``keys`` and ``values``
    [cells, C], ``valid`` whether they lie inside the map (the others may hold any integers: their
    weights are zero).
    """
    query = attn.query(x)
    rows = max(1, _CHUNK // (index.shape[1] * x.shape[1]))
    parts = [
        _attention_rows(q, _gather(keys, i), _gather(values, i), ok, attn.n_heads)
        for q, i, ok in zip(query.split(rows), index.split(rows), valid.split(rows), strict=True)
    ]
    out = parts[0] if len(parts) == 1 else torch.cat(parts)
    return _clamp(x.add_(attn.proj(out)))


def _attention_weights(raw: Tensor, valid: Tensor) -> Tensor:
    """The weights ``p = floor(exp[max - logit] 2^P_BITS / sum)`` [m, heads, n_off] from the products
    ``q . k`` [m, heads, n_off], with ``logit = rshr(q . k, FA)``; offsets outside the map (``valid``
    [m, n_off] false) are excluded."""
    ok = valid[:, None, :]
    logits = _round_shift(raw, FA).masked_fill_(~ok, _NEG)
    z = (logits.amax(dim=2, keepdim=True) - logits).clamp_(max=TABLE_SIZE - 1)
    e = _lookup(_exp_on(raw.device), z).masked_fill_(~ok, 0)
    return _floor_div(e * 2.0**P_BITS, e.sum(dim=2, keepdim=True))


def _attention_rows(query: Tensor, keys: Tensor, values: Tensor, valid: Tensor, heads: int) -> Tensor:
    """Attention averages [m, C] from queries [m, C], keys and values [m, n_off, C], all float64 at FA.

    ``logit = rshr(q . k, FA)`` per head; offsets outside the map (``valid`` false) are excluded;
    ``p = floor(exp[max - logit] 2^P_BITS / sum)``; ``out = rshr(sum p v, P_BITS)``. Both GEMMs
    are exact: ``|q . k| <= d 2^40 <= 2^50`` and ``|sum p v| <= 2^P_BITS 2^20 = 2^36``, and so is every
    other step in float64 (all values are integers, or halves before a floor, below 2^51). The heads are
    handled by block-diagonal operands, so the gathered keys and values are used as they lie.
    """
    m, n_off, c = keys.shape
    d = c // heads
    blocks = query.new_zeros(m, heads, heads, d)  # [m, head, head', d]: head's query where head == head'
    blocks.diagonal(dim1=1, dim2=2).copy_(query.view(m, heads, d).transpose(1, 2))
    raw = torch.bmm(blocks.view(m, heads, c), keys.transpose(1, 2))  # [m, heads, n_off]
    mixed = torch.bmm(_attention_weights(raw, valid), values).view(m, heads, heads, d)  # [m, head, head', d]
    out = mixed.diagonal(dim1=1, dim2=2).transpose(1, 2)  # [m, heads, d]: each head's own channels
    return _round_shift(out, P_BITS).reshape(m, c)
