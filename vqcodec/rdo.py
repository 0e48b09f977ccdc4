"""Rate-distortion-optimised code choice: entropy-constrained VQ in the encoder.

The VQ-VAE's quantiser takes the nearest codeword. A slightly farther codeword that the prior finds
much more likely can cost far fewer bits for little more distortion, so at each position of a level
the encoder may pick, among the ``CANDIDATES`` nearest codewords, the one minimising
``distance + λ · bits``: the squared distance to the encoder's latent vector, and ``-log2 p`` under
the prior's exact tables given the nearest codes around it (teacher forcing: a level's choice is one
walk of its known codes; a second pass with the tables of the chosen codes only moved along the
rate-distortion curve). Effort 1 chooses the bottom level's codes (most of the bits); effort 2 every
level's, top first, each lower level re-encoded from the codes chosen above it. The decoder and the
format are untouched: any codes make a valid file.

Every cost is an exact integer (distances at ``2 * FP`` fractional bits, bits in units of
``2**-RATE_BITS`` from a fixed table), so the choice, like the rest of the encoder, gives the same
bytes on every platform. The latent distance stands in for the squared error, so the choice saves
bits at equal PSNR but spends some at equal MS-SSIM, and it costs encoding time: the default is
effort 0 (measured in ``benchmarks/results/kodak/rdo.md``).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from vqcodec.coding.entropy import PRECISION

CANDIDATES = 8
"""Nearest codewords the choice considers at each position (32 chose the same codes on Kodak)."""

RATE_BITS = 10
"""Fractional bits of a code's cost in bits."""

EFFORTS = (0, 1, 2)
"""``--effort``: 0 takes the nearest codewords, as the VQ-VAE; 1 chooses the bottom level's codes; 2
chooses every level's, top first, re-encoding each lower level's latents from the codes chosen above."""

DEFAULT_EFFORT = 0

LAMBDA_BOTTOM = 0.02
"""λ of the bottom level: squared latent distance (the model's units) worth one bit. One value for
every quality: in a sweep on Kodak at qualities 3.5 and 4 it saved the most bits at equal PSNR, and
the quality's resampling, not λ, sets the rate."""

LAMBDA_ABOVE = 0.01
"""λ of the levels above the bottom (swept likewise, with the bottom level's choice after it)."""

_LOG2_MANTISSA = np.array(
    [round(2**RATE_BITS * math.log2(1 + i / 2**RATE_BITS)) for i in range(2**RATE_BITS)], np.int64
)
"""``log2(m)`` at RATE_BITS fractional bits for the mantissas m in [1, 2) by their top RATE_BITS bits
(the start of each interval, so that a power of two costs whole bits). No scaled value lies within
1e-5 of a rounding tie (a test checks), far beyond any platform log2's error: every platform gets
this table."""


def levels(effort: int, n_levels: int) -> list[int]:
    """The levels whose codes ``effort`` chooses, top first; ValueError for an effort outside
    ``EFFORTS``."""
    if isinstance(effort, bool) or not isinstance(effort, numbers.Integral) or effort not in EFFORTS:
        raise ValueError(f"effort must be one of {', '.join(map(str, EFFORTS))}, got {effort!r}")
    return [] if effort == 0 else [n_levels - 1] if effort == 1 else list(range(n_levels))


def bit_costs(freqs: np.ndarray) -> np.ndarray:
    """``-log2(f / 2**PRECISION)`` in units of ``2**-RATE_BITS`` bits (int64) of table entries ``f``
    (1 .. 2**PRECISION), from the exponent and a table of the mantissa's top bits."""
    mantissa, exponent = np.frexp(freqs.astype(np.float64))  # f = mantissa 2**exponent, 0.5 <= mantissa < 1
    index = (mantissa * 2 ** (RATE_BITS + 1)).astype(np.int64) - 2**RATE_BITS  # exact: a floor
    return (PRECISION - exponent + 1) * 2**RATE_BITS - _LOG2_MANTISSA[index]


def rate_weight(bottom: bool) -> int:
    """λ of the bottom level or of those above as an integer: distance units (``2**-2FP``) per cost unit
    (``2**-RATE_BITS`` bits)."""
    from vqcodec.exact.vqvae import FP  # torch: only where codes are chosen

    return round((LAMBDA_BOTTOM if bottom else LAMBDA_ABOVE) * 2 ** (2 * FP - RATE_BITS))


def choose(candidates: np.ndarray, distances: np.ndarray, freqs: np.ndarray, weight: int) -> np.ndarray:
    """The codes [n] minimising ``distance + weight * bit cost`` among ``candidates`` [n, M] (int64
    codewords, nearest first) with ``distances`` [n, M], under the tables ``freqs`` [n, K]; ties go to
    the nearer candidate."""
    costs = distances + weight * bit_costs(np.take_along_axis(freqs, candidates, axis=1))
    return candidates[np.arange(len(candidates)), costs.argmin(axis=1)]
