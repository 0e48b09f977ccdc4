"""Range coding with integer tables: round trips, the exact-integer guarantee, errors, overhead."""

from __future__ import annotations

import numpy as np
import pytest

from vqcodec.coding.entropy import (
    MAX_ALPHABET,
    PRECISION,
    RangeDecoder,
    RangeEncoder,
    coded_bits,
    ideal_bits,
    span_bits,
    spans,
)
from vqcodec.errors import CorruptDataError

TOTAL = 2**PRECISION
MASK = 2**64 - 1


def random_tables(rng: np.random.Generator, n: int, k: int, spread: float) -> np.ndarray:
    """Softmax of Gaussian logits quantized to tables that sum to 2**24, every entry >= 1."""
    logits = rng.normal(size=(n, k)) * spread
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    freqs = np.floor(p * (TOTAL - k)).astype(np.int64) + 1
    freqs[np.arange(n), freqs.argmax(axis=1)] += TOTAL - freqs.sum(axis=1)
    return freqs


def sample(rng: np.random.Generator, freqs: np.ndarray) -> np.ndarray:
    u = rng.integers(0, TOTAL, len(freqs))
    return (np.cumsum(freqs, axis=1) <= u[:, None]).sum(axis=1)


def symbols_with_ones(rng: np.random.Generator, freqs: np.ndarray) -> np.ndarray:
    """Random symbols, every third one a symbol of frequency 1 where the table has one."""
    symbols = rng.integers(0, freqs.shape[1], len(freqs))
    for i in range(0, len(freqs), 3):
        ones = np.flatnonzero(freqs[i] == 1)
        if ones.size:
            symbols[i] = rng.choice(ones)
    return symbols


def spec_encode(symbols: np.ndarray, freqs: np.ndarray) -> list[int]:
    """The encoder of bitstream_spec/vqz.md section 8.3, on the integers directly."""
    lower, rng, held, words = 0, MASK, None, []

    def flush(carry: bool) -> None:
        n, first = held
        if carry:
            words.extend([(first + 1) & 0xFFFFFFFF] + [0] * (n - 1))
        else:
            words.extend([first] + [0xFFFFFFFF] * (n - 1))

    for s, f in zip(symbols, freqs, strict=True):
        scale = rng >> PRECISION
        rng = scale * int(f[s])
        new = (lower + scale * int(f[:s].sum())) & MASK
        if held and (new + rng) & MASK > new:
            flush(new < lower)
            held = None
        lower = new
        if rng < 2**32:
            rng <<= 32
            word, lower = lower >> 32, (lower << 32) & MASK
            if held:
                held = (held[0] + 1, held[1])
            elif (lower + rng) & MASK > lower:
                words.append(word)
            else:
                held = (1, word)
    if rng == MASK:
        return words
    point = (lower + 2**32 - 1) & MASK
    if held:
        flush(point < lower)
    words.append(point >> 32)
    if ((lower + rng) & MASK) >> 32 == point >> 32:
        words.append(0)
    return words


def spec_decode(words: list[int], freqs: np.ndarray) -> list[int]:
    """The normative decoder of bitstream_spec/vqz.md section 8.2, including the end check."""
    pending = list(words)
    head = pending[:2]
    del pending[:2]
    point = (head[0] << 32 | head[1]) if len(head) == 2 else (head[0] << 32 if head else 0)
    lower, rng, out = 0, MASK, []
    for f in freqs:
        cum = np.concatenate([[0], np.cumsum(f)])
        scale = rng >> PRECISION
        q = ((point - lower) & MASK) // scale
        assert q < TOTAL
        s = int(np.searchsorted(cum, q, side="right")) - 1
        lower = (lower + scale * int(cum[s])) & MASK
        rng = scale * int(f[s])
        if rng < 2**32:
            lower, rng = (lower << 32) & MASK, rng << 32
            point = (point << 32) & MASK | (pending.pop(0) if pending else 0)
        out.append(s)
    assert not pending and (rng == MASK or (point - lower) & MASK < 2**33 - 1)
    return out


def round_trip(batches: list[tuple[np.ndarray, np.ndarray]]) -> bytes:
    encoder = RangeEncoder()
    for symbols, freqs in batches:
        encoder.encode(symbols, freqs)
    payload = encoder.finish()
    decoder = RangeDecoder(payload)
    for symbols, freqs in batches:
        np.testing.assert_array_equal(decoder.decode(freqs), symbols)
    decoder.check_exhausted()
    return payload


@pytest.mark.parametrize("k", [2, 3, 17, 256, 4096])
def test_round_trip_in_wavefront_batches(k: int) -> None:
    rng = np.random.default_rng(k)
    batches = []
    for n in [1, 0, 5, 40, 3, 120, 0, 64]:
        freqs = random_tables(rng, n, k, spread=float(rng.uniform(0.1, 8)))
        batches.append((symbols_with_ones(rng, freqs), freqs))
    round_trip(batches)


@pytest.mark.parametrize(
    "k, n, spread", [(2, 300, 0.5), (2, 50, 30.0), (17, 200, 6.0), (512, 100, 5.0), (MAX_ALPHABET, 12, 4.0)]
)
def test_coder_uses_the_integers_unchanged(k: int, n: int, spread: float) -> None:
    """constriction's words equal a pure-integer coder's: its quantization of ``f - 1`` is the identity."""
    rng = np.random.default_rng(n + k)
    freqs = random_tables(rng, n, k, spread)
    symbols = symbols_with_ones(rng, freqs)
    encoder = RangeEncoder()
    encoder.encode(symbols, freqs)
    payload = encoder.finish()
    words = np.frombuffer(payload, "<u4").tolist()
    assert words == spec_encode(symbols, freqs)
    assert spec_decode(words, freqs) == symbols.tolist()


@pytest.mark.parametrize("k", [2, MAX_ALPHABET])
def test_extreme_tables(k: int) -> None:
    """Uniform tables and tables with all but one entry equal to 1, coding every edge symbol."""
    uniform = np.full(k, TOTAL // k, dtype=np.int64)
    first_heavy = np.r_[TOTAL - (k - 1), np.ones(k - 1, dtype=np.int64)]
    last_heavy = first_heavy[::-1].copy()
    freqs = np.stack([uniform, first_heavy, last_heavy] * 4)
    symbols = np.array([0, k - 1, 0, k - 1, 0, k - 1, 1, 1, k - 2, k // 2, 0, 0])
    payload = round_trip([(symbols, freqs)])
    assert np.frombuffer(payload, "<u4").tolist() == spec_encode(symbols, freqs)


@pytest.mark.parametrize("k", [3, 4, 512, MAX_ALPHABET])
def test_spans_code_as_their_tables(k: int) -> None:
    """A symbol coded from its span alone (a three-entry table) gives the words its whole table gives:
    random tables, and the extreme ones with every edge symbol (nothing below or above it)."""
    rng = np.random.default_rng(k)
    random = random_tables(rng, 200, k, spread=4.0)
    first_heavy = np.r_[TOTAL - (k - 1), np.ones(k - 1, dtype=np.int64)]
    even = np.full(k, TOTAL // k)
    even[0] += TOTAL - even.sum()
    extreme = np.stack([first_heavy, first_heavy[::-1], even] * 2)
    freqs = np.concatenate([random, extreme])
    symbols = np.r_[symbols_with_ones(rng, random), [0, k - 1, k - 1, 0, 1, k - 2]]
    whole, alone = RangeEncoder(), RangeEncoder()
    whole.encode(symbols, freqs)
    alone.encode_spans(spans(freqs, symbols))
    assert alone.finish() == whole.finish()
    assert span_bits(spans(freqs, symbols)) == coded_bits(symbols, freqs)


def test_spans_of_two_symbol_tables_are_refused() -> None:
    """A span with one unit of frequency beside it has no three-entry table."""
    with pytest.raises(ValueError, match="at least 3 symbols"):
        RangeEncoder().encode_spans(np.array([[0, TOTAL - 1]]))


def test_empty_stream() -> None:
    assert RangeEncoder().finish() == b""
    decoder = RangeDecoder(b"")
    decoder.check_exhausted()


@pytest.mark.parametrize(
    "freqs, symbols",
    [
        (np.full((1, 1), TOTAL), [0]),  # K = 1
        (np.full((1, MAX_ALPHABET * 2), TOTAL // (MAX_ALPHABET * 2)), [0]),  # K too large
        (np.array([[TOTAL, 0]]), [0]),  # a zero frequency
        (np.array([[TOTAL + 1, -1]]), [0]),  # a negative frequency
        (np.array([[2, TOTAL - 1]]), [0]),  # sum off by one
        (np.array([TOTAL // 2, TOTAL // 2]), [0]),  # 1-D table
        (np.array([[0.5, 0.5]]) * TOTAL, [0]),  # float table
        (np.array([[TOTAL // 2, TOTAL // 2]]), [2]),  # symbol out of range
        (np.array([[TOTAL // 2, TOTAL // 2]]), [0, 1]),  # one table for two symbols
    ],
)
def test_invalid_tables_are_rejected(freqs: np.ndarray, symbols: list[int]) -> None:
    with pytest.raises(ValueError):
        RangeEncoder().encode(np.array(symbols), freqs)


def test_garbage_payload_raises_cleanly() -> None:
    rng = np.random.default_rng(7)
    freqs = random_tables(rng, 200, 64, spread=3.0)
    with pytest.raises(CorruptDataError):
        RangeDecoder(b"\x00" * 7)
    with pytest.raises(CorruptDataError):  # point - lower beyond the range: q >= 2**24
        RangeDecoder(b"\xff" * 40).decode(freqs)
    for trial in range(200):
        decoder = RangeDecoder(rng.integers(0, 256, 4 * int(rng.integers(0, 12)), dtype=np.uint8).tobytes())
        try:
            codes = decoder.decode(freqs)
            decoder.check_exhausted()
        except CorruptDataError:
            continue
        assert codes.shape == (200,) and codes.min() >= 0 and codes.max() < 64, trial


def test_trailing_words_are_detected() -> None:
    rng = np.random.default_rng(8)
    freqs = random_tables(rng, 100, 16, spread=2.0)
    symbols = sample(rng, freqs)
    encoder = RangeEncoder()
    encoder.encode(symbols, freqs)
    decoder = RangeDecoder(encoder.finish() + b"\x12\x34\x56\x78" * 3)
    np.testing.assert_array_equal(decoder.decode(freqs), symbols)
    with pytest.raises(CorruptDataError):
        decoder.check_exhausted()


def test_ideal_bits() -> None:
    freqs = np.array([[TOTAL // 2, TOTAL // 4, TOTAL // 4], [1, 1, TOTAL - 2]])
    assert ideal_bits(np.array([1, 0]), freqs) == pytest.approx(2 + PRECISION)


def test_overhead_over_ideal_is_small() -> None:
    """30k codes, K = 512, peaked tables: within 0.5 % plus a few bytes of the information content."""
    rng = np.random.default_rng(9)
    encoder, ideal = RangeEncoder(), 0.0
    for _ in range(30):
        freqs = random_tables(rng, 1000, 512, spread=4.0)
        symbols = sample(rng, freqs)
        encoder.encode(symbols, freqs)
        ideal += ideal_bits(symbols, freqs)
    actual = 8 * len(encoder.finish())
    assert ideal < actual <= 1.005 * ideal + 64
