"""The metadata an image file carries beside its pixels (EXIF, XMP; the ICC profile's kind), kept apart
from the pixels because it follows other rules: it is chosen by the user (``metadata=``, as cwebp's
``-metadata``), carried byte for byte, and written back wherever the output format can hold it.

* EXIF and XMP are kept as the file carries them (``info["exif"]`` and ``info["xmp"]``: JPEG, PNG,
  WebP, AVIF; XMP of TIFF too), EXIF as a TIFF stream without JPEG's ``Exif\\0\\0`` prefix. A TIFF
  file's own tags are not EXIF and are not kept.
* Orientation: ``vqcodec.imageio`` applies it to the pixels (:func:`upright`), so the coded image is
  upright; the orientation tags are then set to 1 (not removed: a value that says "upright" cannot be
  misread), in place: re-serialising EXIF would break maker notes' offsets.
* Written back: EXIF where the format's Pillow writer takes it, XMP likewise or in PNG's iTXt chunk;
  in JPEG, metadata too large for one segment is dropped with a Python warning.

Which ICC profile fits the pixels is decided with the pixels, in ``vqcodec.imageio``.
"""

from __future__ import annotations

import re
import struct
import warnings as pywarnings
from collections.abc import Iterable

from PIL import ExifTags, Image, ImageOps
from PIL.PngImagePlugin import PngInfo

from vqcodec.coding.container import MIN_EXIF, TIFF_HEADERS

METADATA_KINDS = ("exif", "icc", "xmp")
"""The metadata the codec can keep (``Codec.compress(metadata=...)``, as cwebp's ``-metadata``)."""

_EXIF_PREFIX = b"Exif\x00\x00"
"""What JPEG's APP1 segment and Pillow's ``info["exif"]`` put before the TIFF stream."""

_XMP_ORIENTATION = re.compile(rb"""(tiff:Orientation\s*=\s*["']\s*|<tiff:Orientation>\s*)[0-9]""")
"""XMP's orientation, as an attribute or an element (Pillow applies it when EXIF has none)."""

_EXIF_FORMATS = ("JPEG", "PNG", "WEBP", "AVIF")
_XMP_FORMATS = ("JPEG", "WEBP", "AVIF")
"""Formats whose Pillow writer takes ``exif=`` and ``xmp=``; PNG's XMP goes into an iTXt chunk."""

_JPEG_SEGMENT = 65533
"""Most bytes of an APP1 segment's data: JPEG keeps EXIF (with its prefix) and XMP (after its
namespace) in one segment each."""

_XMP_NAMESPACE = b"http://ns.adobe.com/xap/1.0/\x00"
_JPEG_ICC_ROOM = 255 * (_JPEG_SEGMENT - len(b"ICC_PROFILE\x00") - 2)
"""Most bytes of an ICC profile in JPEG: APP2 segments numbered by one byte, at most 255 of them
(Pillow writes more, and readers then drop the profile)."""


def parse_metadata(value: str | Iterable[str]) -> frozenset[str]:
    """The metadata kinds that ``value`` names: "all", "none", a comma-separated list ("exif,icc") or an
    iterable of kinds, each of ``METADATA_KINDS``. ValueError names an unknown kind and the valid ones."""
    if isinstance(value, str):
        value = value.strip().lower()
        if value in ("all", "none"):
            return frozenset(METADATA_KINDS if value == "all" else ())
        value = [part.strip() for part in value.split(",")]
    kinds = []
    for kind in value:
        if not isinstance(kind, str) or kind.lower() not in METADATA_KINDS:
            raise ValueError(
                f"unknown metadata kind {kind!r}: use all, none, or one or more of"
                f" {', '.join(METADATA_KINDS)} separated by commas"
            )
        kinds.append(kind.lower())
    return frozenset(kinds)


def read_metadata(image: Image.Image, warnings: list[str]) -> tuple[bytes | None, bytes | None]:
    """The EXIF (a TIFF stream) and XMP of ``image``, their orientation set to 1 for the upright pixels.

    Read it before :func:`upright`, which re-serialises the EXIF.
    """
    exif, xmp = _info_metadata(image)
    if exif:
        exif = _upright_exif(exif)
        if exif is None:
            warnings.append("unreadable EXIF data; not kept")
    return exif or None, _upright_xmp(xmp) if xmp else None


def upright(image: Image.Image, warnings: list[str]) -> Image.Image:
    """Apply the EXIF orientation, so that the decoded image looks as the original is displayed."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # EXIF parsing fails in many ways; a bad tag must not make the image unusable
        warnings.append("unreadable EXIF data; orientation not applied")
        return image
    if orientation in range(2, 9):
        return ImageOps.exif_transpose(image)
    return image


def pil_info(icc_profile: bytes | None, exif: bytes | None, xmp: bytes | None) -> dict[str, bytes]:
    """The ``Image.info`` entries for a file's ICC profile, EXIF and XMP, as Pillow's writers take them."""
    info = {}
    if icc_profile:
        info["icc_profile"] = icc_profile
    if exif:
        exif = bytes(exif).removeprefix(_EXIF_PREFIX)
        info["exif"] = _EXIF_PREFIX + (_upright_exif(exif) or exif)
    if xmp:
        info["xmp"] = _upright_xmp(bytes(xmp))
    return info


def metadata_options(image: Image.Image, fmt: str) -> dict[str, object]:
    """The save options that write the ICC profile, EXIF and XMP of ``image.info`` where ``fmt`` can hold
    them: PNG's XMP in the iTXt chunk XMP readers look for; in JPEG, EXIF or XMP larger than a segment
    and an ICC profile larger than 255 segments are dropped, with a Python warning (Pillow would refuse
    to write the image, or write a profile that readers drop)."""
    exif, xmp = _info_metadata(image)
    icc_profile = image.info.get("icc_profile") or None
    if exif:  # with the prefix, which JPEG needs and the other writers strip
        exif = _EXIF_PREFIX + exif
    if fmt == "JPEG":
        exif = _fits_jpeg("EXIF", exif, _JPEG_SEGMENT)
        xmp = _fits_jpeg("XMP", xmp, _JPEG_SEGMENT - len(_XMP_NAMESPACE))
        icc_profile = _fits_jpeg("ICC profile", icc_profile, _JPEG_ICC_ROOM)
    options: dict[str, object] = {"icc_profile": icc_profile} if icc_profile else {}
    if exif and fmt in _EXIF_FORMATS:
        options["exif"] = exif
    if xmp and fmt in _XMP_FORMATS:
        options["xmp"] = xmp
    elif xmp and fmt == "PNG":
        options["pnginfo"] = info = PngInfo()
        info.add_itxt("XML:com.adobe.xmp", xmp)
    return options


def _fits_jpeg(name: str, data: bytes | None, room: int) -> bytes | None:
    if data and len(data) > room:
        # stacklevel: past metadata_options and save_image, to save_image's caller
        message = f"{name} of {len(data)} bytes exceeds what JPEG holds ({room}); dropped"
        pywarnings.warn(message, stacklevel=4)
        return None
    return data


def _info_metadata(image: Image.Image) -> tuple[bytes | None, bytes | None]:
    """``image.info``'s EXIF (a TIFF stream, without the ``Exif\\0\\0`` prefix) and XMP, as bytes,
    whichever types Pillow's readers left them in."""
    exif, xmp = image.info.get("exif"), image.info.get("xmp")
    if isinstance(exif, Image.Exif):
        exif = exif.tobytes()
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8")
    return bytes(exif).removeprefix(_EXIF_PREFIX) if exif else None, bytes(xmp) if xmp else None


def _upright_exif(exif: bytes) -> bytes | None:
    """``exif`` (a TIFF stream) with IFD0's Orientation tag, if any, set to 1; None if it is no TIFF
    stream or the tag is malformed. Only the value's bytes change: re-serialising (Pillow's
    ``Exif.tobytes``) would move the data that maker notes address by offset."""
    if len(exif) < MIN_EXIF or exif[:4] not in TIFF_HEADERS:
        return None
    order = "<" if exif[:2] == b"II" else ">"
    ifd = struct.unpack_from(order + "I", exif, 4)[0]
    if ifd + 2 > len(exif):
        return None
    entries = struct.unpack_from(order + "H", exif, ifd)[0]
    if ifd + 2 + 12 * entries > len(exif):
        return None
    for entry in range(ifd + 2, ifd + 2 + 12 * entries, 12):
        tag, kind, count = struct.unpack_from(order + "HHI", exif, entry)
        if tag == ExifTags.Base.Orientation:
            if count != 1 or kind not in (3, 4):  # SHORT, as the standard has it, or LONG
                return None
            patched = bytearray(exif)
            struct.pack_into(order + ("H" if kind == 3 else "I"), patched, entry + 8, 1)
            return bytes(patched)
    return exif


def _upright_xmp(xmp: bytes) -> bytes:
    """``xmp`` with its ``tiff:Orientation`` property, if any, set to 1."""
    return _XMP_ORIENTATION.sub(rb"\g<1>1", xmp)
