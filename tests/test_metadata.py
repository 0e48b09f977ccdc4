"""EXIF and XMP: kept through compress and decompress (orientation applied once, the tags reset to 1),
chosen with ``metadata=``, written back by ``save_image``; files without them unchanged."""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageCms
from PIL.PngImagePlugin import PngInfo

import vqcodec
from vqcodec.codec import Codec
from vqcodec.coding.container import VQZFile
from vqcodec.imageio import load_image, save_image, to_pil
from vqcodec.metadata import METADATA_KINDS, parse_metadata

VECTORS = Path(__file__).resolve().parents[1] / "bitstream_spec/vectors"
TAGS = {"Make": "vqcodec camera", "DateTime": "2024:05:06 07:08:09", "Copyright": "(c) Test"}
XMP = (
    b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>'
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b'<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/"'
    b' xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"><dc:creator>Ann</dc:creator>'
    b'</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
)


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec.open(VECTORS / "tiny.safetensors")


def pixels(width: int = 24, height: int = 16) -> np.ndarray:
    """Smooth content with one bright corner, so that a rotation shows."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // width, y * 255 // height, (x + y) * 127 // (width + height)], axis=2)
    rgb[:4, :4] = 255
    return rgb.astype(np.uint8)


def exif_bytes(orientation: int = 6, **tags: str) -> bytes:
    exif = Image.Exif()
    for name, value in {**TAGS, **tags}.items():
        exif[ExifTags.Base[name]] = value
    exif[ExifTags.Base.Orientation] = orientation
    return exif.tobytes()


def encode(fmt: str, orientation: int = 6, **options: object) -> bytes:
    """``pixels()`` as a ``fmt`` file with EXIF (``TAGS`` and ``orientation``) and ``XMP``."""
    if fmt == "PNG":  # Pillow's PNG writer takes no xmp=
        options["pnginfo"] = PngInfo()
        options["pnginfo"].add_itxt("XML:com.adobe.xmp", XMP)
    else:
        options["xmp"] = XMP
    buffer = io.BytesIO()
    Image.fromarray(pixels()).save(buffer, fmt, exif=exif_bytes(orientation), **options)
    return buffer.getvalue()


def srgb() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def check_upright_metadata(image: Image.Image) -> None:
    exif = image.getexif()
    assert {name: exif.get(ExifTags.Base[name]) for name in TAGS} == TAGS
    assert exif.get(ExifTags.Base.Orientation) == 1
    assert b"<dc:creator>Ann</dc:creator>" in image.info["xmp"]
    assert b'tiff:Orientation="1"' in image.info["xmp"]


# --- through the codec ------------------------------------------------------------------------------------


def test_jpeg_metadata_round_trips(codec: Codec) -> None:
    jpeg = encode("JPEG", quality=95)
    data = vqcodec.compress(jpeg, model=codec)
    file = VQZFile.from_bytes(data)
    assert data[3] == 0x20 and file.exif[:4] in (b"II*\x00", b"MM\x00*")
    source_exif = Image.open(io.BytesIO(jpeg)).info["exif"][6:]
    changed = [i for i, (a, b) in enumerate(zip(file.exif, source_exif, strict=True)) if a != b]
    assert len(changed) == 1  # the Orientation value's low byte, changed in place: nothing else moved
    report = vqcodec.info(data)
    assert (report["exif_bytes"], report["xmp_bytes"]) == (len(file.exif), len(file.xmp))

    image = vqcodec.decompress(data, model=codec)
    assert image.size == (16, 24)  # turned once, by the encoder; the tag now says upright
    check_upright_metadata(image)


@pytest.mark.parametrize(
    ("metadata", "kept"),
    [
        ("all", {"exif", "icc", "xmp"}),
        ("none", set()),
        ("exif", {"exif"}),
        ("xmp, ICC", {"icc", "xmp"}),
        (["exif", "xmp"], {"exif", "xmp"}),
    ],
)
def test_metadata_option_keeps_the_chosen_kinds(codec: Codec, metadata: object, kept: set[str]) -> None:
    data = codec.compress(encode("JPEG", quality=95, icc_profile=srgb()), metadata=metadata)
    file = VQZFile.from_bytes(data)
    present = {"exif": file.exif, "icc": file.icc, "xmp": file.xmp}
    assert {kind for kind, value in present.items() if value} == kept
    image = codec.decompress(data)
    assert image.size == (16, 24)  # the orientation is applied whatever is kept
    assert {key for key in ("exif", "icc_profile", "xmp") if key in image.info} == {
        {"icc": "icc_profile"}.get(kind, kind) for kind in kept
    }


def test_bad_metadata_option_fails_before_reading(codec: Codec) -> None:
    with pytest.raises(ValueError, match="unknown metadata kind 'gps'"):
        codec.compress("/nonexistent/image.png", metadata="exif,gps")


def test_files_without_metadata_have_none(codec: Codec) -> None:
    data = (VECTORS / "icc_16x16.vqz").read_bytes()
    image = codec.decompress(data)
    assert "exif" not in image.info and "xmp" not in image.info


# --- load_image, to_pil, save_image -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_orientation_is_applied_once_and_reset(fmt: str) -> None:
    source = load_image(encode(fmt, lossless=True) if fmt == "WEBP" else encode(fmt))
    np.testing.assert_array_equal(source.rgb, np.rot90(pixels(), k=-1))  # 6: 90 degrees clockwise
    assert source.exif[:2] in (b"II", b"MM")  # no Exif\0\0 prefix, whatever the format gave
    image = to_pil(source.rgb, source.mode, source.alpha, source.icc_profile, source.exif, source.xmp)
    check_upright_metadata(image)
    again = load_image(image)  # nothing left to turn
    np.testing.assert_array_equal(again.rgb, source.rgb)
    assert (again.exif, again.xmp) == (source.exif, source.xmp)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_save_image_writes_exif_and_xmp(fmt: str) -> None:
    source = load_image(encode("PNG"))
    image = to_pil(source.rgb, source.mode, None, None, source.exif, source.xmp)
    buffer = io.BytesIO()
    save_image(image, buffer, fmt)
    reopened = Image.open(io.BytesIO(buffer.getvalue()))
    check_upright_metadata(reopened)
    if fmt == "PNG":  # XMP in the iTXt chunk that XMP readers look for
        assert reopened.info["XML:com.adobe.xmp"].encode() == image.info["xmp"]


def test_jpeg_drops_what_a_segment_cannot_hold() -> None:
    image = to_pil(pixels(), "RGB", None, None, exif_bytes(1), b"<x>" + b" " * 70000 + b"</x>")
    buffer = io.BytesIO()
    with pytest.warns(UserWarning, match="XMP of 70007 bytes"):
        save_image(image, buffer, "JPEG")
    reopened = Image.open(io.BytesIO(buffer.getvalue()))
    assert "xmp" not in reopened.info and reopened.getexif()[ExifTags.Base.Make] == TAGS["Make"]


def test_jpeg_drops_an_icc_profile_255_segments_cannot_hold() -> None:
    """Pillow wrote 273 APP2 segments for a 17 MiB profile, numbered in one byte: readers dropped it."""
    room = 255 * (65533 - 14)
    for size, kept in ((room, True), (room + 1, False)):
        image = to_pil(
            pixels(), "RGB", None, bytes(range(256)) * (size // 256) + bytes(size % 256), None, None
        )
        buffer = io.BytesIO()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            save_image(image, buffer, "JPEG")
        assert [str(w.message) for w in caught] == (
            [] if kept else [f"ICC profile of {size} bytes exceeds what JPEG holds ({room}); dropped"]
        )
        assert len(Image.open(io.BytesIO(buffer.getvalue())).info.get("icc_profile", b"")) == size * kept


def test_orientation_in_xmp_only_is_reset() -> None:
    """Pillow turns the image by XMP's orientation when EXIF has none: the XMP must then say 1."""
    element = XMP.replace(b' tiff:Orientation="6">', b"><tiff:Orientation>6</tiff:Orientation>")
    buffer = io.BytesIO()
    Image.fromarray(pixels()).save(buffer, "JPEG", xmp=element)
    source = load_image(buffer.getvalue())
    assert (source.width, source.height, source.exif) == (16, 24, None)
    assert b"<tiff:Orientation>1</tiff:Orientation>" in source.xmp


def little_endian_exif(kind: int, count: int = 1) -> bytes:
    """A little-endian TIFF stream whose IFD0 holds Make and an Orientation 6 of the given type."""
    entries = [
        struct.pack("<HHI4s", 0x010F, 2, 4, b"Cam\x00"),
        struct.pack("<HHII", 0x0112, kind, count, 6),
    ]
    return b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 2) + b"".join(entries) + bytes(4)


@pytest.mark.parametrize("kind", [3, 4])  # SHORT, as the standard has it, or LONG
def test_little_endian_orientation_is_reset_in_place(kind: int) -> None:
    image = Image.fromarray(pixels())
    image.info["exif"] = original = little_endian_exif(kind)
    source = load_image(image)
    assert (source.width, source.height) == (16, 24)
    assert source.exif == original[:30] + struct.pack("<I", 1) + original[34:]  # the entry's value field
    exif = Image.Exif()
    exif.load(source.exif)
    assert (exif[ExifTags.Base.Make], exif[ExifTags.Base.Orientation]) == ("Cam", 1)


@pytest.mark.filterwarnings("ignore:Metadata Warning")  # Pillow's, on the two-valued tag
def test_unreadable_exif_is_dropped_with_a_warning() -> None:
    image = Image.fromarray(pixels())
    image.info["exif"] = b"Exif\x00\x00" + little_endian_exif(3, count=2)  # an Orientation of two values
    source = load_image(image)
    assert source.exif is None and "unreadable EXIF data; not kept" in source.warnings
    image = Image.fromarray(pixels())
    image.info["exif"] = b"Exif\x00\x00not a TIFF stream"
    source = load_image(image)
    assert source.exif is None and "unreadable EXIF data; not kept" in source.warnings


def test_to_pil_resets_an_orientation_that_a_file_carries() -> None:
    image = to_pil(pixels(), "RGB", None, None, exif_bytes(8)[6:], XMP)
    assert image.info["exif"].startswith(b"Exif\x00\x00") and image.getexif()[ExifTags.Base.Orientation] == 1
    assert b'tiff:Orientation="1"' in image.info["xmp"]


# --- parse_metadata ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kinds"),
    [
        ("all", set(METADATA_KINDS)),
        ("none", set()),
        (" NONE ", set()),
        ("exif,icc", {"exif", "icc"}),
        ("xmp, exif", {"exif", "xmp"}),
        (["icc"], {"icc"}),
        ((), set()),
        (frozenset({"exif", "xmp"}), {"exif", "xmp"}),
    ],
)
def test_parse_metadata(value: object, kinds: set[str]) -> None:
    assert parse_metadata(value) == frozenset(kinds)


@pytest.mark.parametrize("value", ["", "exif,", "gps", "exif;icc", ["all"], ["exif", 1]])
def test_parse_metadata_refuses_unknown_kinds(value: object) -> None:
    with pytest.raises(ValueError, match="unknown metadata kind .*: use all, none, or one or more of exif"):
        parse_metadata(value)
