"""Range coding of codes under integer frequency tables, through constriction's range coder.

The priors give every code an integer table ``f[0..K)`` with ``f[i] >= 1`` and
``sum(f) == 2**PRECISION``. The coder must use exactly these integers on every platform, but
constriction only takes float probabilities and quantizes them itself. Its ``perfect=False``
("fast", leaky) quantization, with the 24-bit precision of the default range coder, turns a row
``p[0..K)`` of non-negative floats into the cumulative table

    cdf[i] = trunc(float(p[0] + ... + p[i-1]) * ((2**24 - K) / (p[0] + ... + p[K-1]))) + i
    cdf[K] = 2**24

(``fast_quantized_cdf`` / ``LazyContiguousCategoricalEntropyModel`` in constriction 0.5): each
symbol first gets a probability of 1 and the rest, ``2**24 - K``, is shared out. We therefore pass
``p[i] = f[i] - 1``: then ``sum(p) == 2**24 - K``, the factor is exactly 1 and ``cdf[i]`` is
``f[0] + ... + f[i-1]``, so constriction codes with our integers unchanged. Every value involved is
an integer below ``2**24``, exact in float32 and float64 and under any order of summation, so the
identity does not depend on the platform. (Passing ``f / 2**24`` instead would move each cumulative
by up to about K/2.) The payload is constriction's stream of 32-bit words, stored little-endian.
"""

from __future__ import annotations

import constriction
import numpy as np

from vqcodec.errors import CorruptDataError

PRECISION = 24
"""Bits of the frequency tables: every table sums to ``2**PRECISION``."""

MAX_ALPHABET = 2**16
"""Largest codebook size (codes must fit the u16 code checksum)."""

_TOTAL = 2**PRECISION


def _check_freqs(freqs: np.ndarray) -> np.ndarray:
    """Validate an [n, K] integer table and return it as int64."""
    freqs = np.asarray(freqs)
    if freqs.ndim != 2 or not np.issubdtype(freqs.dtype, np.integer):
        raise ValueError(f"freqs must be a 2-D integer array, got {freqs.dtype} of shape {freqs.shape}")
    if not 2 <= freqs.shape[1] <= MAX_ALPHABET:
        raise ValueError(f"alphabet size must be in 2..{MAX_ALPHABET}, got {freqs.shape[1]}")
    if freqs.size and (freqs.min() < 1 or freqs.max() > _TOTAL):
        raise ValueError(f"frequencies must lie in 1..2**{PRECISION}")
    freqs = freqs.astype(np.int64, copy=False)
    if (freqs.sum(axis=1) != _TOTAL).any():
        raise ValueError(f"every frequency table must sum to 2**{PRECISION}")
    return freqs


def _constriction_probabilities(freqs: np.ndarray) -> np.ndarray:
    """The floats ``f - 1`` for which constriction's quantization is the identity (module docstring),
    as float32: integers below ``2**24`` are exact in it, and it is half the bytes to write and read."""
    return np.subtract(freqs, 1, dtype=np.float32, order="C")


def _check_symbols(symbols: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    symbols = np.asarray(symbols)
    if symbols.ndim != 1 or not np.issubdtype(symbols.dtype, np.integer):
        raise ValueError(f"symbols must be a 1-D integer array, got {symbols.dtype} of shape {symbols.shape}")
    if len(symbols) != len(freqs):
        raise ValueError(f"{len(symbols)} symbols but {len(freqs)} frequency tables")
    if symbols.size and (symbols.min() < 0 or symbols.max() >= freqs.shape[1]):
        raise ValueError(f"symbols must lie in 0..{freqs.shape[1] - 1}")
    return symbols.astype(np.int32)


def spans(freqs: np.ndarray, symbols: np.ndarray) -> np.ndarray:
    """Each symbol's span in its table, int64 [n, 2]: the frequencies below it and its own. A range
    coder's step depends on these two numbers only (``RangeEncoder.encode_spans``)."""
    rows = np.arange(len(symbols))
    below = np.cumsum(freqs, axis=1, dtype=np.int64) - freqs
    return np.stack([below[rows, symbols], freqs[rows, symbols]], axis=1).astype(np.int64)


def span_bits(spans: np.ndarray) -> float:
    """:func:`coded_bits` of the symbols whose ``spans`` a :class:`RangeEncoder` has just coded."""
    return float(-np.log2(spans[:, 1] / _TOTAL).sum())


class RangeEncoder:
    """Codes batches of symbols (one wavefront per call) into one range-coder payload."""

    def __init__(self) -> None:
        self._coder = constriction.stream.queue.RangeEncoder()
        self._family = constriction.stream.model.Categorical(perfect=False)

    def encode(self, symbols: np.ndarray, freqs: np.ndarray, valid: bool = False) -> None:
        """Append ``symbols[i]`` coded with table ``freqs[i]``, in order. ``valid``: ``freqs`` is an int64
        array of tables known to be valid (a prior's: exact.md §7 proves it), so it is not checked."""
        freqs = freqs if valid else _check_freqs(freqs)
        symbols = _check_symbols(symbols, freqs)
        self._coder.encode(symbols, self._family, _constriction_probabilities(freqs))

    def encode_spans(self, spans: np.ndarray) -> None:
        """Append the symbols whose spans in valid tables are ``spans`` int64 [n, 2] (``spans``): the
        same words as ``encode`` with their whole tables, from a three-entry table each, (below, own,
        above) with the symbol in the middle, or at an end where nothing lies below or above it (the
        other two entries then share the rest, each at least 1: an alphabet of at least 3)."""
        below, own = spans[:, 0], spans[:, 1]
        above = _TOTAL - below - own
        tables = np.stack([below, own, above], axis=1)
        first, last = below == 0, above == 0
        tables[first, 0], tables[first, 1], tables[first, 2] = own[first], 1, above[first] - 1
        tables[last, 0], tables[last, 1], tables[last, 2] = 1, below[last] - 1, own[last]
        symbols = (1 - first + last).astype(np.int32)
        if len(tables) and tables.min() < 1:
            raise ValueError("spans must lie in tables of at least 3 symbols, each of frequency at least 1")
        self._coder.encode(symbols, self._family, _constriction_probabilities(tables))

    def finish(self) -> bytes:
        """The payload: the coder's 32-bit words, little-endian. Call once, after the last symbol."""
        return self._coder.get_compressed().astype("<u4").tobytes()


class RangeDecoder:
    """Decodes a payload written by :class:`RangeEncoder`, given the same tables in the same order."""

    def __init__(self, data: bytes) -> None:
        if len(data) % 4:
            raise CorruptDataError(f"payload length {len(data)} is not a multiple of 4 bytes")
        words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
        self._coder = constriction.stream.queue.RangeDecoder(words)
        self._family = constriction.stream.model.Categorical(perfect=False)

    def decode(self, freqs: np.ndarray, valid: bool = False) -> np.ndarray:
        """Decode ``len(freqs)`` symbols, the i-th with table ``freqs[i]``; returns int64. ``valid`` as in
        ``RangeEncoder.encode``."""
        freqs = freqs if valid else _check_freqs(freqs)
        try:
            symbols = self._coder.decode(self._family, _constriction_probabilities(freqs))
        except Exception as error:  # constriction reports undecodable words as AssertionError
            raise CorruptDataError("entropy-coded payload is invalid") from error
        return symbols.astype(np.int64)

    def check_exhausted(self) -> None:
        """Raise if the payload holds more than the symbols decoded so far (a sign of corruption)."""
        if not self._coder.maybe_exhausted():
            raise CorruptDataError("entropy-coded payload has data left after the last code")


def ideal_bits(symbols: np.ndarray, freqs: np.ndarray) -> float:
    """The information content ``-sum log2(f[sym] / 2**PRECISION)``: what an ideal coder would spend."""
    freqs = _check_freqs(freqs)
    return coded_bits(_check_symbols(symbols, freqs), freqs)


def coded_bits(symbols: np.ndarray, freqs: np.ndarray) -> float:
    """:func:`ideal_bits` of symbols and tables that a :class:`RangeEncoder` or :class:`RangeDecoder` has just
    coded, without checking them again."""
    chosen = freqs[np.arange(len(symbols)), symbols]
    return float(-np.log2(chosen / _TOTAL).sum())
