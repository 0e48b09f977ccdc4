"""Everything between image files and the uint8 RGB arrays the codec's model works on.

``load_image`` reduces any image Pillow can read to a :class:`SourceImage`: an RGB array for the
model plus what the decoder needs to give back the original's look (grayscale or colour, an alpha
plane, the ICC profile, EXIF and XMP). ``to_pil`` and ``save_image`` go the other way.

Conventions, chosen so that every input has one documented meaning:

* Grayscale ("1", "L", "I;16*", "I", "F") is replicated to three channels and restored as "L". So is
  an RGB(A) image whose three channels are equal everywhere (a gray picture saved as colour), unless
  it carries a colour ICC profile: coded as colour, it would come back with a tint of colour.
* 16-bit samples ("I;16*", and "I", which Pillow uses for some 16-bit files) are reduced to 8 bits
  with rounding, ``round(v / 257)``; "I" values outside 0..65535 are clipped. Float ("F") samples
  follow Pillow's own convention of a 0..255 scale, rounded and clipped (NaN read as 0).
* Pillow decodes 16-bit RGB(A) and LA by keeping the high byte of each sample, so those lose up to
  one level more than rounding would; they are still reported as reduced to 8 bits.
* Palette images become RGB, or RGBA when they have transparency; "L" and "RGB" images with a
  transparent colour (PNG tRNS) become "LA"/"RGBA".
* An alpha plane that is fully opaque is dropped, since the codec would store it for nothing.
* CMYK is converted to sRGB through its ICC profile when it has one, otherwise with Pillow's plain
  formula; other colour spaces (YCbCr, LAB, HSV, ...) with Pillow's plain conversion.
* An ICC profile is kept only when it describes the pixels handed to the codec (an RGB profile for
  colour, a gray one for grayscale).
* EXIF and XMP, and the orientation they carry, follow ``vqcodec.metadata``: the orientation is
  applied to the pixels and the tags then say "upright".
* Images over ``MAX_IMAGE_SIDE`` a side or ``max_pixels`` in all (``MAX_IMAGE_PIXELS`` unless the
  caller gives another) are refused from their header, before any pixel is decoded.
"""

from __future__ import annotations

import functools
import io
import os
import struct
import warnings as pywarnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from vqcodec.coding.container import MAX_CHUNK_BYTES, MAX_SIDE
from vqcodec.errors import FormatError, ImageTooLargeError, VQZError
from vqcodec.metadata import metadata_options, parse_metadata, pil_info, read_metadata, upright

MODES = ("RGB", "L", "RGBA", "LA")
"""The modes a SourceImage can have, i.e. that the decoder restores."""

MAX_IMAGE_SIDE = MAX_SIDE
"""Longest side this implementation codes: all that the format allows. A multiple of every model's
``multiple``, so padding stays in bounds."""

MAX_IMAGE_PIXELS = 2**26
"""Largest area this implementation codes unless told otherwise (``max_pixels``): half of what the
format allows (67 Mpx: a 61-Mpx camera's 9504 x 6336 fits). Memory grows with the area, about
linearly: ``benchmarks/results/speed/large.md`` has the peaks for a 61-Mpx image. It lies below
Pillow's own decompression-bomb threshold (``PIL.Image.MAX_IMAGE_PIXELS``, ~89 Mpx), so every accepted
image opens without Pillow's warning; a larger ``max_pixels`` is still bounded by that threshold."""

# What Pillow raises on bad input: its decoders let struct and EOF errors through as well.
_PILLOW_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_WIDE_MODES = (*_SIXTEEN_BIT_MODES, "I", "F")

# Modes with a direct counterpart among the four the codec keeps (premultiplied alpha undone).
_EXACT_CONVERSIONS = {"1": "L", "La": "LA", "PA": "RGBA", "RGBa": "RGBA", "RGBX": "RGB"}

# The data colour space field of an ICC header (bytes 16-19) that fits each kept mode.
_ICC_SPACES = {"RGB": b"RGB ", "L": b"GRAY", "RGBA": b"RGB ", "LA": b"GRAY"}

_PILLOW_SAVE_ERRORS = (OSError, ValueError, KeyError, TypeError)
"""What Pillow raises when a format cannot write a mode (or has no writer installed)."""

_SAVE_OPTIONS: dict[str, dict[str, int]] = {"JPEG": {"quality": 95}}


@dataclass
class SourceImage:
    """An image as the codec sees it, and what the decoder needs to restore it."""

    rgb: np.ndarray
    """uint8 [H, W, 3]: what the model codes (grayscale replicated to 3 channels)."""
    mode: str
    """"RGB", "L", "RGBA" or "LA": the mode the decoder restores."""
    alpha: np.ndarray | None
    """uint8 [H, W], kept losslessly by the codec; None when the image is opaque."""
    icc_profile: bytes | None
    warnings: list[str] = field(default_factory=list)
    """What was lost or changed on the way in, for the user."""
    exif: bytes | None = None
    """EXIF as a TIFF stream (no ``Exif\\0\\0`` prefix), its orientation set to 1: the pixels are upright."""
    xmp: bytes | None = None
    """The XMP packet (UTF-8 XML), its ``tiff:Orientation`` set to 1 likewise."""

    @property
    def height(self) -> int:
        return self.rgb.shape[0]

    @property
    def width(self) -> int:
        return self.rgb.shape[1]

    def with_metadata(self, kinds: Iterable[str]) -> SourceImage:
        """This image keeping only the metadata ``kinds`` (of ``METADATA_KINDS``), for files that must not
        carry the rest (privacy, size)."""
        kinds = parse_metadata(kinds)
        kept = {
            "icc_profile": self.icc_profile if "icc" in kinds else None,
            "exif": self.exif if "exif" in kinds else None,
            "xmp": self.xmp if "xmp" in kinds else None,
        }
        notes = list(self.warnings)
        for field_name, label in (("icc_profile", "ICC profile"), ("exif", "EXIF"), ("xmp", "XMP")):
            data = kept[field_name]
            if data is not None and len(data) > MAX_CHUNK_BYTES:
                notes.append(
                    f"{label} of {len(data)} bytes exceeds a .vqz chunk ({MAX_CHUNK_BYTES}); dropped"
                )
                kept[field_name] = None
        return replace(self, **kept, warnings=notes)


MAX_IMAGE_FILE_BYTES = 8 * MAX_IMAGE_PIXELS + 2**26
"""The most bytes an image file may take to be read from a stream (stdin) whole: the largest image
uncompressed at 16 bits per sample with alpha, and 64 MiB of metadata. More is refused unread."""


def load_image(
    source: str | os.PathLike[str] | bytes | BinaryIO | Image.Image, max_pixels: int = MAX_IMAGE_PIXELS
) -> SourceImage:
    """Read an image file, bytes, binary stream or Pillow image; see the module docstring.

    Raises FormatError for anything that is not a readable, non-empty image and ImageTooLargeError
    for images over ``MAX_IMAGE_SIDE`` a side or ``max_pixels`` in all, checked from the header before
    any pixel is decoded. A missing or unreadable path raises the usual OSError. The input is only
    ever read, from its current position; a stream that cannot seek (a pipe), which Pillow would read
    whole, or is not at its start, is read only up to ``MAX_IMAGE_FILE_BYTES`` (FormatError beyond).
    Anything else is a TypeError.
    """
    if isinstance(source, Image.Image):
        with _reading("image", max_pixels):
            return _from_pil(source, "image", max_pixels)
    if isinstance(source, (str, os.PathLike)):
        name = os.fsdecode(source)
        with open(source, "rb") as fp:
            return _open(fp, name, max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _open(io.BytesIO(source), "image data", max_pixels)
    read = getattr(source, "read", None)
    if read is None:
        kind = type(source).__name__
        raise TypeError(f"expected a path, bytes, a binary file, a PIL image or a uint8 array, got {kind}")
    if not isinstance(read(0), (bytes, bytearray, memoryview)):  # a text file: read(0) decodes nothing
        raise TypeError(f"expected a file opened in binary mode, got {type(source).__name__}")
    name = str(getattr(source, "name", "image stream"))
    seekable = getattr(source, "seekable", None)
    if seekable is None or not seekable() or source.tell() != 0:
        # Pillow would read a pipe whole, and reads a file from its start: the image is what follows
        # the stream's position (as for decompress), read within the limit
        return _open(io.BytesIO(_read_bounded(source, name)), name, max_pixels)
    return _open(source, name, max_pixels)


def _read_bounded(stream: BinaryIO, name: str) -> bytes:
    """All of ``stream``, refused (unread beyond) when it holds more than ``MAX_IMAGE_FILE_BYTES``."""
    limit, data = MAX_IMAGE_FILE_BYTES, bytearray()
    while block := stream.read(min(limit + 1 - len(data), 2**20)):
        data.extend(block)
        if len(data) > limit:
            raise FormatError(f"{name} holds more than {limit:,} bytes, more than any image vqcodec codes")
    return bytes(data)


def to_pil(
    rgb: np.ndarray,
    mode: str,
    alpha: np.ndarray | None,
    icc_profile: bytes | None,
    exif: bytes | None = None,
    xmp: bytes | None = None,
) -> Image.Image:
    """Rebuild the image described by a SourceImage's fields, e.g. from a decoded ``rgb``.

    For "L"/"LA" the gray level is the rounded mean of the three channels: the model's
    reconstruction of a gray image is not exactly gray, and the mean is the least noisy estimate.
    EXIF and XMP go into ``info["exif"]`` (with the ``Exif\\0\\0`` prefix Pillow's writers expect) and
    ``info["xmp"]``, their orientation set to 1: the pixels are upright, a viewer must not turn them.
    """
    _check_rgb(rgb)
    if mode not in MODES:
        raise ValueError(f"unsupported mode {mode!r}; expected one of {', '.join(MODES)}")
    has_alpha = mode in ("RGBA", "LA")
    if has_alpha != (alpha is not None):
        raise ValueError(f"mode {mode} {'needs an' if has_alpha else 'takes no'} alpha plane")
    if alpha is not None and (alpha.dtype != np.uint8 or alpha.shape != rgb.shape[:2]):
        raise ValueError(f"alpha must be uint8 {rgb.shape[:2]}, got {alpha.dtype} {alpha.shape}")

    if mode in ("RGB", "RGBA"):
        colour = rgb
    else:
        colour = ((rgb.sum(axis=2, dtype=np.uint16) + 1) // 3).astype(np.uint8)[..., None]
    planes = colour if alpha is None else np.concatenate([colour, alpha[..., None]], axis=2)
    image = Image.fromarray(np.ascontiguousarray(planes[..., 0] if mode == "L" else planes))
    image.info.update(pil_info(icc_profile, exif, xmp))
    return image


def save_image(
    image: Image.Image,
    path_or_file: str | os.PathLike[str] | BinaryIO,
    format: str | None = None,
    quality: int | None = None,
    extension: str | None = None,
) -> None:
    """Write ``image``, in ``format`` or else the one its file name's extension names (PNG if none).

    The ICC profile, EXIF and XMP in ``image.info`` are written wherever the format can hold them
    (``metadata_options``). A format that
    cannot hold the image's mode gets the nearest one it can (``writable_mode``): without the alpha
    plane (JPEG, PCX, EPS, ...), with a Python warning, or grey as RGB (QOI); a name ending in .pgm
    gets grey and one in .pbm black and white (with a warning), as those names promise (``extension``:
    the name's extension where ``path_or_file`` is a stream that will become a named file).
    ``quality`` (1-100) is for lossy formats (JPEG, WebP, AVIF); WebP at 100 is lossless.
    """
    fmt = (format or _format_from_name(path_or_file)).upper()
    mode = writable_mode(fmt, image.mode)
    if mode is None:
        raise ValueError(f"cannot write {fmt} images with this Pillow")
    extension = (extension if extension is not None else _extension(path_or_file)).lower()
    if fmt == "PPM" and (kind := _EXTENSION_MODES.get(extension)):
        mode, what = kind
        if image.mode.removesuffix("A") != mode:
            pywarnings.warn(f"{extension} files hold {what} images only: written in {what}", stacklevel=2)
    if mode != image.mode:
        if image.mode.endswith("A") and not mode.endswith("A"):
            pywarnings.warn(f"{fmt} cannot store alpha; the alpha plane is dropped", stacklevel=2)
        image = image.convert(mode)
    options: dict[str, object] = dict(_SAVE_OPTIONS.get(fmt, {}))
    if quality is not None:
        options.update(
            {"quality": quality, "lossless": True}
            if fmt == "WEBP" and quality == 100
            else {"quality": quality}
        )
    options.update(metadata_options(image, fmt))
    image.save(path_or_file, format=fmt, **options)


def writable_mode(fmt: str, mode: str) -> str | None:
    """The mode nearest ``mode`` (one of ``MODES``) that Pillow writes in the format ``fmt``: ``mode``
    itself, else without its alpha, else RGB; None if it writes none of them."""
    for candidate in dict.fromkeys((mode, mode.removesuffix("A"), "RGB")):
        if _writes(fmt, candidate):
            return candidate
    return None


@functools.cache
def _writes(fmt: str, mode: str) -> bool:
    """Whether Pillow writes a ``mode`` image in ``fmt``: tried on one pixel, since a format's writer
    says so only by failing."""
    try:
        Image.new(mode, (1, 1)).save(io.BytesIO(), format=fmt)
    except _PILLOW_SAVE_ERRORS:
        return False
    return True


@functools.cache
def pixel_fidelity(fmt: str) -> str | None:
    """None if Pillow writes RGB images in the format ``fmt`` and reads them back as they were; else
    what it does to them, in words ("resizes images", "changes the pixels", "is not read back to
    check the pixels"). Tried once on a noisy image, on which GIF's palette, ICO's sizes and MPO's
    JPEG all show."""
    rgb = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    try:
        Image.fromarray(rgb).save(buffer, format=fmt)
        with Image.open(io.BytesIO(buffer.getvalue())) as written:
            size, back = written.size, np.asarray(written.convert("RGB"))
    except _PILLOW_SAVE_ERRORS:
        return "is not read back to check the pixels"
    if size != (300, 300):
        return "resizes images"
    return None if np.array_equal(back, rgb) else "changes the pixels"


def pad_to_multiple(rgb: np.ndarray, multiple: int) -> np.ndarray:
    """Pad the bottom and right by repeating the edge pixels up to sides divisible by ``multiple``.

    Edge replication keeps the padding as cheap to code as the border it continues. Returns ``rgb``
    itself when no padding is needed.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    height, width = rgb.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f"cannot pad an empty {height}x{width} array")
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h == 0 and pad_w == 0:
        return rgb
    return np.pad(rgb, [(0, pad_h), (0, pad_w)] + [(0, 0)] * (rgb.ndim - 2), mode="edge")


def resize(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """``rgb`` resampled to ``width`` x ``height`` with Pillow's Lanczos filter (a = 3).

    The codec uses it both ways: down to the coded size before encoding, back up after decoding.
    """
    _check_rgb(rgb)
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.LANCZOS))


def crop(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """Undo ``pad_to_multiple``: the top-left ``height`` x ``width`` (a view, not a copy)."""
    if not (0 < height <= rgb.shape[0] and 0 < width <= rgb.shape[1]):
        raise ValueError(f"cannot crop {rgb.shape[0]}x{rgb.shape[1]} to {height}x{width}")
    return rgb[:height, :width]


def _open(fp: BinaryIO, name: str, max_pixels: int) -> SourceImage:
    with _reading(name, max_pixels), Image.open(fp) as image:
        return _from_pil(image, name, max_pixels)


@contextmanager
def _reading(name: str, max_pixels: int) -> Iterator[None]:
    """Turn whatever Pillow raises on bad input into one of this module's one-line errors."""
    try:
        yield
    except VQZError:  # already one of ours (an OSError too, like Pillow's errors)
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{name}: too large ({_one_line(exc)}; {_limits(max_pixels)})") from exc
    except UnidentifiedImageError as exc:
        raise FormatError(f"{name}: not an image, or a format Pillow cannot read") from exc
    except _PILLOW_ERRORS as exc:
        raise FormatError(f"{name}: corrupt or truncated image ({_one_line(exc)})") from exc


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def check_size(width: int, height: int, name: str, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    """Refuse (before anything is allocated) an image outside the limits this implementation codes:
    ``MAX_IMAGE_SIDE`` a side, ``max_pixels`` in all."""
    if width <= 0 or height <= 0:
        raise FormatError(f"{name}: empty image ({width}x{height})")
    if max(width, height) > MAX_IMAGE_SIDE or width * height > max_pixels:
        raise ImageTooLargeError(f"{name}: {width}x{height} is too large ({_limits(max_pixels)})")


def _limits(max_pixels: int) -> str:
    return f"limits: {MAX_IMAGE_SIDE} px a side, {max_pixels} px in all"


def _from_pil(image: Image.Image, name: str, max_pixels: int) -> SourceImage:
    check_size(image.width, image.height, name, max_pixels)
    warnings: list[str] = []
    if getattr(image, "is_animated", False):
        warnings.append("image has several frames; only the first is coded")
    if image.mode not in _WIDE_MODES and _decoded_from_16_bits(image):
        warnings.append("16-bit image reduced to 8 bits")
    image.load()
    icc_profile = image.info.get("icc_profile") or None
    exif, xmp = read_metadata(image, warnings)  # before upright, which re-serialises the EXIF
    image = upright(image, warnings)
    gray_or_rgb, mode, icc_profile = _standard_planes(image, icc_profile, warnings)
    # A few formats (e.g. ICO, EPS) only settle their size as they decode; the codec relies on the limits.
    check_size(gray_or_rgb.shape[1], gray_or_rgb.shape[0], name, max_pixels)

    alpha = None
    if mode in ("RGBA", "LA"):
        gray_or_rgb, alpha = gray_or_rgb[..., :-1], gray_or_rgb[..., -1]
        if alpha.min() == 255:
            alpha, mode = None, mode[:-1]
        else:
            alpha = np.ascontiguousarray(alpha)
    colour_profile = icc_profile is not None and icc_profile[16:20] != _ICC_SPACES["L"]
    if mode in ("RGB", "RGBA") and not colour_profile and _is_gray(gray_or_rgb):
        # Coded as colour, the model's colour would creep into it: code it as the gray it is.
        mode, gray_or_rgb = mode.replace("RGB", "L"), gray_or_rgb[..., 0]
    if mode in ("L", "LA"):
        rgb = np.repeat(gray_or_rgb.reshape(*gray_or_rgb.shape[:2], 1), 3, axis=2)
    else:
        rgb = np.ascontiguousarray(gray_or_rgb)

    if icc_profile is not None and icc_profile[16:20] != _ICC_SPACES[mode]:
        warnings.append(
            f"ICC profile for colour space {icc_profile[16:20]!r} does not fit a {mode} image; dropped"
        )
        icc_profile = None
    return SourceImage(
        rgb=rgb, mode=mode, alpha=alpha, icc_profile=icc_profile, warnings=warnings, exif=exif, xmp=xmp
    )


def _is_gray(rgb: np.ndarray) -> bool:
    """Whether the three channels of ``rgb`` are equal everywhere (a gray picture saved as RGB)."""
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def _decoded_from_16_bits(image: Image.Image) -> bool:
    """Whether Pillow's raw mode for the not yet loaded pixels has 16-bit samples (e.g. "RGB;16B").

    Pillow narrows such images to 8 bits as it decodes them, so the raw mode is the only trace.
    """
    for tile in getattr(image, "tile", ()):
        args = tile.args if isinstance(tile.args, tuple) else (tile.args,)
        if any(isinstance(arg, str) and ";16" in arg for arg in args):
            return True
    return False


def _standard_planes(
    image: Image.Image, icc_profile: bytes | None, warnings: list[str]
) -> tuple[np.ndarray, str, bytes | None]:
    """The pixels as uint8 planes in one of "L", "LA", "RGB", "RGBA", and the ICC profile that fits them."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        samples = np.asarray(image).astype(np.int64)
        if samples.min() < 0 or samples.max() > 65535:
            warnings.append("32-bit integer samples outside 0..65535 clipped")
            samples = samples.clip(0, 65535)
        warnings.append("16-bit image reduced to 8 bits")
        return ((samples * 255 + 32767) // 65535).astype(np.uint8), "L", icc_profile
    if mode == "F":
        warnings.append("32-bit float image reduced to 8 bits")
        samples = np.asarray(image)
        if not np.isfinite(samples).all():  # casting NaN is undefined: say what it becomes
            warnings.append("NaN samples of the float image read as 0, infinite ones clipped")
            samples = np.nan_to_num(samples, nan=0.0, posinf=255.0, neginf=0.0)
        return samples.round().clip(0, 255).astype(np.uint8), "L", icc_profile

    if mode in _EXACT_CONVERSIONS:
        image = image.convert(_EXACT_CONVERSIONS[mode])
    elif mode == "P":
        image = image.convert("RGBA" if image.has_transparency_data else "RGB")
    elif mode in ("L", "RGB") and "transparency" in image.info:
        image = image.convert(mode + "A")
    elif mode == "CMYK":
        image, icc_profile = _cmyk_to_rgb(image, icc_profile, warnings)
    elif mode not in MODES:
        warnings.append(f"{mode} image converted to RGB")
        image = image.convert("RGB")
    return np.asarray(image), image.mode, icc_profile


def _cmyk_to_rgb(
    image: Image.Image, icc_profile: bytes | None, warnings: list[str]
) -> tuple[Image.Image, None]:
    """Convert to RGB, through the ICC profile where possible; the CMYK profile no longer applies after."""
    converted = _to_srgb(image, icc_profile) if icc_profile is not None else None
    if converted is not None:
        warnings.append("CMYK image converted to sRGB with its ICC profile")
        return converted, None
    warnings.append("CMYK image converted to RGB without colour management")
    return image.convert("RGB"), None


def _to_srgb(image: Image.Image, icc_profile: bytes) -> Image.Image | None:
    """Colour-managed conversion to sRGB; None where Pillow lacks LittleCMS or the profile is unusable."""
    try:
        from PIL import ImageCms
    except ImportError:
        return None
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
        return ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError):
        return None


_EXTENSION_MODES = {".pgm": ("L", "grey"), ".pbm": ("1", "black and white")}
"""Extensions of the PPM format that promise one kind of image (Pillow's PPM writer picks the kind,
P6, P5 or P4, by the image's mode): the mode written under that name, and what it holds."""


def _extension(path_or_file: str | os.PathLike[str] | BinaryIO) -> str:
    """A path's (or an open file's) extension in lower case; "" where there is none."""
    is_path = isinstance(path_or_file, (str, os.PathLike))
    name = path_or_file if is_path else getattr(path_or_file, "name", None)
    if not isinstance(name, (str, os.PathLike)):  # BytesIO, or a file opened from a descriptor
        return ""
    return os.path.splitext(os.fsdecode(name))[1].lower()


def _format_from_name(path_or_file: str | os.PathLike[str] | BinaryIO) -> str:
    """The format a path's (or an open file's) extension names; PNG where there is no extension."""
    extension = _extension(path_or_file)
    return output_format(extension) if extension else "PNG"


def output_format(name: str) -> str:
    """The Pillow format that a file name's extension or a format's name (``png``, ``.webp``) says, if
    Pillow writes colour images in it and keeps their size; ValueError otherwise, and for VQZ (an image
    written there would be compressed again)."""
    extension = "." + name.lower().lstrip(".")
    Image.init()
    fmt = Image.registered_extensions().get(extension)
    if fmt is None or fmt not in Image.SAVE or fmt == "VQZ" or writable_mode(fmt, "RGB") is None:
        raise ValueError(f"cannot write images with extension {extension!r} (use e.g. .png, .webp, .jpg)")
    if pixel_fidelity(fmt) == "resizes images":
        raise ValueError(f"{fmt} resizes the images it holds: use e.g. .png, .webp, .jpg")
    return fmt


def _check_rgb(rgb: np.ndarray) -> None:
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected a uint8 [H, W, 3] array, got {rgb.dtype} {rgb.shape}")
