"""Fuzzing the decoder: damaged files raise a VQZError (or, rarely, decode), never anything else.

Each case damages one of a few small valid files (1x1, 8x8 and 16x24 images, the tiny model of the
conformance vectors) by truncation, byte flips, random bytes, insertions or deletions. Half of the
cases recompute both CRCs afterwards, so the damage gets past them to the field checks, the model
checks, the range decoder and the code checksum. Every decode must end within a time bound and
without unbounded memory growth.

    VQCODEC_FUZZ_CASES=20000 VQCODEC_FUZZ_SEED=1 python -m pytest tests/test_fuzz.py -s
"""

from __future__ import annotations

import collections
import os
import resource
import signal
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vqcodec
from vqcodec.codec import Codec
from vqcodec.errors import VQZError

MODEL = Path(__file__).resolve().parents[1] / "bitstream_spec/vectors/tiny.safetensors"
CASES = int(os.environ.get("VQCODEC_FUZZ_CASES", "2000"))
SEED = int(os.environ.get("VQCODEC_FUZZ_SEED", "0"))
CASE_SECONDS = 10.0
"""Bound on one decode (a valid one takes well under a second): more means a hang."""
MAX_RSS_GROWTH = 512 * 2**20
"""Bound on the growth of the peak resident memory over the whole run."""


class Hang(Exception):
    pass


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec.open(MODEL)


def valid_files(codec: Codec) -> list[bytes]:
    rng = np.random.default_rng(SEED)
    files = []
    for width, height, mode in [(1, 1, "RGB"), (8, 8, "RGBA"), (16, 24, "RGB")]:
        pixels = rng.integers(0, 256, (height, width, len(mode)), dtype=np.uint8)
        pixels = (pixels // 64 * 64 + 32).astype(np.uint8)  # a few levels: partly opaque, partly not
        files.append(codec.compress(Image.fromarray(pixels, mode)))
    return files


def header_end(data: bytes) -> int:
    """Bytes up to and including the header CRC."""
    return next(
        n
        for n in range(32, len(data))
        if zlib.crc32(data[: n - 4]) == struct.unpack("<I", data[n - 4 : n])[0]
    )


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One random kind of damage; with probability 1/2 both CRCs are recomputed afterwards."""
    out = bytearray(data)
    kind = rng.integers(5)
    at = int(rng.integers(len(out)))
    if kind == 0:
        return bytes(out[:at])  # truncation: the CRC positions are gone, nothing to repair
    if kind == 1:
        for _ in range(int(rng.integers(1, 4))):
            out[int(rng.integers(len(out)))] ^= 1 << int(rng.integers(8))
    elif kind == 2:
        out[at] = int(rng.integers(256))
    elif kind == 3:
        out[at:at] = rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8).tobytes()
    else:
        del out[at : at + int(rng.integers(1, 9))]
    if rng.integers(2) and len(out) > 8:
        end = header_end(data)
        if end <= len(out) - 4:
            out[end - 4 : end] = struct.pack("<I", zlib.crc32(out[: end - 4]))
            out[-4:] = struct.pack("<I", zlib.crc32(out[end:-4]))
    return bytes(out)


def _on_alarm(signum: int, frame: object) -> None:
    raise Hang


@pytest.mark.slow
def test_fuzz_decoder(codec: Codec):
    files = valid_files(codec)
    rng = np.random.default_rng(SEED)
    outcomes: collections.Counter[str] = collections.Counter()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    slowest = 0.0
    try:
        for case in range(CASES):
            data = mutate(files[case % len(files)], rng)
            start = time.perf_counter()
            signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
            try:
                image = vqcodec.decompress(data, model=codec)
                outcomes["decoded"] += 1
                assert image.size[0] * image.size[1] <= 16 * 24  # a valid file: one of ours, or as small
            except VQZError as error:
                outcomes[type(error).__name__] += 1
            except Hang:
                pytest.fail(f"case {case}: decoding took over {CASE_SECONDS} s: {data.hex()}")
            except Exception as error:
                pytest.fail(f"case {case}: {type(error).__name__}: {error} on {data.hex()}")
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            slowest = max(slowest, time.perf_counter() - start)
    finally:
        signal.signal(signal.SIGALRM, previous)
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    print(f"\n{CASES} cases: {dict(outcomes)}; slowest {slowest:.3f} s; RSS growth {growth / 2**20:.0f} MiB")
    assert growth < MAX_RSS_GROWTH
    assert outcomes["CorruptDataError"] > 0 and outcomes["FormatError"] > 0  # the damage reached deep
