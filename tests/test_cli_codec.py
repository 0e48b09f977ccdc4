"""The codec commands: round trips, stdin/stdout, no clobbering, one-line errors with their exit codes;
and the one error policy that every command follows."""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from PIL import Image

from vqcodec import zoo
from vqcodec.cli import main
from vqcodec.cli_errors import (
    EXIT_BAD_INPUT,
    EXIT_BROKEN_PIPE,
    EXIT_MODEL,
    EXIT_OUTPUT_EXISTS,
    EXIT_USAGE,
    reports_errors,
)


@pytest.fixture(scope="module")
def model(untrained_model_file: Path) -> str:
    return str(untrained_model_file)


@pytest.fixture(autouse=True)
def empty_zoo(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No bundled models, whatever the checkout holds: the tests name their model."""
    folder = tmp_path_factory.mktemp("zoo")
    monkeypatch.setattr(zoo, "ZOO_DIR", folder)
    return folder


@pytest.fixture
def png(tmp_path: Path) -> Path:
    y, x = np.mgrid[0:21, 0:30]
    pixels = np.stack([x * 8, y * 12, (x + y) * 4], axis=-1).astype(np.uint8)
    path = tmp_path / "in.png"
    Image.fromarray(pixels).save(path)
    return path


def run(*args: str | Path, input: bytes | None = None) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def assert_error(result: Result, code: int, message: str) -> None:
    """Exit status ``code`` and exactly one line on stderr, the error, with no traceback."""
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vqcodec: error: "), result.stderr
    assert message in lines[0]
    assert result.stdout == ""


def files_in(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_round_trip_through_files(model: str, png: Path, tmp_path: Path):
    vqz, out = tmp_path / "a.vqz", tmp_path / "b.webp"
    assert run("compress", "--model", model, png, vqz).exit_code == 0
    assert vqz.read_bytes()[:3] == b"VQZ"
    result = run("decompress", "-m", model, vqz, out)
    assert result.exit_code == 0, result.output
    with Image.open(out) as image:
        assert (image.format, image.size) == ("WEBP", (30, 21))
    assert files_in(tmp_path) == {"in.png", "a.vqz", "b.webp"}  # no temporary files left


def test_stdin_and_stdout(model: str, png: Path):
    compressed = run("compress", "-m", model, "-", "-", input=png.read_bytes())
    assert compressed.exit_code == 0 and compressed.stdout_bytes[:3] == b"VQZ"
    decompressed = run("decompress", "-m", model, "-", "-", input=compressed.stdout_bytes)
    assert decompressed.exit_code == 0
    assert Image.open(io.BytesIO(decompressed.stdout_bytes)).format == "PNG"
    assert compressed.stderr == decompressed.stderr == ""  # no warnings (e.g. click deprecations)


def test_quality_picks_the_operating_point(model: str, png: Path, tmp_path: Path):
    sizes = {}
    for quality in (1, 4):
        vqz = tmp_path / f"q{quality}.vqz"
        assert run("compress", "-m", model, "--quality", str(quality), png, vqz).exit_code == 0
        sizes[quality] = vqz.stat().st_size
        out = tmp_path / f"q{quality}.png"
        assert run("decompress", "-m", model, vqz, out).exit_code == 0
        with Image.open(out) as image:
            assert image.size == (30, 21)
    assert sizes[1] < sizes[4]
    info = run("info", "-m", model, tmp_path / "q1.vqz").stdout
    assert "coded     15x11 (WxH), resized to the image on decoding" in info
    assert "coded " not in run("info", "-m", model, tmp_path / "q4.vqz").stdout
    assert run("compress", "-m", model, "-q", "5", png, tmp_path / "x.vqz").exit_code == EXIT_USAGE


def test_tile_option(model: str, tmp_path: Path):
    """A 100 x 70 image is one 256-pixel tile (no TILES chunk); 64-pixel ones cut it (into 2 x 2 tiles of
    56 x 40, padded to 104 x 72), 0 codes it whole."""
    png = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (70, 100, 3), dtype=np.uint8)).save(png)
    for tile in ("256", "64", "0"):
        vqz = tmp_path / f"{tile}.vqz"
        assert run("compress", "-m", model, "--tile", tile, png, vqz).exit_code == 0
        assert run("decompress", "-m", model, vqz, tmp_path / f"{tile}.png").exit_code == 0
    assert (tmp_path / "256.vqz").read_bytes() == (tmp_path / "0.vqz").read_bytes()
    assert "tiles     56x40 (WxH) pixels" in run("info", "-m", model, tmp_path / "64.vqz").stdout
    assert "tiles " not in run("info", "-m", model, tmp_path / "0.vqz").stdout
    result = run("compress", "-m", model, "--tile", "100", png, tmp_path / "x.vqz")
    assert result.exit_code == EXIT_USAGE and "multiple of 8" in result.stderr
    assert not (tmp_path / "x.vqz").exists()


def test_no_overwrite_without_force(model: str, png: Path, tmp_path: Path):
    out = tmp_path / "out.vqz"
    out.write_bytes(b"precious")
    assert_error(run("compress", "-m", model, png, out), EXIT_OUTPUT_EXISTS, "--force")
    assert out.read_bytes() == b"precious"
    assert run("compress", "-m", model, "--force", png, out).exit_code == 0
    assert out.read_bytes()[:3] == b"VQZ"


def test_never_overwrite_the_input(model: str, png: Path):
    before = png.read_bytes()
    alias = png.parent / ".." / png.parent.name / png.name
    assert_error(run("compress", "-m", model, "--force", png, alias), EXIT_OUTPUT_EXISTS, "input")
    assert png.read_bytes() == before


def test_never_overwrite_the_input_through_stdin_or_stdout(model: str, png: Path):
    """``compress - IN < IN`` and ``decompress IN - 1<> IN`` name the input only through a redirection."""
    before = png.read_bytes()
    command = [
        sys.executable,
        "-m",
        "vqcodec",
        "compress",
        "-m",
        model,
        "--format",
        "vqz",
        "-f",
        "-",
        str(png),
    ]
    with png.open("rb") as stdin:
        result = subprocess.run(command, stdin=stdin, capture_output=True, text=True)
    assert result.returncode == EXIT_OUTPUT_EXISTS and "the file stdin reads" in result.stderr
    assert png.read_bytes() == before
    vqz = png.with_suffix(".vqz")
    vqz.write_bytes(vqz_bytes(model, png))
    data = vqz.read_bytes()
    with vqz.open("r+b") as stdout:
        command = [sys.executable, "-m", "vqcodec", "decompress", "-m", model, str(vqz), "-"]
        result = subprocess.run(command, stdout=stdout, stderr=subprocess.PIPE, text=True)
    assert result.returncode == EXIT_OUTPUT_EXISTS and "stdout is the input file" in result.stderr
    assert vqz.read_bytes() == data


def test_closed_stdin_or_stdout_is_one_error_line(model: str, png: Path, tmp_path: Path):
    out = tmp_path / "x.vqz"
    vqcodec = f"{shlex.quote(sys.executable)} -m vqcodec compress -m {shlex.quote(model)}"
    for command in (f"{vqcodec} {shlex.quote(str(png))} - >&-", f"{vqcodec} - {shlex.quote(str(out))} <&-"):
        result = subprocess.run(["bash", "-c", command], capture_output=True, text=True)
        assert result.returncode == EXIT_BAD_INPUT, result.stderr
        assert result.stderr.startswith("vqcodec: error: ") and result.stderr.endswith("is closed\n")
    assert not out.exists()


def vqz_bytes(model: str, png: Path) -> bytes:
    return run("compress", "-m", model, png, "-").stdout_bytes


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda data: b"", "truncated"),
        (lambda data: data[:-7], "truncated"),
        (lambda data: data[:40] + bytes([data[40] ^ 4]) + data[41:], "CRC"),
        (lambda data: b"PNG" + data[3:], "signature"),
        (lambda data: data[:3] + b"\x30" + data[4:], "version 3.0"),
        (lambda data: data[:3] + b"\x13" + data[4:], "vqcodec 0.1"),
    ],
)
def test_damaged_vqz_is_one_error_line_and_no_output(model: str, png: Path, tmp_path: Path, damage, message):
    bad = tmp_path / "bad.vqz"
    bad.write_bytes(damage(vqz_bytes(model, png)))
    before = files_in(tmp_path)
    assert_error(run("decompress", "-m", model, bad, tmp_path / "out.png"), EXIT_BAD_INPUT, message)
    assert files_in(tmp_path) == before


def test_huge_header_is_refused(model: str, png: Path, tmp_path: Path):
    import struct
    import zlib

    data = vqz_bytes(model, png)
    side = b"\xbf\x84\x3d"  # varint 10**6 - 1
    header_end = next(
        n for n in range(32, 80) if zlib.crc32(data[: n - 4]) == struct.unpack("<I", data[n - 4 : n])[0]
    )
    header = data[:20] + side + side + data[22 : header_end - 4]  # 30 x 21 has 1-byte width and height
    bad = tmp_path / "huge.vqz"
    bad.write_bytes(header + struct.pack("<I", zlib.crc32(header)) + data[header_end:])
    assert_error(run("decompress", "-m", model, bad, tmp_path / "out.png"), EXIT_BAD_INPUT, "1000000x1000000")


@pytest.mark.parametrize("content", [b"", b"this is not an image\n"])
def test_not_an_image(model: str, tmp_path: Path, content: bytes):
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    assert_error(run("compress", "-m", model, bad, tmp_path / "out.vqz"), EXIT_BAD_INPUT, "not an image")
    assert files_in(tmp_path) == {"bad.png"}


def test_missing_input(model: str, tmp_path: Path):
    result = run("compress", "-m", model, tmp_path / "missing.png", tmp_path / "out.vqz")
    assert_error(result, EXIT_BAD_INPUT, "No such file")


def test_output_folder_must_exist(model: str, png: Path, tmp_path: Path):
    assert_error(
        run("compress", "-m", model, png, tmp_path / "no" / "out.vqz"), EXIT_BAD_INPUT, "no such folder"
    )
    folder = tmp_path / "folder.vqz"
    folder.mkdir()
    assert_error(run("compress", "-m", model, "-f", png, folder), EXIT_BAD_INPUT, "is a folder")


def test_out_dir_is_made_for_one_input_too(model: str, png: Path, tmp_path: Path):
    assert run("compress", "-m", model, png, "-o", tmp_path / "made").exit_code == 0
    assert (
        run("decompress", "-m", model, tmp_path / "made" / "in.vqz", "-o", tmp_path / "made2").exit_code == 0
    )
    assert (tmp_path / "made2" / "in.png").is_file()


def test_a_large_input_that_is_not_vqz_is_refused_at_once(model: str, tmp_path: Path):
    big = tmp_path / "big.vqz"
    with big.open("wb") as f:
        f.truncate(2**33)  # sparse: 8 GB of zeros, never read
    assert_error(run("info", big), EXIT_BAD_INPUT, "bad signature")
    assert_error(run("decompress", "-m", model, big, tmp_path / "out.png"), EXIT_BAD_INPUT, "bad signature")


def test_a_pipe_larger_than_any_image_is_refused(model: str, png: Path, tmp_path: Path):
    out = tmp_path / "out.vqz"
    script = (
        "import sys, vqcodec.imageio; vqcodec.imageio.MAX_IMAGE_FILE_BYTES = 10;"
        f" sys.argv = ['vqcodec', 'compress', '-m', {model!r}, '-', {str(out)!r}];"
        " from vqcodec.cli import main; main()"
    )
    result = subprocess.run([sys.executable, "-c", script], input=png.read_bytes(), capture_output=True)
    assert result.returncode == EXIT_BAD_INPUT
    assert b"holds more than 10 bytes" in result.stderr and result.stderr.count(b"\n") == 1
    assert not out.exists()


def test_write_errors_name_the_output(model: str, png: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / ".out.vqz.x.tmp"))

    monkeypatch.setattr("tempfile.mkstemp", refuse)
    out = tmp_path / "out.vqz"
    assert_error(run("compress", "-m", model, png, out), EXIT_BAD_INPUT, f"{out}: Permission denied")


def test_model_problems(model: str, png: Path, tmp_path: Path):
    out = tmp_path / "out.vqz"
    assert_error(run("compress", png, out), EXIT_MODEL, "no bundled default model")
    assert_error(run("compress", "-m", "nosuchmodel", png, out), EXIT_MODEL, "no model named 'nosuchmodel'")
    not_a_model = tmp_path / "fake.safetensors"
    not_a_model.write_bytes(b"12345678")
    assert_error(run("compress", "-m", not_a_model, png, out), EXIT_MODEL, "not a model file")
    assert_error(run("compress", "-m", tmp_path, png, out), EXIT_MODEL, "not a regular file")

    vqz = tmp_path / "a.vqz"
    vqz.write_bytes(vqz_bytes(model, png))
    assert_error(run("decompress", vqz, tmp_path / "a.png"), EXIT_MODEL, "not bundled")
    assert not out.exists() and not (tmp_path / "a.png").exists()


def test_usage_errors(model: str, png: Path, tmp_path: Path):
    vqz = tmp_path / "a.vqz"
    vqz.write_bytes(vqz_bytes(model, png))
    result = run("decompress", "-m", model, vqz, tmp_path / "out.xyz")
    assert result.exit_code == EXIT_USAGE and "cannot write images with extension '.xyz'" in result.stderr
    result = run("decompress", "-m", model, vqz, tmp_path / "out.xbm")  # Pillow's XBM writes 1-bit only
    assert result.exit_code == EXIT_USAGE and "'.xbm'" in result.stderr
    result = run("decompress", "-m", model, "--format", "xyz", vqz, "-o", tmp_path / "d")
    assert result.exit_code == EXIT_USAGE and "Invalid value for --format" in result.stderr
    assert run("compress", "--device", "tpu", png, tmp_path / "x.vqz").exit_code == EXIT_USAGE
    assert run("compress", png).exit_code == EXIT_USAGE


def test_info(model: str, png: Path, tmp_path: Path, empty_zoo: Path):
    vqz = tmp_path / "a.vqz"
    vqz.write_bytes(vqz_bytes(model, png))
    header_only = run("info", vqz)
    assert header_only.exit_code == 0 and "30x21 (WxH) RGB" in header_only.stdout
    assert "not counted" in header_only.stdout
    assert "model is not available" in run("info", "--bits", vqz).stdout

    report = run("info", "--bits", "-m", model, vqz)
    assert report.exit_code == 0
    assert "top" in report.stdout and "bottom" in report.stdout and "% over" in report.stdout
    assert "% over" not in run("info", "-m", model, vqz).stdout  # the header alone, unless --bits
    as_json = json.loads(run("info", "--bits", "-m", model, "--json", vqz).stdout)
    assert as_json["width"] == 30 and as_json["payload_bits"] <= 1.005 * as_json["ideal_bits"] + 64

    (empty_zoo / "tiny.safetensors").write_bytes(Path(model).read_bytes())
    assert "(tiny)" in run("info", vqz).stdout


def test_models(model: str, empty_zoo: Path):
    assert "no bundled models" in run("models").stderr
    (empty_zoo / "tiny.safetensors").write_bytes(Path(model).read_bytes())
    listed = run("models").stdout
    assert listed.startswith("tiny ") and zoo.list_models()[0].sha256 in listed


@pytest.mark.parametrize("command", ["compress", "decompress", "info"])
def test_help_teaches(command: str):
    text = run(command, "--help").stdout
    assert "Examples:" in text and "Exit status:" in text and "vqcodec " + command in text


def test_real_process_reports_one_line(tmp_path: Path):
    bad = tmp_path / "bad.vqz"
    bad.write_bytes(b"VQZ\x10 truncated")
    result = subprocess.run(
        [sys.executable, "-m", "vqcodec", "decompress", str(bad), str(tmp_path / "out.png")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == EXIT_BAD_INPUT
    assert result.stderr.startswith("vqcodec: error: ") and result.stderr.count("\n") == 1
    assert not (tmp_path / "out.png").exists()


def test_a_closed_output_pipe_ends_quietly():
    """`vqcodec models | head -1` said "vqcodec: error: Broken pipe" (exit 1) most of the time."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader went away before the first line
    try:
        result = subprocess.run(
            [sys.executable, "-m", "vqcodec", "models"], stdout=write_end, stderr=subprocess.PIPE
        )
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (EXIT_BROKEN_PIPE, b"")


def pngs(folder: Path, *names: str) -> list[Path]:
    """Small distinct images named ``names`` in ``folder``."""
    folder.mkdir(exist_ok=True)
    paths = []
    for seed, name in enumerate(names):
        path = folder / name
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (12, 20, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_a_glob_never_overwrites_an_image(model: str, tmp_path: Path):
    """``compress -f *.png`` in a folder of two PNGs would write .vqz bytes over the second one."""
    images = pngs(tmp_path / "photos", "a.png", "b.png", "c.png")
    before = {path: path.read_bytes() for path in images}
    assert_error(run("compress", "-m", model, "-f", *images[:2]), EXIT_USAGE, "must end in .vqz")
    result = run("compress", "-m", model, "-f", *images)
    assert result.exit_code == EXIT_USAGE and "-o FOLDER" in result.stderr
    assert {path: path.read_bytes() for path in images} == before
    assert files_in(tmp_path / "photos") == {"a.png", "b.png", "c.png"}
    named = tmp_path / "photos" / "a.bin"
    assert run("compress", "-m", model, "--format", "vqz", images[0], named).exit_code == 0
    assert named.read_bytes()[:3] == b"VQZ"


def test_several_inputs_into_a_folder(model: str, tmp_path: Path):
    images = pngs(tmp_path / "photos", "a.png", "b.png")
    bad = tmp_path / "photos" / "c.png"
    bad.write_bytes(b"not an image")
    result = run("compress", "-m", model, *images, bad, "-o", tmp_path / "vqz")
    assert result.exit_code == EXIT_BAD_INPUT
    assert files_in(tmp_path / "vqz") == {"a.vqz", "b.vqz"}  # the others are written, atomically
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith(f"vqcodec: error: {bad}: ") and "not an image" in lines[0]
    assert lines[-1] == "vqcodec: 2 of 3 files compressed, 1 failed"

    again = run("compress", "-m", model, *images, "-o", tmp_path / "vqz")
    assert again.exit_code == EXIT_OUTPUT_EXISTS and again.stderr.count("--force") == 2
    assert run("compress", "-m", model, "-f", *images, "-o", tmp_path / "vqz").exit_code == 0

    vqzs = sorted((tmp_path / "vqz").iterdir())
    result = run("decompress", "-m", model, *vqzs, "-o", tmp_path / "decoded", "--format", "tiff")
    assert result.exit_code == 0, result.output
    assert files_in(tmp_path / "decoded") == {"a.tiff", "b.tiff"}
    with Image.open(tmp_path / "decoded" / "b.tiff") as image:
        assert image.size == (20, 12)
    result = run("decompress", "-m", model, *vqzs, "-o", tmp_path / "grey", "--format", "pgm")
    assert result.exit_code == 0 and result.stderr.count(".pgm files hold grey images only") == 2
    one = run("decompress", "-m", model, vqzs[0], tmp_path / "one.PGM")
    for path in (tmp_path / "grey" / "b.pgm", tmp_path / "one.PGM"):
        assert path.read_bytes()[:2] == b"P5"  # Pillow's PPM writer made P6 of colour
    assert one.exit_code == 0 and "grey images only" in one.stderr

    same_name = pngs(tmp_path / "other", "a.png")
    clash = run("compress", "-m", model, images[0], *same_name, "-o", tmp_path / "clash")
    assert clash.exit_code == EXIT_USAGE and "both be written" in clash.stderr


def test_threads_option(model: str, png: Path, tmp_path: Path):
    threads = torch.get_num_threads()
    assert run("compress", "-m", model, "--threads", "1", png, tmp_path / "a.vqz").exit_code == 0
    assert torch.get_num_threads() == threads
    assert run("decompress", "-m", model, "-j", "1", tmp_path / "a.vqz", tmp_path / "a.png").exit_code == 0
    assert run("compress", "-m", model, "--threads", "0", png, tmp_path / "b.vqz").exit_code == EXIT_USAGE
    assert run("compress", "-m", model, "-j", "100000", png, tmp_path / "b.vqz").exit_code == EXIT_USAGE


@pytest.mark.parametrize("option", [("-q", "nan"), ("--target-bpp", "inf"), ("--target-psnr", "nan")])
def test_numbers_must_be_finite(model: str, png: Path, tmp_path: Path, option: tuple[str, str]):
    result = run("compress", "-m", model, *option, png, tmp_path / "a.vqz")
    assert result.exit_code == EXIT_USAGE and "is not a finite number" in result.stderr


def test_empty_paths_are_usage_errors(model: str, png: Path, tmp_path: Path):
    assert run("compress", "-m", model, "", tmp_path / "a.vqz").exit_code == EXIT_USAGE
    assert run("compress", "-m", model, png, "").exit_code == EXIT_USAGE
    assert_error(run("info", ""), EXIT_BAD_INPUT, "empty path")


def test_summary_quiet_and_verbose(model: str, png: Path, tmp_path: Path):
    vqz = tmp_path / "a.vqz"
    result = run("compress", "-m", model, "-v", png, vqz)
    assert result.exit_code == 0
    assert f"-> {vqz}: {vqz.stat().st_size:,} bytes" in result.stderr and " bpp (30x21" in result.stderr
    assert run("compress", "-m", model, "-f", png, vqz).stderr == ""  # not a terminal: no summary
    decoded = run("decompress", "-m", model, "-v", vqz, tmp_path / "a.jpg")
    assert "JPEG is lossy" in decoded.stderr and "30x21 RGB JPEG" in decoded.stderr
    quiet = run("decompress", "-m", model, "--quiet", vqz, tmp_path / "b.jpg")
    assert quiet.exit_code == 0 and quiet.stderr == ""
    chosen = run("decompress", "-m", model, "--image-quality", "80", vqz, tmp_path / "c.webp")
    assert chosen.exit_code == 0 and chosen.stderr == ""


def test_interrupt_exits_130(model: str, png: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from vqcodec.codec import Codec

    def interrupted(*args: object, **kwargs: object) -> bytes:
        raise KeyboardInterrupt

    monkeypatch.setattr(Codec, "compress", interrupted)
    result = run("compress", "-m", model, png, tmp_path / "a.vqz")
    assert result.exit_code == 130 and result.stderr.strip() == "vqcodec: interrupted"
    assert files_in(tmp_path) == {"in.png"}


def test_sample_takes_a_bundled_name(model: str, tmp_path: Path, empty_zoo: Path):
    (empty_zoo / "default.safetensors").write_bytes(Path(model).read_bytes())
    for name in ([], ["--model", "default"]):
        out = tmp_path / f"samples{len(name)}"
        result = run("sample", *name, "--n", "1", "--size", "16x16", "--out", out, "--device", "cpu")
        assert result.exit_code == 0, result.output
        assert files_in(out) == {"sample_0_000.png"}


def test_a_bad_model_file_is_the_same_error_under_every_command(model: str, png: Path, tmp_path: Path):
    """Whichever command loads it, a bad model file is one ``vqcodec: error:`` line and status 3."""
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(np.random.default_rng(0).bytes(11))
    vqz = tmp_path / "a.vqz"
    assert run("compress", "-m", model, png, vqz).exit_code == 0
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(png, images)
    commands = [
        ["compress", png, tmp_path / "b.vqz"],
        ["decompress", vqz, tmp_path / "b.png"],
        ["info", "--bits", vqz],
        ["sample", "--n", "1", "--size", "16x16", "--out", tmp_path / "samples", "--device", "cpu"],
        ["bench", "rd", "--data", images, "--out", tmp_path / "bench", "--limit", "1", "--codecs", "vqcodec"],
    ]
    errors = set()
    for command in commands:
        result = run(*command, "--model", bad)
        assert_error(result, EXIT_MODEL, "not a model file")
        errors.add(result.stderr)
    assert len(errors) == 1
    assert not (tmp_path / "b.vqz").exists() and not (tmp_path / "b.png").exists()


def commands_of(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    """Every command under ``group`` that does something (not a group), with its name as typed."""
    found = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += commands_of(command, f"{prefix}{name} ")
        else:
            found.append((prefix + name, command))
    return found


def test_every_command_wears_the_error_decorator():
    """A new command that forgets ``reports_errors`` would end in a traceback or click's ``Error:``."""
    decorated = reports_errors(lambda: None).__code__
    commands = commands_of(main)
    assert {"compress", "decompress", "info", "models", "sample", "export", "bench rd", "train vqvae"} <= {
        name for name, _ in commands
    }
    for name, command in commands:
        assert command.callback is not None and command.callback.__code__ is decorated, name


def test_version_says_whether_the_compiled_kernels_run(monkeypatch: pytest.MonkeyPatch):
    from vqcodec.exact import fused

    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("vqcodec, version ")
    in_use = "compiled kernels: in use" if fused.available(torch.device("cpu")) else "not in use"
    assert in_use in result.output
    monkeypatch.setattr(fused, "_kernels", None)
    assert "compiled kernels: not in use" in CliRunner().invoke(main, ["--version"]).output


def test_devices_and_pipes_are_written_in_place(model: str, png: Path, tmp_path: Path):
    """As cwebp's and djxl's: `-f` replaced /dev/null or a named pipe by a file, and without it they
    were refused as existing outputs; writing to them overwrites nothing."""
    vqz = tmp_path / "a.vqz"
    assert run("compress", "-m", model, png, vqz).exit_code == 0
    assert run("decompress", "-m", model, vqz, os.devnull).exit_code == 0
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)  # never a hang
    reader.start()
    result = run("decompress", "-m", model, "--force", vqz, fifo)
    reader.join(timeout=60)
    assert result.exit_code == 0, result.output
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and received[0][:4] == b"\x89PNG"
    assert files_in(tmp_path) == {"in.png", "a.vqz", "pipe.png"}


def test_a_replaced_file_keeps_its_permissions(model: str, png: Path, tmp_path: Path):
    out = tmp_path / "private.vqz"
    out.write_bytes(b"old")
    out.chmod(0o600)
    assert run("compress", "-m", model, "--force", png, out).exit_code == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and out.read_bytes()[:3] == b"VQZ"


def test_an_out_ending_in_a_slash_is_refused(model: str, png: Path, tmp_path: Path):
    """Path() drops the slash: `decompress -f a.vqz notes.png/` overwrote notes.png."""
    notes = tmp_path / "notes.vqz"
    notes.write_bytes(b"precious")
    assert_error(run("compress", "-m", model, "-f", png, f"{notes}/"), EXIT_BAD_INPUT, "names a folder")
    assert notes.read_bytes() == b"precious"
    assert_error(run("compress", "-m", model, "-f", png, f"{notes}/."), EXIT_BAD_INPUT, "names a folder")
    assert notes.read_bytes() == b"precious"
    assert_error(run("compress", "-m", model, png, f"{tmp_path}/new/"), EXIT_BAD_INPUT, "names a folder")
    assert files_in(tmp_path) == {"in.png", "notes.vqz"}


def test_a_disk_or_socket_is_never_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Writing in place is for pipes and character devices: a block device is a disk."""
    from vqcodec import cli_files
    from vqcodec.cli_errors import OutputError

    target = tmp_path / "sdz"
    target.write_bytes(b"a disk")
    real_stat = os.stat
    monkeypatch.setattr(
        os, "stat", lambda path, **kw: os.stat_result((stat.S_IFBLK | 0o660, *real_stat(path, **kw)[1:]))
    )
    assert not cli_files.is_special(target)
    with pytest.raises(OutputError, match="neither a file, a pipe nor a character device"):
        cli_files.write_output(str(target), b"data")
    monkeypatch.undo()
    assert target.read_bytes() == b"a disk"


def test_an_output_error_names_the_output(model: str, png: Path, tmp_path: Path):
    vqz = tmp_path / "a.vqz"
    assert run("compress", "-m", model, png, vqz).exit_code == 0
    with open("/dev/full", "wb") as full:
        result = subprocess.run(
            [sys.executable, "-m", "vqcodec", "decompress", "-m", model, str(vqz), "-"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
        )
    assert (result.returncode, result.stderr) == (
        EXIT_BAD_INPUT,
        "vqcodec: error: stdout: No space left on device\n",
    )


def test_a_name_at_the_file_systems_limit_is_written(model: str, png: Path, tmp_path: Path):
    """The temporary file's name was OUT's and 14 bytes more: names of 242 to 255 bytes failed."""
    out = tmp_path / ("p" * 251 + ".vqz")
    assert run("compress", "-m", model, png, out).exit_code == 0 and out.exists()


def test_sigterm_while_writing_leaves_nothing(model: str, png: Path, tmp_path: Path):
    """`timeout` and `kill` send SIGTERM: it ended the process on the spot, its temporary file left."""
    script = (
        "import os, signal, sys\n"
        "os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGTERM)  # the signal comes mid-write\n"
        "from vqcodec.cli import main\n"
        "sys.argv = ['vqcodec', *sys.argv[1:]]\n"
        "main()\n"
    )
    out = tmp_path / "a.vqz"
    result = subprocess.run(
        [sys.executable, "-c", script, "compress", "-m", model, str(png), str(out)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    assert result.stderr == "vqcodec: SIGTERM: stopped\n"
    assert files_in(tmp_path) == {"in.png"}


def test_help_into_a_full_disk_is_one_line():
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [sys.executable, "-m", "vqcodec", "--help"], stdout=full, stderr=subprocess.PIPE, text=True
        )
    assert result.returncode == EXIT_BAD_INPUT
    assert result.stderr == "vqcodec: error: cannot write the output: No space left on device\n"


def test_output_formats_that_change_the_image(model: str, png: Path, tmp_path: Path):
    """ICO resized the image to 256 pixels or less, GIF quantised it to 256 colours, without a word."""
    vqz = tmp_path / "a.vqz"
    assert run("compress", "-m", model, png, vqz).exit_code == 0
    result = run("decompress", "-m", model, vqz, tmp_path / "a.ico")
    assert result.exit_code == EXIT_USAGE and "ICO resizes the images it holds" in result.stderr
    result = run("decompress", "-m", model, vqz, tmp_path / "a.gif")
    assert result.exit_code == 0 and "warning: GIF changes the pixels" in result.stderr
    result = run("decompress", "-m", model, vqz, tmp_path / "a.tga")
    assert result.exit_code == 0 and result.stderr == ""


def test_an_error_names_its_input(model: str, tmp_path: Path):
    bad = tmp_path / "bad.vqz"
    bad.write_bytes(b"not a vqz file")
    result = run("decompress", "-m", model, bad, tmp_path / "x.png")
    assert_error(result, EXIT_BAD_INPUT, f"{bad}: not a .vqz")
    result = run("decompress", "-m", model, "-", "-", input=b"junk")
    assert_error(result, EXIT_BAD_INPUT, "stdin: not a .vqz")


def test_a_reader_that_goes_away_midway_ends_quietly(model: str, tmp_path: Path):
    """`decompress a.vqz - | head -c 10` exited 0: a write into the closed pipe wrote part of the image,
    returned the count and raised nothing, and nothing wrote the rest."""
    colour = np.random.default_rng(0).integers(0, 256, (160, 160, 3), dtype=np.uint8)
    Image.fromarray(colour).save(tmp_path / "a.png")  # RGB: a BMP of 76,854 bytes
    assert run("compress", "-m", model, tmp_path / "a.png", tmp_path / "a.vqz").exit_code == 0
    command = [sys.executable, "-m", "vqcodec", "decompress", "-m", model, "--format", "bmp"]
    process = subprocess.Popen(
        [*command, str(tmp_path / "a.vqz"), "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None and process.stderr is not None
    assert len(process.stdout.read(10)) == 10  # more than a pipe holds follows
    process.stdout.close()
    assert (process.wait(timeout=120), process.stderr.read()) == (EXIT_BROKEN_PIPE, b"")
