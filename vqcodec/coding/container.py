"""The ``.vqz`` container: a small header, optional chunks and the range-coded payload.

``bitstream_spec/vqz.md`` is normative; this module follows it section by section:

    header   "VQZ", version, model id, geometry, colour and padding modes, code-map shapes,
             coder and precision, code checksum, chunk count, payload length, header CRC-32
    chunks   type (u8, bit 7 = ancillary), length (varint), data: ALPHA, RESAMPLE, TILES, ICC, EXIF, XMP
    payload  the range coder's 32-bit words, little-endian
    body CRC CRC-32 of the chunks and payload

Integers are little-endian; a *varint* is unsigned LEB128 in its shortest form, at most 5 bytes.
:meth:`VQZFile.from_bytes` returns a valid file or raises a :class:`~vqcodec.errors.VQZError`: every
length is checked against the bytes that remain and the image size against the limits before
anything sized by the file is allocated.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, BinaryIO, TypeVar

import numpy as np

from vqcodec.coding.entropy import PRECISION
from vqcodec.coding.order import MIN_TILE
from vqcodec.errors import (
    CorruptDataError,
    FormatError,
    ImageTooLargeError,
    ModelMismatchError,
    UnsupportedVersionError,
)

SIGNATURE = b"VQZ"
VERSION_MAJOR = 2
VERSION_MINOR = 0
MODEL_ID_LEN = 16
"""Bytes of the model's SHA-256 kept in the header (a 128-bit prefix)."""
MAX_SIDE = 16384
MAX_PIXELS = 2**27
MAX_LEVELS = 8
MAX_CHUNKS = 64
"""Most chunks a file may declare (vqcodec writes at most 6)."""
MAX_CHUNK_BYTES = 2**26
"""Largest chunk other than ALPHA (an ICC profile, EXIF, XMP, an unknown chunk): 64 MiB."""
ALPHA_SLACK = 2**16
"""An ALPHA chunk holds at most ``width × height`` + this many bytes: zlib's worst case, stored blocks."""
PAYLOAD_BYTES_PER_CODE = 4
"""A payload holds at most this many bytes per code, plus ``PAYLOAD_SLACK``: a code costs at most
``PRECISION`` (24) bits, and the coder's final words fit in the 8 bits to spare."""
PAYLOAD_SLACK = 64
CODER_RANGE = 1
"""Coder id of the range coder of ``entropy.py`` (32-bit words, 64-bit state)."""
ANCILLARY = 0x80
"""Chunk-type bit: set if a decoder that does not know the type may skip the chunk."""
TIFF_HEADERS = (b"II*\x00", b"MM\x00*")
"""How an EXIF chunk starts: a TIFF header (little- or big-endian), so never with JPEG's ``Exif\\0\\0``."""
MIN_EXIF = 8
"""Bytes of a TIFF header (byte order, 42, offset of the first IFD): the shortest EXIF chunk."""

_VARINT_MAX_BYTES = 5
_U32 = struct.Struct("<I")
_MAX_HEADER_BYTES = (
    len(SIGNATURE) + 1 + MODEL_ID_LEN + 4 * _VARINT_MAX_BYTES + 2 * MAX_LEVELS * _VARINT_MAX_BYTES + 12
)
"""The longest header: signature, version, model id, four varints (width, height, chunks, payload
length) and two per level, the bytes of the image, the level count, coder and precision, code_crc and
the header CRC."""
_READ_BLOCK = 2**20


class ColourMode(IntEnum):
    """Colour channels of the image; the alpha of LA and RGBA is stored in an ALPHA chunk."""

    L = 0
    LA = 1
    RGB = 2
    RGBA = 3

    @property
    def has_alpha(self) -> bool:
        return self in (ColourMode.LA, ColourMode.RGBA)


class Padding(IntEnum):
    """How the encoder extended the image to the model's multiple; the decoder crops it off."""

    EDGE = 0
    REFLECT = 1
    ZERO = 2


class ChunkType(IntEnum):
    ALPHA = 0x01
    """Critical: the alpha plane, u8 row-major, zlib-compressed."""
    RESAMPLE = 0x02
    """Critical (version 1.1): the codes describe the image resampled to a smaller coded size."""
    TILES = 0x03
    """Critical (version 1.2): the code maps are coded in independent tiles of this many pixels."""
    ICC = 0x81
    """Ancillary: an ICC colour profile, raw bytes."""
    EXIF = 0x82
    """Ancillary (version 1.3): EXIF metadata, a TIFF stream without the ``Exif\\0\\0`` prefix."""
    XMP = 0x83
    """Ancillary (version 1.3): an XMP packet, UTF-8 XML."""


_KNOWN_CHUNKS = frozenset(ChunkType)


@dataclass(frozen=True)
class Chunk:
    """A chunk: type byte and data. A ``VQZFile`` keeps unknown ancillary ones for tools to carry."""

    type: int
    data: bytes

    @property
    def critical(self) -> bool:
        return not self.type & ANCILLARY


@dataclass(frozen=True)
class VQZFile:
    """One ``.vqz`` file. Construction validates every field, so an instance is always writable."""

    model_id: bytes
    width: int
    height: int
    colour: ColourMode
    padding: Padding
    level_shapes: tuple[tuple[int, int], ...]
    """(h, w) of each code map, top level first."""
    code_crc: int
    payload: bytes
    coder: int = CODER_RANGE
    precision: int = PRECISION
    icc: bytes | None = None
    alpha: bytes | None = None
    """The alpha plane, ``width * height`` bytes row-major, for the LA and RGBA modes only."""
    coded_size: tuple[int, int] | None = None
    """(width, height) the image was resampled to before coding, smaller than the image; None: not
    resampled. The code maps describe the coded size and the decoder resamples back (RESAMPLE chunk)."""
    tile: tuple[int, int] | None = None
    """(width, height) in pixels of the tiles whose codes are coded as independent images: each at least
    ``MIN_TILE`` or the coded image's, and smaller than the coded image in one of them; None: the maps
    are coded whole (TILES chunk)."""
    exif: bytes | None = None
    """EXIF metadata as a TIFF stream (starting ``II*\\0`` or ``MM\\0*``, no ``Exif\\0\\0`` prefix), its
    orientation tag 1 since the pixels are coded upright (EXIF chunk)."""
    xmp: bytes | None = None
    """An XMP packet, UTF-8 XML (XMP chunk)."""
    extra_chunks: tuple[Chunk, ...] = ()
    """Ancillary chunks of types this version does not define, in file order."""

    @property
    def coded_width(self) -> int:
        return self.width if self.coded_size is None else self.coded_size[0]

    @property
    def coded_height(self) -> int:
        return self.height if self.coded_size is None else self.coded_size[1]

    def __post_init__(self) -> None:
        """The checks of ``vqz.md`` §10 that the fields alone allow, section by section."""
        self._check_header()
        self._check_chunks()
        self._check_resample()
        self._check_tiles()

    def _check_header(self) -> None:
        """§4: the model id, geometry, colour and padding, levels, coder, checksum and payload length."""
        object.__setattr__(self, "level_shapes", tuple((int(h), int(w)) for h, w in self.level_shapes))
        if len(self.model_id) != MODEL_ID_LEN:
            raise FormatError(f"model id must be {MODEL_ID_LEN} bytes, got {len(self.model_id)}")
        _check_geometry(self.width, self.height)
        if not isinstance(self.colour, ColourMode) or not isinstance(self.padding, Padding):
            raise FormatError("colour and padding must be ColourMode and Padding members")
        if not 1 <= len(self.level_shapes) <= MAX_LEVELS:
            raise FormatError(f"number of levels must be in 1..{MAX_LEVELS}, got {len(self.level_shapes)}")
        for h, w in self.level_shapes:
            _check_geometry(w, h, what="code map")
        if self.coder != CODER_RANGE or self.precision != PRECISION:
            raise FormatError(
                f"unknown entropy coder {self.coder} with precision {self.precision}"
                f" (expected {CODER_RANGE} with {PRECISION})"
            )
        if not 0 <= self.code_crc < 2**32:
            raise FormatError("code checksum must be a 32-bit unsigned integer")
        if len(self.payload) % 4:
            raise FormatError(f"payload length {len(self.payload)} is not a multiple of 4 bytes")
        _check_payload_length(len(self.payload), self.level_shapes)

    def _check_chunks(self) -> None:
        """§5 and §5.3: the alpha plane, the metadata, their sizes and the number of chunks."""
        if self.colour.has_alpha != (self.alpha is not None):
            raise FormatError(f"colour mode {self.colour.name} and the presence of an alpha plane disagree")
        if self.alpha is not None and len(self.alpha) != self.width * self.height:
            raise FormatError(f"alpha plane has {len(self.alpha)} bytes, expected {self.width * self.height}")
        if self.icc is not None and not self.icc:
            raise FormatError("ICC profile is empty")
        if self.exif is not None and (len(self.exif) < MIN_EXIF or self.exif[:4] not in TIFF_HEADERS):
            raise FormatError(
                f"EXIF data must start with a {MIN_EXIF}-byte TIFF header (II*\\0 or MM\\0*), without the"
                " Exif\\0\\0 prefix"
            )
        if self.xmp is not None and not self.xmp:
            raise FormatError("XMP packet is empty")
        for name, data in (("ICC profile", self.icc), ("EXIF", self.exif), ("XMP packet", self.xmp)):
            if data is not None and len(data) > MAX_CHUNK_BYTES:
                raise FormatError(f"{name} of {len(data)} bytes exceeds the limit of {MAX_CHUNK_BYTES}")
        if any(len(chunk.data) > MAX_CHUNK_BYTES for chunk in self.extra_chunks):
            raise FormatError(f"an ancillary chunk exceeds the limit of {MAX_CHUNK_BYTES} bytes")
        known = (self.alpha, self.coded_size, self.tile, self.icc, self.exif, self.xmp)
        if sum(field is not None for field in known) + len(self.extra_chunks) > MAX_CHUNKS:
            raise FormatError(f"more than {MAX_CHUNKS} chunks")
        for chunk in self.extra_chunks:
            if not 0 <= chunk.type < 256 or chunk.critical or chunk.type in _KNOWN_CHUNKS:
                raise FormatError(f"extra chunk type 0x{chunk.type:02x} must be an unknown ancillary type")

    def _check_resample(self) -> None:
        """§5.1: a coded size within the image, and smaller."""
        if self.coded_size is None:
            return
        object.__setattr__(self, "coded_size", (int(self.coded_size[0]), int(self.coded_size[1])))
        coded_width, coded_height = self.coded_size
        if not (1 <= coded_width <= self.width and 1 <= coded_height <= self.height):
            raise FormatError(
                f"coded size {coded_width}x{coded_height} must lie within the image's"
                f" {self.width}x{self.height}"
            )
        if self.coded_size == (self.width, self.height):
            raise FormatError("a RESAMPLE chunk must shrink the image (coded size equals the image size)")

    def _check_tiles(self) -> None:
        """§5.2: tiles that split the coded image, each side at least ``MIN_TILE`` or the image's."""
        if self.tile is None:
            return
        object.__setattr__(self, "tile", (int(self.tile[0]), int(self.tile[1])))
        tile_width, tile_height = self.tile
        coded = (self.coded_width, self.coded_height)
        too_small = any(side < min(MIN_TILE, whole) for side, whole in zip(self.tile, coded, strict=True))
        if too_small or (tile_width >= self.coded_width and tile_height >= self.coded_height):
            raise FormatError(
                f"tiles of {tile_width}x{tile_height} pixels must split the coded {coded[0]}x{coded[1]}"
                f" image, each side at least {MIN_TILE} or the image's"
            )

    def to_bytes(self) -> bytes:
        """Serialise, following the spec field by field."""
        header = bytearray(SIGNATURE)
        header.append(VERSION_MAJOR << 4 | VERSION_MINOR)
        header += self.model_id
        header += varint(self.width - 1) + varint(self.height - 1)
        header.append(self.colour | self.padding << 2)
        header.append(len(self.level_shapes))
        for h, w in self.level_shapes:
            header += varint(h - 1) + varint(w - 1)
        header += bytes((self.coder, self.precision))
        header += _U32.pack(self.code_crc)
        chunks = self.chunks()
        header += varint(len(chunks)) + varint(len(self.payload))
        header += _U32.pack(zlib.crc32(header))
        body = b"".join(bytes((c.type,)) + varint(len(c.data)) + c.data for c in chunks) + self.payload
        return bytes(header) + body + _U32.pack(zlib.crc32(body))

    def chunks(self) -> list[Chunk]:
        """The chunks ``to_bytes`` writes, in the order §5 recommends, unknown ancillary ones last."""
        chunks = []
        if self.alpha is not None:
            chunks.append(Chunk(ChunkType.ALPHA, zlib.compress(self.alpha, 9)))
        if self.coded_size is not None:
            width, height = self.coded_size
            chunks.append(Chunk(ChunkType.RESAMPLE, varint(width - 1) + varint(height - 1)))
        if self.tile is not None:
            chunks.append(Chunk(ChunkType.TILES, varint(self.tile[0] - 1) + varint(self.tile[1] - 1)))
        if self.icc is not None:
            chunks.append(Chunk(ChunkType.ICC, self.icc))
        if self.exif is not None:
            chunks.append(Chunk(ChunkType.EXIF, self.exif))
        if self.xmp is not None:
            chunks.append(Chunk(ChunkType.XMP, self.xmp))
        return chunks + list(self.extra_chunks)

    @classmethod
    def from_bytes(cls, data: bytes) -> VQZFile:
        """Parse and check a whole file; raises a ``VQZError`` subclass on any defect."""
        reader = _Reader(bytes(data))
        header, n_chunks, payload_len = _read_header(reader)
        chunks, payload = _read_body(reader, n_chunks, payload_len, header["width"] * header["height"])
        fields = _chunk_fields(chunks, header["width"] * header["height"])
        return cls(**header, payload=payload, **fields)

    def check_model(self, sha256_digest: bytes) -> None:
        """Raise ``ModelMismatchError`` unless the file was written with the model of this digest."""
        if len(sha256_digest) != 32:
            raise ValueError("expected the 32-byte SHA-256 digest of the model file")
        if model_id(sha256_digest) != self.model_id:
            raise ModelMismatchError(
                f"file needs model {self.model_id.hex()}, not {model_id(sha256_digest).hex()}"
            )

    def check_levels(self, shapes: Sequence[tuple[int, int]]) -> None:
        """Raise ``ModelMismatchError`` unless the model gives the code-map shapes the file declares."""
        shapes = tuple((int(h), int(w)) for h, w in shapes)
        if shapes != self.level_shapes:
            raise ModelMismatchError(f"file has code maps {self.level_shapes}, the model gives {shapes}")

    def check_tile(self, multiple: int) -> None:
        """Raise ``ModelMismatchError`` unless the tiles are whole cells of a model whose image sides are
        multiples of ``multiple`` (so that they cut every level's map at whole codes)."""
        if self.tile is not None and (self.tile[0] % multiple or self.tile[1] % multiple):
            raise ModelMismatchError(
                f"file has tiles of {self.tile[0]}x{self.tile[1]} pixels, not multiples of the model's"
                f" {multiple}"
            )

    def check_codes(self, maps: Sequence[np.ndarray]) -> None:
        """Raise ``CorruptDataError`` unless the decoded maps have the encoder's code checksum."""
        if tuple(np.shape(m) for m in maps) != self.level_shapes:
            raise ValueError(f"code maps must have shapes {self.level_shapes}")
        if code_checksum(maps) != self.code_crc:
            raise CorruptDataError("code checksum mismatch: the decoded codes differ from the encoder's")


def model_id(sha256_digest: bytes) -> bytes:
    """The model id stored in a file: the first ``MODEL_ID_LEN`` bytes of the model file's SHA-256."""
    return bytes(sha256_digest[:MODEL_ID_LEN])


def code_checksum(maps: Sequence[np.ndarray]) -> int:
    """CRC-32 of the code maps, levels top first, each row-major, every code as u16 little-endian."""
    crc = 0
    for codes in maps:
        codes = np.asarray(codes)
        if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"code maps must be 2-D integer arrays, got {codes.dtype} {codes.shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= 2**16):
            raise ValueError("codes must lie in 0..65535")
        crc = zlib.crc32(codes.astype("<u2").tobytes(), crc)
    return crc


def _check_geometry(width: int, height: int, what: str = "image") -> None:
    if width < 1 or height < 1:
        raise FormatError(f"{what} size {width}x{height} is empty")
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise ImageTooLargeError(
            f"{what} size {width}x{height} exceeds the limits ({MAX_SIDE} per side, {MAX_PIXELS} pixels)"
        )


def _check_payload_length(length: int, level_shapes: Sequence[tuple[int, int]]) -> None:
    n_codes = sum(h * w for h, w in level_shapes)
    if length > PAYLOAD_BYTES_PER_CODE * n_codes + PAYLOAD_SLACK:
        raise FormatError(f"a payload of {length} bytes is longer than {n_codes} codes can take")


def _read_header(reader: _Reader) -> tuple[dict[str, Any], int, int]:
    """The header's fields (checked, and its CRC), the number of chunks and the payload's length."""
    if reader.take(len(SIGNATURE)) != SIGNATURE:
        raise FormatError("not a .vqz file (bad signature)")
    version = reader.u8()
    if version >> 4 > VERSION_MAJOR:
        raise UnsupportedVersionError(
            f"file has format version {version >> 4}.{version & 15}; this decoder reads {VERSION_MAJOR}.x"
        )
    if version >> 4 == 1:
        raise UnsupportedVersionError(
            f"file has format version 1.{version & 15}, which vqcodec 0.1 wrote and reads: decode it with"
            " that version (pip install 'vqcodec==0.1.*'); this one reads 2.x"
        )
    if version >> 4 < VERSION_MAJOR:
        raise FormatError(f"invalid format version {version >> 4}.{version & 15}")
    model_id = reader.take(MODEL_ID_LEN)
    width = reader.varint() + 1
    height = reader.varint() + 1
    image = reader.u8()
    level_shapes = tuple((reader.varint() + 1, reader.varint() + 1) for _ in range(reader.u8()))
    coder, precision = reader.u8(), reader.u8()
    code_crc = reader.u32()
    n_chunks = reader.varint()
    payload_len = reader.varint()
    if zlib.crc32(reader.data[: reader.pos]) != reader.u32():
        raise FormatError("header CRC mismatch")
    _check_geometry(width, height)
    if not 1 <= len(level_shapes) <= MAX_LEVELS:
        raise FormatError(f"number of levels must be in 1..{MAX_LEVELS}, got {len(level_shapes)}")
    for h, w in level_shapes:  # before the payload's limit, which they set
        _check_geometry(w, h, what="code map")
    if n_chunks > MAX_CHUNKS:
        raise FormatError(f"{n_chunks} chunks exceed the limit of {MAX_CHUNKS}")
    _check_payload_length(payload_len, level_shapes)
    if image >> 4:
        raise FormatError(f"reserved bits of the image byte are set (0x{image:02x})")
    header = {
        "model_id": model_id,
        "width": width,
        "height": height,
        "colour": _enum(ColourMode, image & 3, "colour mode"),
        "padding": _enum(Padding, image >> 2 & 3, "padding mode"),
        "level_shapes": level_shapes,
        "code_crc": code_crc,
        "coder": coder,
        "precision": precision,
    }
    return header, n_chunks, payload_len


def _read_body(reader: _Reader, n_chunks: int, payload_len: int, pixels: int) -> tuple[list[Chunk], bytes]:
    """The chunks and the payload, after checking the body's CRC and that nothing follows it."""
    body_start = reader.pos
    if n_chunks > reader.remaining:
        raise FormatError(f"{n_chunks} chunks cannot fit in the remaining {reader.remaining} bytes")
    chunks = []
    for _ in range(n_chunks):
        chunk_type, length = _chunk_start(reader, pixels)
        chunks.append(Chunk(chunk_type, reader.take(length)))
    payload = reader.take(payload_len)
    body_end = reader.pos
    if zlib.crc32(reader.data[body_start:body_end]) != reader.u32():
        raise FormatError("body CRC mismatch (chunks or payload damaged)")
    if reader.remaining:
        raise FormatError("trailing data after the body CRC")  # read_stream reads just one byte of it
    return chunks, payload


def _chunk_start(reader: _Reader, pixels: int) -> tuple[int, int]:
    """A chunk's type and length, the length within the limit of its type."""
    chunk_type, length = reader.u8(), reader.varint()
    limit = pixels + ALPHA_SLACK if chunk_type == ChunkType.ALPHA else MAX_CHUNK_BYTES
    if length > limit:
        raise FormatError(
            f"a chunk of type 0x{chunk_type:02x} declares {length} bytes, over its limit of {limit}"
        )
    return chunk_type, length


def read_stream(stream: BinaryIO) -> bytes:
    """The bytes of one file read from ``stream``, no further than its header and chunks declare (and
    one byte more, which ``VQZFile.from_bytes`` then refuses as trailing data).

    What is not a .vqz file is refused after its first bytes, and a file's declared sizes are checked
    against the limits before they are read: a hostile or endless stream costs bounded memory."""
    data = bytearray()

    def fill(stop: int) -> None:
        """Bytes up to ``stop`` in ``data``, as many of them as the stream has."""
        while len(data) < stop:
            block = stream.read(min(stop - len(data), _READ_BLOCK))
            if not block:
                break
            data.extend(block)

    def read(start: int, stop: int) -> _Reader:
        """A reader over bytes ``start:stop`` (a few: the header, a chunk's start)."""
        fill(stop)
        return _Reader(bytes(data[start:stop]))

    start = read(0, len(SIGNATURE)).data
    if start != SIGNATURE[: len(start)]:  # a part of it: the header says the file is truncated
        raise FormatError("not a .vqz file (bad signature)")
    reader = read(0, _MAX_HEADER_BYTES)
    header, n_chunks, payload_len = _read_header(reader)
    end = reader.pos
    for _ in range(n_chunks):
        reader = read(end, end + 1 + _VARINT_MAX_BYTES)
        _, length = _chunk_start(reader, header["width"] * header["height"])
        end += reader.pos + length
    fill(end + payload_len + 4 + 1)
    return bytes(data)


_CHUNK_FIELDS = {
    ChunkType.ALPHA: "alpha",
    ChunkType.RESAMPLE: "coded_size",
    ChunkType.TILES: "tile",
    ChunkType.ICC: "icc",
    ChunkType.EXIF: "exif",
    ChunkType.XMP: "xmp",
}
"""The ``VQZFile`` field of each known chunk type."""


def _chunk_fields(chunks: list[Chunk], pixels: int) -> dict[str, Any]:
    """The known chunks' ``VQZFile`` fields (at most one chunk of each type) and the unknown ancillary
    ones, kept as they are; an unknown critical chunk is refused."""
    fields: dict[str, Any] = {}
    extra_chunks = []
    for chunk in chunks:
        name = _CHUNK_FIELDS.get(ChunkType(chunk.type)) if chunk.type in _KNOWN_CHUNKS else None
        if name is not None and name in fields:
            raise FormatError(f"duplicate {ChunkType(chunk.type).name} chunk")
        if name == "alpha":
            fields[name] = _inflate(chunk.data, pixels)
        elif name in ("coded_size", "tile"):
            fields[name] = _size(chunk)
        elif name is not None:
            fields[name] = chunk.data
        elif chunk.critical:
            raise UnsupportedVersionError(f"unknown critical chunk type 0x{chunk.type:02x}")
        else:
            extra_chunks.append(chunk)
    fields["extra_chunks"] = tuple(extra_chunks)
    return fields


_Enum = TypeVar("_Enum", bound=IntEnum)


def _enum(kind: type[_Enum], value: int, what: str) -> _Enum:
    try:
        return kind(value)
    except ValueError:
        raise FormatError(f"unknown {what} {value}") from None


def _inflate(data: bytes, size: int) -> bytes:
    """Decompress a zlib stream that must hold exactly ``size`` bytes, never producing more."""
    inflater = zlib.decompressobj()
    try:
        plane = inflater.decompress(data, size + 1)
    except zlib.error as error:
        raise FormatError(f"alpha chunk is not a valid zlib stream ({error})") from None
    if len(plane) != size or not inflater.eof or inflater.unused_data:
        raise FormatError(f"alpha chunk does not hold exactly {size} bytes")
    return plane


def _size(chunk: Chunk) -> tuple[int, int]:
    """The (width, height) of a RESAMPLE or TILES chunk: ``width - 1`` and ``height - 1``, two varints
    and nothing after them."""
    name, reader = ChunkType(chunk.type).name, _Reader(chunk.data)
    try:
        size = reader.varint() + 1, reader.varint() + 1
    except FormatError as error:
        raise FormatError(f"{name} chunk does not hold two varints ({error})") from None
    if reader.remaining:
        raise FormatError(f"{name} chunk has {reader.remaining} byte(s) after its two sizes")
    return size


def varint(value: int) -> bytes:
    """Unsigned LEB128: 7 bits per byte, least significant first, bit 7 set on all but the last."""
    if not 0 <= value < 1 << 7 * _VARINT_MAX_BYTES:
        raise ValueError(f"varint out of range: {value}")
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class _Reader:
    """A cursor over the file that raises ``FormatError`` instead of reading past the end."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        if n > self.remaining:
            raise FormatError(f"file truncated: needs {n} bytes at offset {self.pos}, has {self.remaining}")
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        return _U32.unpack(self.take(4))[0]

    def varint(self) -> int:
        value = 0
        for i in range(_VARINT_MAX_BYTES):
            byte = self.u8()
            value |= (byte & 0x7F) << 7 * i
            if not byte & 0x80:
                if byte == 0 and i > 0:
                    raise FormatError(f"overlong varint ending at offset {self.pos}")
                return value
        raise FormatError(f"varint longer than {_VARINT_MAX_BYTES} bytes at offset {self.pos}")
