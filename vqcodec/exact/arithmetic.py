"""The integer arithmetic of exact inference (``bitstream_spec/exact.md`` §2, §4, §5, §7): normative.

A range decoder needs the encoder's frequency tables bit for bit: one float that differs by an ulp
(thread count, batch composition, CPU vs CUDA, summation order) changes a table, and every later
code decodes wrongly. So everything here is defined on integers:

* activations are integers in fixed point with ``FA`` fractional bits, clamped to ``|x| <= ACT_MAX``;
* every product multiplies 8-bit integers: layer inputs rounded to ``|q| <= Q_MAX`` (or ``0..255``)
  and weights ``|w| <= Q_MAX`` with a scale per output channel (§3, ``quantise.py``);
* the tables of §4 (ELU, sigmoid, exp) are defined mathematically and computed exactly in integers;
* everything else (bias, shifts, clamps, residual sums, gates, softmaxes) is integer arithmetic.

The activations are kept as integer-valued float64 tensors: every value and intermediate stays
below 2**53 in magnitude, so each float64 operation below (sums, products by powers of two, floors)
is exact, and the small per-step tensors never pay for conversions between int64 and float64.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from vqcodec.coding.entropy import MAX_ALPHABET, PRECISION

FA = 10
"""Fractional bits of every activation (and of the logits)."""

ACT_MAX = 2**20 - 1
"""Every layer's output is clamped to ``[-ACT_MAX, ACT_MAX]``."""

Q_MAX = 127
"""Largest magnitude of an 8-bit weight or layer input (format 2: every GEMM multiplies 8-bit integers)."""

Q_MAX_UNSIGNED = 255
"""Largest unsigned 8-bit layer input (the pixel decoder's convolutions after a ReLU)."""

Q_MAX_WIDE = 32767
"""Largest magnitude of a 16-bit layer input (the encoder's, exact.md §11: not normative)."""

T_MAX = 24
"""Largest output shift ``t_c`` of an 8-bit layer (the shift of all-zero and tiny channels)."""

DEFAULT_RANGE = 8
"""The range of a convolution's input, in real units, where the model file gives none."""

MAX_FAN_IN = 2**16
"""Largest number of products in one output: keeps every 8-bit accumulator below 127 * 255 * 2**16 < 2**31."""

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
    """Build the tables once per process, exactly, in Python integers.

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
def tables_on(device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """The int64 tables on ``device`` (ELU, sigmoid, exp)."""
    return tuple(torch.from_numpy(t.copy()).to(device) for t in tables())


@functools.cache
def exp_table(device: torch.device) -> Tensor:
    """The exp table as float64 on ``device`` (every entry is an integer below 2**21: exact)."""
    return tables_on(device)[2].double()


@functools.cache
def activation_tables(device: torch.device) -> tuple[Tensor, Tensor]:
    """ELU(x) and sig(x) 2^-FA for every activation x in [-ACT_MAX, ACT_MAX], float64 at index x + ACT_MAX.

    Every ELU and gate input is a clamped layer output, so one lookup in these 16 MiB tables replaces
    the comparison, negation and clamp of the exact.md definitions; the entries are those definitions'
    values, exact in float64.
    """
    elu, sigmoid, _ = (table.double() for table in tables_on(device))
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


def lookup(table: Tensor, index: Tensor) -> Tensor:
    """``table[index]`` for an integer-valued float64 ``index`` below 2**31 of any shape: an int32
    ``index_select``, which at a step's sizes on the CPU is faster than ``take``, and whose int32
    index casts faster than the int64 that ``take`` needs."""
    return table.index_select(0, index.to(torch.int32).view(-1)).view(index.shape)


def activation_lookup(table: Tensor, x: Tensor) -> Tensor:
    """One of :func:`activation_tables` at integer-valued float64 activations ``x``."""
    return lookup(table, x.add(float(ACT_MAX)))  # a float scalar: an int one is cast on every call


def elu(x: Tensor) -> Tensor:
    """Integer ELU of integer-valued float64 activations at FA."""
    return activation_lookup(activation_tables(x.device)[0], x)


def gated_residual(x: Tensor, h: Tensor) -> Tensor:
    """``clamp(x + rshr(a sig(b), FA))`` with ``[a, b] = h``, of float64 activations.

    ``x + a sig(b) 2^-FA`` is exact (below 2**32, with FA fractional bits), and adding 1/2 then
    flooring is the rounding shift, since x is an integer.
    """
    c = x.shape[1]
    sig = activation_lookup(activation_tables(h.device)[1], h[:, c:])
    return clamp(torch.addcmul(x, h[:, :c], sig).add_(0.5).floor_())


def round_shift(x: Tensor, s: int) -> Tensor:
    """``rshr(x, s) = floor((x + 2**(s - 1)) / 2**s)``, s >= 1, of integer-valued float64 ``|x| < 2**52``:
    rounds half up (a floor would bias every layer)."""
    return x.mul(2.0**-s).add_(0.5).floor_()


def floor_div(a: Tensor, b: Tensor) -> Tensor:
    """``a div b`` of integer-valued float64 ``0 <= a``, ``0 < b`` with ``a + b <= 2**53``, exact.

    The floor of the correctly rounded (IEEE) quotient: with ``n = a div b``, n and n + 1 are float64
    numbers and rounding is monotone, so the quotient rounds into ``[n, n + 1]``; it could only round
    up to n + 1 from within half an ulp, ``(n + 1) 2**-53``, below, but it lies at least ``1 / b``
    below, and ``1 / b <= (n + 1) 2**-53`` would need ``a > b n >= 2**53 - b``.
    """
    return torch.div(a, b).floor_()


def clamp(x: Tensor) -> Tensor:
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
    return float_frequencies(logits.double()).long()


def float_frequencies(logits: Tensor) -> Tensor:
    """:func:`frequencies` of integer-valued float64 logits, as float64.

    Every value is an integer below 2**53: ``e (2^24 - K) < 2**44`` and ``sum(e) < 2**36``.
    """
    k = logits.shape[1]
    z = (logits.amax(dim=1, keepdim=True) - logits).clamp_(max=TABLE_SIZE - 1)
    e = lookup(exp_table(logits.device), z)
    total = e.sum(dim=1, keepdim=True)
    freqs = floor_div(e.mul_(float(2**PRECISION - k)), total).add_(1.0)
    leftover = freqs.sum(dim=1, keepdim=True).neg_().add_(float(2**PRECISION))
    # argmax gives the first index of the largest logit, on every device
    return freqs.scatter_add_(1, logits.argmax(dim=1, keepdim=True), leftover)
