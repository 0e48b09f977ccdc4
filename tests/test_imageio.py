"""Image files to the codec's arrays and back: modes, orientation, ICC, padding, limits, bad input."""

from __future__ import annotations

import hashlib
import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vqcodec import imageio
from vqcodec.errors import FormatError, ImageTooLargeError
from vqcodec.imageio import (
    MAX_IMAGE_PIXELS,
    MAX_IMAGE_SIDE,
    MODES,
    SourceImage,
    check_size,
    crop,
    load_image,
    pad_to_multiple,
    save_image,
    to_pil,
)

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (12, 17, 3), dtype=np.uint8)
GRAY = RNG.integers(0, 256, (12, 17), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, (12, 17), dtype=np.uint8)


def encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_bytes(
    width: int, height: int, bit_depth: int = 8, colour_type: int = 2, rows: bytes | None = None
) -> bytes:
    """A minimal PNG written by hand, to state sizes and bit depths that Pillow would not write."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0))
    data = chunk(b"IDAT", zlib.compress(rows)) if rows is not None else b""
    return b"\x89PNG\r\n\x1a\n" + header + data + chunk(b"IEND", b"")


def round_trip(source: SourceImage) -> Image.Image:
    """What a lossless codec would give back: to_pil, then save and reload as PNG."""
    return Image.open(io.BytesIO(encode(to_pil(source.rgb, source.mode, source.alpha, source.icc_profile))))


def srgb_profile() -> bytes:
    ImageCms = pytest.importorskip("PIL.ImageCms")
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


# Modes


def test_rgb() -> None:
    source = load_image(encode(Image.fromarray(RGB)))
    assert (source.mode, source.alpha, source.icc_profile, source.warnings) == ("RGB", None, None, [])
    assert source.rgb.dtype == np.uint8 and source.rgb.flags.c_contiguous
    np.testing.assert_array_equal(source.rgb, RGB)
    restored = round_trip(source)
    assert restored.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(restored), RGB)


def test_grayscale_is_replicated_and_restored_as_l() -> None:
    source = load_image(encode(Image.fromarray(GRAY)))
    assert source.mode == "L" and source.alpha is None
    np.testing.assert_array_equal(source.rgb, np.repeat(GRAY[..., None], 3, axis=2))
    restored = round_trip(source)
    assert restored.mode == "L"
    np.testing.assert_array_equal(np.asarray(restored), GRAY)


def test_bilevel_becomes_l() -> None:
    source = load_image(encode(Image.fromarray(GRAY > 128)))
    assert source.mode == "L"
    np.testing.assert_array_equal(source.rgb[..., 0], np.where(GRAY > 128, 255, 0))


def test_palette_without_transparency_becomes_rgb() -> None:
    image = Image.fromarray(RGB).quantize(16)
    source = load_image(encode(image))
    assert source.mode == "RGB" and source.alpha is None
    np.testing.assert_array_equal(source.rgb, np.asarray(image.convert("RGB")))


def test_palette_with_transparency_becomes_rgba() -> None:
    image = Image.fromarray(RGB).quantize(16)
    indices = np.asarray(image)
    source = load_image(encode(image, transparency=int(indices[0, 0])))
    assert source.mode == "RGBA"
    np.testing.assert_array_equal(source.alpha, np.where(indices == indices[0, 0], 0, 255))
    np.testing.assert_array_equal(source.rgb, np.asarray(image.convert("RGB")))
    assert round_trip(source).mode == "RGBA"


def test_rgba_keeps_its_alpha() -> None:
    rgba = np.dstack([RGB, ALPHA])
    source = load_image(encode(Image.fromarray(rgba)))
    assert source.mode == "RGBA"
    np.testing.assert_array_equal(source.rgb, RGB)
    np.testing.assert_array_equal(source.alpha, ALPHA)
    assert source.alpha is not None and source.alpha.flags.c_contiguous
    restored = round_trip(source)
    assert restored.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(restored), rgba)


def test_opaque_alpha_is_dropped() -> None:
    source = load_image(encode(Image.fromarray(np.dstack([RGB, np.full_like(ALPHA, 255)]))))
    assert source.mode == "RGB" and source.alpha is None
    np.testing.assert_array_equal(source.rgb, RGB)
    source = load_image(encode(Image.fromarray(np.dstack([GRAY, np.full_like(ALPHA, 255)]))))
    assert source.mode == "L" and source.alpha is None


def test_la_keeps_its_alpha() -> None:
    la = np.dstack([GRAY, ALPHA])
    source = load_image(encode(Image.fromarray(la)))
    assert source.mode == "LA"
    np.testing.assert_array_equal(source.rgb, np.repeat(GRAY[..., None], 3, axis=2))
    np.testing.assert_array_equal(source.alpha, ALPHA)
    restored = round_trip(source)
    assert restored.mode == "LA"
    np.testing.assert_array_equal(np.asarray(restored), la)


@pytest.mark.parametrize(("mode", "expected"), [("L", "LA"), ("RGB", "RGBA")])
def test_transparent_colour_becomes_alpha(mode: str, expected: str) -> None:
    image = Image.fromarray(GRAY if mode == "L" else RGB)
    key = image.getpixel((0, 0))
    source = load_image(encode(image, transparency=key))
    assert source.mode == expected
    assert source.alpha is not None and source.alpha[0, 0] == 0 and source.alpha.max() == 255


def test_16_bit_grayscale_is_rounded_to_8_bits() -> None:
    samples = RNG.integers(0, 65536, (12, 17), dtype=np.uint16)
    samples[0, :4] = [0, 128, 129, 65535]  # 128 / 257 rounds down, 129 / 257 up
    image = Image.fromarray(samples)
    assert image.mode == "I;16"
    source = load_image(encode(image))
    assert source.mode == "L"
    assert "16-bit image reduced to 8 bits" in source.warnings
    np.testing.assert_array_equal(source.rgb[..., 0], np.round(samples / 257).astype(np.uint8))
    assert list(source.rgb[0, :4, 0]) == [0, 0, 1, 255]


def test_16_bit_rgb_is_reduced_with_a_warning() -> None:
    samples = RNG.integers(0, 65536, (5, 6, 3), dtype=np.uint16)
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in samples)
    source = load_image(png_bytes(6, 5, bit_depth=16, colour_type=2, rows=rows))
    assert source.mode == "RGB"
    assert "16-bit image reduced to 8 bits" in source.warnings
    # Pillow keeps the high byte, so this is within one level of rounding.
    assert np.abs(source.rgb.astype(int) - np.round(samples / 257)).max() <= 1


def test_cmyk_jpeg_becomes_rgb() -> None:
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red ink
    source = load_image(encode(cmyk, "JPEG", quality=95))
    assert source.mode == "RGB"
    assert any("CMYK" in warning for warning in source.warnings)
    assert np.abs(source.rgb.astype(int) - [255, 0, 0]).max() <= 3


def test_cmyk_with_an_unusable_profile_falls_back_to_plain_conversion() -> None:
    cmyk = Image.new("CMYK", (8, 8), (0, 128, 255, 0))  # a colour: equal channels would be coded as gray
    source = load_image(encode(cmyk, "JPEG", icc_profile=srgb_profile()))
    assert source.mode == "RGB" and source.icc_profile is None
    assert "CMYK image converted to RGB without colour management" in source.warnings


@pytest.mark.parametrize("mode", ["1", "I", "F", "La", "PA", "RGBa", "RGBX", "YCbCr", "LAB", "HSV", "CMYK"])
def test_every_pillow_mode_gives_a_codec_image(mode: str) -> None:
    source = load_image(Image.new(mode, (5, 3)))
    assert source.mode in MODES
    assert source.rgb.shape == (3, 5, 3) and source.rgb.dtype == np.uint8
    assert (source.alpha is not None) == (source.mode in ("RGBA", "LA"))
    to_pil(source.rgb, source.mode, source.alpha, source.icc_profile)


def test_animation_keeps_the_first_frame_with_a_warning() -> None:
    frames = [Image.new("RGB", (4, 4), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    source = load_image(data)
    assert "image has several frames; only the first is coded" in source.warnings
    np.testing.assert_array_equal(source.rgb[0, 0], [255, 0, 0])


# Orientation and ICC


def test_exif_orientation_is_applied() -> None:
    blocks = np.kron(RNG.integers(0, 256, (2, 3, 3)), np.ones((8, 8, 1))).astype(np.uint8)  # 16 x 24
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    source = load_image(
        encode(Image.fromarray(blocks), "JPEG", quality=95, subsampling=0, exif=exif.tobytes())
    )
    assert source.rgb.shape == (24, 16, 3)
    error = np.abs(source.rgb.astype(int) - np.rot90(blocks, k=-1)).mean()
    assert error < 4, error


def test_rgb_with_equal_channels_is_coded_as_gray() -> None:
    """A gray photograph saved as RGB comes back gray, not tinted by the model's colour."""
    gray_rgb = np.repeat(GRAY[..., None], 3, axis=2)
    source = load_image(encode(Image.fromarray(gray_rgb)))
    assert (source.mode, source.warnings) == ("L", [])
    np.testing.assert_array_equal(source.rgb, gray_rgb)
    with_alpha = load_image(encode(Image.fromarray(np.dstack([gray_rgb, ALPHA]))))
    assert with_alpha.mode == "LA" and np.array_equal(with_alpha.alpha, ALPHA)
    # A colour profile says the pixels are colour: kept as RGB with it.
    assert load_image(encode(Image.fromarray(gray_rgb), icc_profile=srgb_profile())).mode == "RGB"
    almost = gray_rgb.copy()
    almost[3, 4, 2] ^= 1
    assert load_image(encode(Image.fromarray(almost))).mode == "RGB"


def test_icc_profile_is_kept_and_written_back() -> None:
    profile = srgb_profile()
    source = load_image(encode(Image.fromarray(RGB), icc_profile=profile))
    assert source.icc_profile == profile and source.warnings == []
    image = to_pil(source.rgb, source.mode, source.alpha, source.icc_profile)
    assert image.info["icc_profile"] == profile
    for fmt in ("PNG", "JPEG"):
        buffer = io.BytesIO()
        save_image(image, buffer, format=fmt)
        assert Image.open(io.BytesIO(buffer.getvalue())).info.get("icc_profile") == profile


def test_icc_profile_of_the_wrong_colour_space_is_dropped() -> None:
    source = load_image(encode(Image.fromarray(GRAY), icc_profile=srgb_profile()))
    assert source.mode == "L" and source.icc_profile is None
    assert any("ICC profile" in warning for warning in source.warnings)


# Output


def test_gray_from_a_decoded_colour_array_is_the_rounded_mean() -> None:
    rgb = np.array([[[10, 11, 13], [0, 0, 1], [255, 255, 254]]], dtype=np.uint8)
    image = to_pil(rgb, "L", None, None)
    assert image.mode == "L"
    assert list(np.asarray(image)[0]) == [11, 0, 255]


def test_to_pil_rejects_inconsistent_fields() -> None:
    with pytest.raises(ValueError, match="alpha"):
        to_pil(RGB, "RGBA", None, None)
    with pytest.raises(ValueError, match="alpha"):
        to_pil(RGB, "RGB", ALPHA, None)
    with pytest.raises(ValueError, match="mode"):
        to_pil(RGB, "CMYK", None, None)
    with pytest.raises(ValueError, match="uint8"):
        to_pil(RGB.astype(np.float32), "RGB", None, None)


def test_save_image_picks_the_format_from_the_extension(tmp_path) -> None:
    image = Image.fromarray(RGB)
    for name, fmt in (("a.png", "PNG"), ("b.JPG", "JPEG"), ("c.webp", "WEBP"), ("d", "PNG")):
        save_image(image, tmp_path / name)
        with Image.open(tmp_path / name) as saved:
            assert saved.format == fmt
    with pytest.raises(ValueError, match="extension"):
        save_image(image, tmp_path / "e.notaformat")


def test_save_image_drops_alpha_for_jpeg(tmp_path) -> None:
    with pytest.warns(UserWarning, match="alpha"):
        save_image(Image.fromarray(np.dstack([RGB, ALPHA])), tmp_path / "a.jpg")
    with Image.open(tmp_path / "a.jpg") as saved:
        assert saved.mode == "RGB"


# Padding


@pytest.mark.parametrize(("height", "width"), [(1, 1), (7, 13), (64, 64)])
def test_pad_to_multiple_and_crop_back(height: int, width: int) -> None:
    rgb = RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)
    padded = pad_to_multiple(rgb, 8)
    assert padded.shape == (-(-height // 8) * 8, -(-width // 8) * 8, 3)
    np.testing.assert_array_equal(padded[height:], np.broadcast_to(padded[height - 1], padded[height:].shape))
    np.testing.assert_array_equal(
        padded[:, width:], np.repeat(padded[:, width - 1 : width], padded.shape[1] - width, 1)
    )
    np.testing.assert_array_equal(crop(padded, height, width), rgb)


def test_padding_and_crop_reject_bad_arguments() -> None:
    with pytest.raises(ValueError):
        pad_to_multiple(RGB, 0)
    with pytest.raises(ValueError):
        crop(RGB, 13, 17)
    with pytest.raises(ValueError):
        crop(RGB, 0, 17)


# Limits and bad input


def test_header_claiming_a_huge_size_is_rejected() -> None:
    with pytest.raises(ImageTooLargeError, match="too large"):
        load_image(png_bytes(100_000, 100_000))


def test_size_is_checked_before_decoding() -> None:
    # No pixel data at all: decoding would fail, so this error can only come from the header.
    with pytest.raises(ImageTooLargeError, match="20000x1"):
        load_image(png_bytes(20_000, 1))


def test_pixel_limit() -> None:
    assert load_image(encode(Image.fromarray(RGB)), max_pixels=12 * 17).rgb.shape == (12, 17, 3)
    with pytest.raises(ImageTooLargeError, match=f"{12 * 17 - 1} px in all"):
        load_image(encode(Image.fromarray(RGB)), max_pixels=12 * 17 - 1)
    with pytest.raises(ImageTooLargeError):
        load_image(Image.fromarray(RGB), max_pixels=12 * 17 - 1)


def test_size_limits_and_a_larger_pixel_budget() -> None:
    side, rows = MAX_IMAGE_SIDE, MAX_IMAGE_PIXELS // MAX_IMAGE_SIDE
    check_size(side, rows, "image")
    with pytest.raises(ImageTooLargeError, match="too large"):
        check_size(side, rows + 1, "image")
    check_size(side, rows + 1, "image", max_pixels=2 * MAX_IMAGE_PIXELS)
    with pytest.raises(ImageTooLargeError, match="too large"):  # the side's limit is not the budget's
        check_size(side + 1, 1, "image", max_pixels=2 * MAX_IMAGE_PIXELS)


def test_empty_image_is_rejected() -> None:
    with pytest.raises(FormatError, match="empty"):
        load_image(Image.new("RGB", (0, 3)))
    with pytest.raises(FormatError):
        load_image(png_bytes(0, 5))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        bytes(RNG.integers(0, 256, 1000, dtype=np.uint8)),
        b"hello, world\n",
        encode(Image.fromarray(RGB))[:100],
        encode(Image.fromarray(RGB), "JPEG")[:300],
    ],
    ids=["empty", "random", "text", "truncated-png", "truncated-jpeg"],
)
def test_garbage_raises_format_error(data: bytes, tmp_path) -> None:
    with pytest.raises(FormatError):
        load_image(data)
    path = tmp_path / "garbage.png"
    path.write_bytes(data)
    with pytest.raises(FormatError, match="garbage.png"):
        load_image(path)


def test_missing_file_is_an_os_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png")


def test_input_file_is_not_modified(tmp_path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "in.jpg"
    Image.fromarray(RGB).save(path, exif=exif.tobytes())
    before = hashlib.sha256(path.read_bytes()).digest(), path.stat().st_mtime_ns
    for source in (path, str(path), path.read_bytes(), io.BytesIO(path.read_bytes())):
        load_image(source)
    with Image.open(path) as image:
        load_image(image)
        assert image.getexif()[0x0112] == 6
    assert (hashlib.sha256(path.read_bytes()).digest(), path.stat().st_mtime_ns) == before


def test_nan_in_a_float_image_reads_as_zero() -> None:
    """numpy's cast of NaN to uint8 is undefined (and warned of): the codec says what it makes of it."""
    samples = np.full((4, 4), np.nan, np.float32)
    samples[0, 0], samples[1, 1] = np.inf, 100.4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's RuntimeWarning no longer escapes
        source = load_image(Image.fromarray(samples, "F"))
    assert source.rgb[..., 0].tolist()[:2] == [[255, 0, 0, 0], [0, 100, 0, 0]]
    assert any("NaN samples" in warning for warning in source.warnings)


def test_a_stream_is_read_from_its_position() -> None:
    """As decompress reads a .vqz file: Pillow alone went back to the stream's start, and coded the
    image before the one at the position."""
    first, second = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(first, "PNG")
    Image.new("RGB", (8, 8), (0, 0, 255)).save(second, "PNG")
    stream = io.BytesIO(first.getvalue() + second.getvalue())
    stream.seek(len(first.getvalue()))
    assert load_image(stream).rgb[0, 0].tolist() == [0, 0, 255]


def test_metadata_a_vqz_chunk_cannot_hold_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(imageio, "MAX_CHUNK_BYTES", 16)
    image = Image.fromarray(np.zeros((4, 4, 3), np.uint8))
    image.info["xmp"] = b"<x:xmpmeta>" + bytes(16) + b"</x:xmpmeta>"
    source = load_image(image).with_metadata("all")
    assert source.xmp is None
    assert any("XMP of" in warning and "dropped" in warning for warning in source.warnings)


@pytest.mark.parametrize(
    ("fmt", "mode", "written"), [("PCX", "LA", "L"), ("EPS", "RGBA", "RGB"), ("QOI", "L", "RGB")]
)
def test_a_format_gets_the_nearest_mode_it_writes(fmt: str, mode: str, written: str) -> None:
    image = Image.new(mode, (5, 3))
    buffer = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        save_image(image, buffer, format=fmt)
    assert ("alpha plane is dropped" in str(caught[0].message)) if mode.endswith("A") else not caught
    if fmt != "EPS":  # Pillow reads EPS only with Ghostscript
        assert Image.open(io.BytesIO(buffer.getvalue())).mode == written


@pytest.mark.parametrize(
    ("name", "mode", "written", "warned"),
    [
        ("a.pgm", "RGB", "L", True),
        ("a.pgm", "L", "L", False),
        ("a.pbm", "L", "1", True),
        ("a.ppm", "L", "L", False),
    ],
)
def test_a_pgm_or_pbm_name_gets_the_kind_it_promises(
    tmp_path: Path, name: str, mode: str, written: str, warned: bool
) -> None:
    """Pillow's PPM writer picks P6/P5/P4 by mode: a colour image named .pgm was a P6 file."""
    image = Image.new(mode, (5, 3), 200)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        save_image(image, tmp_path / name)
        buffer = io.BytesIO()
        save_image(image, buffer, format="PPM", extension=name[1:])
    assert [f"{name[1:]} files hold" in str(w.message) for w in caught] == [warned] * 2 * warned
    for data in (buffer.getvalue(), (tmp_path / name).read_bytes()):
        assert Image.open(io.BytesIO(data)).mode == written


def test_formats_pillow_cannot_write_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot write XBM images"):
        save_image(Image.new("RGB", (2, 2)), io.BytesIO(), format="XBM")
