"""The .vqz container: round trips, the size budget, and rejection of every kind of damage."""

from __future__ import annotations

import contextlib
import hashlib
import io
import struct
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest

from vqcodec.coding import container
from vqcodec.coding.container import (
    MAX_CHUNK_BYTES,
    MAX_PIXELS,
    MAX_SIDE,
    Chunk,
    ChunkType,
    ColourMode,
    Padding,
    VQZFile,
    model_id,
    read_stream,
)
from vqcodec.errors import (
    FormatError,
    ImageTooLargeError,
    ModelMismatchError,
    UnsupportedVersionError,
    VQZError,
)

DIGEST = hashlib.sha256(b"a model file").digest()
EXIF = b"II*\x00\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00"  # a TIFF header and an empty IFD0
XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"/>'


def plain(**changes) -> VQZFile:
    """A plain RGB 768 x 512 image with two levels and a 20 kB payload."""
    fields = dict(
        model_id=model_id(DIGEST),
        width=768,
        height=512,
        colour=ColourMode.RGB,
        padding=Padding.EDGE,
        level_shapes=((64, 96), (128, 192)),
        code_crc=0x12345678,
        payload=np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes(),
    )
    return VQZFile(**{**fields, **changes})


def with_chunks() -> VQZFile:
    """A small RGBA image with an alpha plane, an ICC profile, EXIF, XMP and an unknown ancillary chunk."""
    rng = np.random.default_rng(1)
    return plain(
        width=13,
        height=7,
        colour=ColourMode.RGBA,
        padding=Padding.REFLECT,
        level_shapes=((1, 1), (2, 4)),
        payload=rng.integers(0, 256, 24, dtype=np.uint8).tobytes(),
        alpha=rng.integers(0, 256, 13 * 7, dtype=np.uint8).tobytes(),
        icc=b"fake ICC profile",
        exif=EXIF,
        xmp=XMP,
        extra_chunks=(Chunk(0xF0, b"future"),),
    )


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append(value & 0x7F | (0x80 if value >= 0x80 else 0))
        value >>= 7
        if not value:
            return bytes(out)


def craft(
    version: int = 0x20,
    width_m1: bytes = varint(7),
    height_m1: bytes = varint(7),
    image: int = ColourMode.RGB,
    levels: tuple[tuple[int, int], ...] = ((1, 1), (2, 2)),
    chunks: tuple[tuple[int, bytes], ...] = (),
    payload: bytes = bytes(8),
    payload_len: int | None = None,
) -> bytes:
    """A file written straight from the spec's tables, with valid CRCs, for fields the API refuses."""
    header = (
        b"VQZ" + bytes((version,)) + model_id(DIGEST) + width_m1 + height_m1 + bytes((image, len(levels)))
    )
    header += b"".join(varint(h - 1) + varint(w - 1) for h, w in levels)
    header += bytes((1, 24)) + struct.pack("<I", 0) + varint(len(chunks))
    header += varint(len(payload) if payload_len is None else payload_len)
    header += struct.pack("<I", zlib.crc32(header))
    body = b"".join(bytes((t,)) + varint(len(d)) + d for t, d in chunks) + payload
    return header + body + struct.pack("<I", zlib.crc32(body))


def test_round_trip_plain() -> None:
    file = plain()
    assert VQZFile.from_bytes(file.to_bytes()) == file


def test_round_trip_with_chunks() -> None:
    file = with_chunks()
    assert VQZFile.from_bytes(file.to_bytes()) == file


def test_round_trip_grey_alpha_three_levels() -> None:
    file = plain(
        colour=ColourMode.LA,
        padding=Padding.ZERO,
        width=1,
        height=MAX_SIDE,
        level_shapes=((1, 1), (1, 2), (4, 4)),
        alpha=bytes(MAX_SIDE),
        payload=bytes(64),
    )
    assert VQZFile.from_bytes(file.to_bytes()) == file


def test_header_of_a_plain_rgb_image_is_small() -> None:
    file = plain()
    overhead = len(file.to_bytes()) - len(file.payload)
    assert overhead == 49  # the spec's worked example, section 4
    largest = plain(width=MAX_SIDE, height=MAX_PIXELS // MAX_SIDE, level_shapes=((1024, 2048), (2048, 4096)))
    assert len(largest.to_bytes()) - len(largest.payload) < 64


def test_spec_layout_matches_the_writer() -> None:
    assert VQZFile.from_bytes(craft()).to_bytes() == craft()


def test_every_truncation_is_rejected() -> None:
    data = with_chunks().to_bytes()
    for end in range(len(data)):
        with pytest.raises(VQZError):
            VQZFile.from_bytes(data[:end])


def test_every_single_byte_change_is_rejected() -> None:
    """Every byte is a signature byte, the version, or covered by a CRC-32 (which catches any one byte)."""
    data = bytearray(with_chunks().to_bytes())
    rng = np.random.default_rng(2)
    for position in range(len(data)):
        damaged = data.copy()
        damaged[position] ^= int(rng.integers(1, 256))
        with pytest.raises(VQZError):
            VQZFile.from_bytes(bytes(damaged))


def test_random_damage_never_escapes_as_another_exception() -> None:
    rng = np.random.default_rng(3)
    data = with_chunks().to_bytes()
    for _ in range(300):
        damaged = bytearray(data)
        for position in rng.integers(0, len(data), int(rng.integers(1, 6))):
            damaged[position] = int(rng.integers(0, 256))
        with contextlib.suppress(VQZError):
            VQZFile.from_bytes(bytes(damaged))
    for _ in range(300):
        noise = rng.integers(0, 256, int(rng.integers(0, 80)), dtype=np.uint8).tobytes()
        for candidate in (noise, b"VQZ\x10" + noise):
            with pytest.raises(VQZError):
                VQZFile.from_bytes(candidate)


@pytest.mark.parametrize(
    "width_m1, height_m1",
    [
        (varint(MAX_SIDE), varint(0)),  # one side too long
        (varint(MAX_SIDE - 1), varint(MAX_SIDE - 1)),  # too many pixels
        (varint(2**35 - 1), varint(2**35 - 1)),  # the largest varint
    ],
)
def test_huge_images_are_refused_before_allocation(width_m1: bytes, height_m1: bytes) -> None:
    data = craft(width_m1=width_m1, height_m1=height_m1, image=ColourMode.RGBA, payload_len=2**34)
    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLargeError):
            VQZFile.from_bytes(data)
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()


def test_huge_code_maps_are_refused() -> None:
    with pytest.raises(ImageTooLargeError):
        VQZFile.from_bytes(craft(levels=((1, 1), (MAX_SIDE + 1, 1))))


def test_unknown_ancillary_chunk_is_skipped_and_unknown_critical_refused() -> None:
    parsed = VQZFile.from_bytes(craft(chunks=((0xC3, b"later"),)))
    assert parsed.extra_chunks == (Chunk(0xC3, b"later"),)
    with pytest.raises(UnsupportedVersionError):
        VQZFile.from_bytes(craft(chunks=((0x43, b"later"),)))


def test_versions() -> None:
    assert VQZFile.from_bytes(craft(version=0x2F)).to_bytes() == craft()  # a newer minor is read
    with pytest.raises(UnsupportedVersionError):
        VQZFile.from_bytes(craft(version=0x30))
    with pytest.raises(UnsupportedVersionError):  # refused before anything else is read
        VQZFile.from_bytes(b"VQZ\x30")
    with pytest.raises(FormatError):
        VQZFile.from_bytes(craft(version=0x01))


@pytest.mark.parametrize("version", [0x10, 0x13])
def test_format_1_files_name_the_version_that_reads_them(version: int) -> None:
    """Format 1 computed with 15-bit weights and wide inputs: another arithmetic, whose files only
    vqcodec 0.1 decodes."""
    with pytest.raises(UnsupportedVersionError, match=r"1\.\d.*vqcodec 0\.1"):
        VQZFile.from_bytes(craft(version=version))
    with pytest.raises(UnsupportedVersionError, match="vqcodec 0.1"):
        VQZFile.from_bytes(b"VQZ" + bytes((version,)))


def test_container_does_not_import_torch() -> None:
    code = "import sys, vqcodec.coding.container; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


# --- RESAMPLE (since 1.1) ---------------------------------------------------------------------------------


def test_resampled_file_round_trips() -> None:
    file = plain(coded_size=(384, 256), level_shapes=((32, 48), (64, 96)))
    data = file.to_bytes()
    assert data[3] == 0x20 and plain().to_bytes()[3] == 0x20  # 2.0 defines every chunk of 1.x
    parsed = VQZFile.from_bytes(data)
    assert parsed == file
    assert (parsed.coded_width, parsed.coded_height) == (384, 256)
    assert (plain().coded_width, plain().coded_height) == (768, 512)


@pytest.mark.parametrize(
    ("coded", "message"),
    [((769, 256), "within"), ((384, 0), "within"), ((768, 512), "shrink")],
)
def test_coded_size_must_shrink_the_image(coded: tuple[int, int], message: str) -> None:
    with pytest.raises(FormatError, match=message):
        plain(coded_size=coded)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (varint(3) + varint(3) + b"\x00", "after its two sizes"),
        (varint(3), "two varints"),
        (varint(8) + varint(3), "within"),  # coded width 9 > width 8
    ],
)
def test_bad_resample_chunks_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        VQZFile.from_bytes(craft(version=0x20, chunks=((0x02, data),)))


def test_duplicate_resample_chunk_is_refused() -> None:
    chunk = (0x02, varint(3) + varint(3))
    with pytest.raises(FormatError, match="duplicate RESAMPLE"):
        VQZFile.from_bytes(craft(version=0x20, chunks=(chunk, chunk)))


# --- TILES (since 1.2) ------------------------------------------------------------------------------------


def test_tiled_file_round_trips() -> None:
    file = plain(tile=(192, 256), coded_size=(384, 256), level_shapes=((32, 48), (64, 96)))
    data = file.to_bytes()
    assert data[3] == 0x20
    assert VQZFile.from_bytes(data) == file
    assert VQZFile.from_bytes(plain(tile=(32, 512)).to_bytes()).tile == (32, 512) and plain().tile is None


@pytest.mark.parametrize(
    ("tile", "valid"),
    [
        ((0, 0), False),
        ((31, 256), False),  # narrower than 32 pixels
        ((32, 1000), True),  # as tall as the image or more: not cut that way
        ((767, 511), True),
        ((768, 512), False),  # the whole image
        ((10**6, 10**6), False),
    ],
)
def test_tiles_must_split_the_image(tile: tuple[int, int], valid: bool) -> None:
    if valid:
        assert plain(tile=tile).tile == tile
    else:
        with pytest.raises(FormatError, match="must split"):
            plain(tile=tile)


def test_tiles_of_a_thin_image_may_be_as_thin() -> None:
    assert plain(
        width=8, height=512, level_shapes=((64, 1), (128, 2)), tile=(8, 256), payload=bytes(64)
    ).tile == (8, 256)


@pytest.mark.parametrize(
    ("chunks", "message"),
    [
        (((0x03, varint(3) + varint(3) + b"\x00"),), "after its two sizes"),
        (((0x03, varint(3)),), "does not hold two varints"),
        (((0x03, varint(7) + varint(3)),), "must split"),  # 8 x 4 pixels: the whole 8 x 8 image wide
        (((0x03, varint(3) + varint(3)), (0x03, varint(3) + varint(3))), "duplicate TILES"),
    ],
)
def test_bad_tiles_chunks_are_refused(chunks: tuple[tuple[int, bytes], ...], message: str) -> None:
    with pytest.raises(FormatError, match=message):
        VQZFile.from_bytes(craft(version=0x20, chunks=chunks))


def test_tiles_must_be_whole_cells_of_the_model() -> None:
    plain(tile=(256, 256)).check_tile(8)
    plain().check_tile(8)
    with pytest.raises(ModelMismatchError, match="not multiples of the model's 16"):
        plain(tile=(256, 264)).check_tile(16)


# --- EXIF and XMP (since 1.3) -----------------------------------------------------------------------------


def test_metadata_round_trips() -> None:
    file = plain(icc=b"icc", exif=EXIF, xmp=XMP)
    data = file.to_bytes()
    assert data[3] == 0x20
    assert VQZFile.from_bytes(data) == file
    assert data.index(bytes((0x81, 3)) + b"icc") < data.index(bytes((0x82, len(EXIF))) + EXIF)
    assert data.index(bytes((0x82, len(EXIF))) + EXIF) < data.index(bytes((0x83, len(XMP))) + XMP)


def test_metadata_chunks_are_ancillary() -> None:
    """A decoder that does not know them (1.0 to 1.2 did not) skips them: the image decodes the same."""
    assert not Chunk(ChunkType.EXIF, EXIF).critical and not Chunk(ChunkType.XMP, XMP).critical
    parsed = VQZFile.from_bytes(craft(version=0x20, chunks=((0x82, EXIF), (0x83, XMP))))
    assert (parsed.exif, parsed.xmp, parsed.extra_chunks) == (EXIF, XMP, ())


@pytest.mark.parametrize(
    ("chunks", "message"),
    [
        (((0x82, b"Exif\x00\x00" + EXIF),), "TIFF header"),  # JPEG's prefix is not part of the chunk
        (((0x82, EXIF[:7]),), "TIFF header"),
        (((0x82, b"II\x00*" + EXIF[4:]),), "TIFF header"),  # little-endian mark, big-endian 42
        (((0x83, b""),), "XMP packet is empty"),
        (((0x82, EXIF), (0x82, EXIF)), "duplicate EXIF"),
        (((0x83, XMP), (0x83, XMP)), "duplicate XMP"),
    ],
)
def test_bad_metadata_chunks_are_refused(chunks: tuple[tuple[int, bytes], ...], message: str) -> None:
    with pytest.raises(FormatError, match=message):
        VQZFile.from_bytes(craft(version=0x20, chunks=chunks))


def test_writer_refuses_bad_metadata() -> None:
    for changes in (
        dict(exif=b"Exif\x00\x00" + EXIF),
        dict(exif=b""),
        dict(xmp=b""),
        dict(extra_chunks=(Chunk(0x82, EXIF),)),
    ):
        with pytest.raises(FormatError):
            plain(**changes)
    assert plain(exif=b"MM\x00*\x00\x00\x00\x08").exif == b"MM\x00*\x00\x00\x00\x08"


class Endless(io.RawIOBase):
    """A stream of ``prefix`` and then zeros without end, counting what was read."""

    def __init__(self, prefix: bytes = b"") -> None:
        self.prefix, self.read_bytes = prefix, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        n = len(buffer)
        head = self.prefix[self.read_bytes : self.read_bytes + n]
        buffer[: len(head)] = head
        buffer[len(head) : n] = bytes(n - len(head))
        self.read_bytes += n
        return n


def test_read_stream_reads_what_the_file_declares_and_one_byte() -> None:
    data = with_chunks().to_bytes()
    stream = io.BytesIO(data + b"more")
    assert read_stream(stream) == data + b"m" and stream.tell() == len(data) + 1
    with pytest.raises(FormatError, match="trailing data"):
        VQZFile.from_bytes(read_stream(io.BytesIO(data + b"more")))
    assert read_stream(io.BytesIO(data[:-5])) == data[:-5]  # from_bytes then finds it truncated


def test_endless_streams_cost_bounded_reads() -> None:
    zeros = Endless()
    with pytest.raises(FormatError, match="bad signature"):
        read_stream(zeros)
    assert zeros.read_bytes <= 3
    header = craft(payload=b"")[:-4]  # a valid header, then zeros: chunk type 0, length 0
    stream = Endless(header)
    with pytest.raises(FormatError):
        VQZFile.from_bytes(read_stream(stream))
    assert stream.read_bytes < 2**16


def test_declared_sizes_beyond_the_limits_are_refused() -> None:
    with pytest.raises(FormatError, match="65 chunks exceed the limit of 64"):
        VQZFile.from_bytes(craft(chunks=((0xF0, b""),) * 65))
    with pytest.raises(FormatError, match="longer than 5 codes can take"):  # 4 x 5 + 64 bytes at most
        VQZFile.from_bytes(craft(payload=bytes(88)))
    VQZFile.from_bytes(craft(payload=bytes(84)))
    chunk = craft(chunks=((0xF0, b""),))
    start = len(chunk) - 4 - 8 - 2  # the chunk's type and length, before the payload and the CRC
    hostile = chunk[:start] + bytes((0xF0,)) + varint(MAX_CHUNK_BYTES + 1)
    with pytest.raises(FormatError, match="over its limit"):
        VQZFile.from_bytes(hostile)
    with pytest.raises(FormatError, match="over its limit"):
        read_stream(Endless(hostile))


def test_code_maps_are_checked_before_the_payload_limit_they_set() -> None:
    """A code map past MAX_SIDE made the payload's limit huge: read_stream read 400 MB of zeros."""
    hostile = craft(levels=((2**20, 2**20),), payload=b"", payload_len=2**34)[:-4]
    stream = Endless(hostile)
    with pytest.raises(ImageTooLargeError, match="code map size 1048576x1048576"):
        read_stream(stream)
    assert stream.read_bytes < 2**16
    for levels in ((), ((1, 1),) * 9):
        with pytest.raises(FormatError, match=f"got {len(levels)}"):
            VQZFile.from_bytes(craft(levels=levels, payload=bytes(100)))


def test_the_writer_keeps_the_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(container, "MAX_CHUNK_BYTES", 16)
    with pytest.raises(FormatError, match="XMP packet of 17 bytes exceeds the limit of 16"):
        plain(xmp=bytes(17))
    with pytest.raises(FormatError, match="longer than"):
        plain(payload=bytes(4 * (64 * 96 + 128 * 192) + 68))
