"""``vqcodec train pack``: downscaled WebP copies of an image folder, read as training reads images,
planned in full before anything is written, never written into or over the image folder."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from vqcodec.cli import main
from vqcodec.cli_errors import EXIT_BAD_INPUT, EXIT_OUTPUT_EXISTS, EXIT_USAGE
from vqcodec.errors import ImageTooLargeError
from vqcodec.train.data import load_rgb
from vqcodec.train.pack import pack_folder


def save(path: Path, width: int = 40, height: int = 30, **options: object) -> Path:
    """A small gradient image at ``path``, in the format its suffix names."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 128)], axis=2).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **options)
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) and its bytes: to show that nothing changed."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def pack(*args: str | Path) -> Result:
    return CliRunner().invoke(main, ["train", "pack", *(str(a) for a in args)])


def fails(result: Result, status: int, message: str) -> None:
    """The command exited with ``status`` and one error line that says ``message``, no traceback:
    ``vqcodec: error:``, or click's ``Error:`` for a usage error."""
    assert result.exit_code == status and isinstance(result.exception, SystemExit), result.output
    prefix = "Error:" if status == EXIT_USAGE else "vqcodec: error:"
    errors = [line for line in result.stderr.splitlines() if line.startswith(prefix)]
    assert len(errors) == 1 and message in errors[0], result.stderr


def test_copies_are_downscaled_webp_in_the_same_tree(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    save(src / "a.png", 80, 40)
    save(src / "sub" / "b.JPG", 20, 30, quality=95)
    before = snapshot(src)
    result = pack("--data", src, "--out", dst, "--short-side", "32")
    assert result.exit_code == 0, result.output
    copies = sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file())
    assert copies == ["a.webp", "sub/b.webp"]  # no temporary file left behind
    size = sum((dst / copy).stat().st_size for copy in copies)
    assert result.stdout == f"{size} bytes written to {dst}\n"
    with Image.open(dst / "a.webp") as a, Image.open(dst / "sub" / "b.webp") as b:
        assert (a.format, a.size) == ("WEBP", (64, 32))
        assert b.size == (20, 30)  # never upscaled
    assert snapshot(src) == before


@pytest.mark.parametrize("where", ["same", "inside", "holding"])
def test_out_is_never_the_image_folder_or_around_it(tmp_path: Path, where: str) -> None:
    src = {"same": tmp_path, "inside": tmp_path, "holding": tmp_path / "photos"}[where]
    dst = {"same": tmp_path, "inside": tmp_path / "packed", "holding": tmp_path}[where]
    save(src / "a.webp")
    save(src / "photos" / "a.png")  # "holding": would be packed to photos/a.webp, over an image
    before = snapshot(tmp_path)
    with pytest.raises(FileExistsError, match="image folder"):
        pack_folder(src, dst, short_side=16)
    fails(pack("--data", src, "--out", dst, "--short-side", "16"), EXIT_OUTPUT_EXISTS, "image folder")
    assert snapshot(tmp_path) == before


def test_out_reached_through_a_symbolic_link_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    save(src / "a.png")
    (tmp_path / "link").symlink_to(src)
    with pytest.raises(FileExistsError, match="is the image folder"):
        pack_folder(src, tmp_path / "link" / ".." / "src")
    with pytest.raises(FileExistsError, match="lies inside the image folder"):
        pack_folder(src, tmp_path / "link" / "packed")
    save(src / "sub" / "b.png")
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "sub").symlink_to(src / "sub")  # sub/b.webp would land beside sub/b.png
    with pytest.raises(FileExistsError, match="b.webp lies inside the image folder"):
        pack_folder(src, tmp_path / "dst")
    assert sorted(snapshot(src)) == ["a.png", "sub/b.png"]


def test_two_images_with_one_copy_name_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    save(src / "a.png")
    save(src / "b.jpg")
    save(src / "b.png")
    message = f"{src / 'b.jpg'} and {src / 'b.png'} would both be written to {dst / 'b.webp'}"
    with pytest.raises(ValueError, match="would both be written"):
        pack_folder(src, dst)
    fails(pack("--data", src, "--out", dst), EXIT_BAD_INPUT, message)
    assert not dst.exists()


def test_existing_copies_are_replaced_only_with_force(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    for name in ("a", "b", "c"):
        save(src / f"{name}.png")
    (dst / "b.webp").parent.mkdir()
    (dst / "b.webp").write_bytes(b"mine")
    (dst / "c.webp").write_bytes(b"mine too")
    with pytest.raises(FileExistsError, match=r"b\.webp and 1 more copies exist \(use --force"):
        pack_folder(src, dst)
    fails(pack("--data", src, "--out", dst), EXIT_OUTPUT_EXISTS, "b.webp and 1 more copies exist")
    assert snapshot(dst) == {"b.webp": b"mine", "c.webp": b"mine too"}  # a.webp not written either
    (dst / "c.webp").unlink()
    fails(pack("--data", src, "--out", dst), EXIT_OUTPUT_EXISTS, "b.webp exists (use --force")

    assert pack("--data", src, "--out", dst, "--force").exit_code == 0
    assert sorted(snapshot(dst)) == ["a.webp", "b.webp", "c.webp"]
    with Image.open(dst / "b.webp") as copy:
        assert copy.format == "WEBP"


def test_exif_orientation_is_applied_as_training_reads_it(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    pixels = np.zeros((16, 32, 3), np.uint8)
    pixels[:, :16] = (255, 0, 0)  # stored: red left half, blue right half
    pixels[:, 16:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display: red on top
    src.mkdir()
    Image.fromarray(pixels).save(src / "photo.jpg", quality=95, subsampling=0, exif=exif.tobytes())
    pack_folder(src, dst, short_side=64)
    with Image.open(dst / "photo.webp") as copy:
        upright = np.asarray(copy.convert("RGB"), dtype=np.int16)
    assert upright.shape == (32, 16, 3)
    assert np.abs(upright - np.asarray(load_rgb(src / "photo.jpg"), dtype=np.int16)).mean() < 8


def test_an_image_too_large_is_refused_from_its_header(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))  # 400 Mpx, RGB
    (src / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IEND", b""))
    with pytest.raises(ImageTooLargeError, match="too large"):
        pack_folder(src, dst)
    fails(pack("--data", src, "--out", dst), EXIT_BAD_INPUT, "huge.png: too large")


def test_a_bad_image_leaves_no_partial_copy(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    save(src / "a.png")
    data = io.BytesIO()
    Image.new("RGB", (64, 64)).save(data, "PNG")
    (src / "b.png").write_bytes(data.getvalue()[:60])  # truncated
    fails(pack("--data", src, "--out", dst), EXIT_BAD_INPUT, "b.png: corrupt or truncated")
    assert list(snapshot(dst)) == ["a.webp"]  # whole copies only, no temporary file


def test_a_folder_without_images_is_refused(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "notes.txt").write_text("no pictures here")
    with pytest.raises(ValueError, match="no images"):
        pack_folder(src, dst)
    fails(pack("--data", src, "--out", dst), EXIT_BAD_INPUT, "no images")
    assert not dst.exists()
