"""The public API (``import vqcodec``): what decompress and info take, header-only info, threads,
metadata, the Pillow plugin's save, and errors as OSErrors."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

import vqcodec
from vqcodec import zoo
from vqcodec.codec import Codec
from vqcodec.coding.container import VQZFile
from vqcodec.errors import CorruptDataError, FormatError, ModelMismatchError, VQZError

VECTORS = Path(__file__).resolve().parents[1] / "bitstream_spec/vectors"
MODEL = VECTORS / "tiny.safetensors"  # not bundled: pass model=, or put it in a temporary zoo


def pixels(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Smooth uint8 [H, W, 3] gradients."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / 16.0
    a, b, c = rng.uniform(0.2, 1.0, (3, 3, 1, 1))
    planes = 0.5 + 0.4 * np.sin(a * x + b * y + 6.0 * c)
    return (np.clip(planes, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec.open(MODEL)


@pytest.fixture(scope="module")
def vqz(codec: Codec, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("api") / "a.vqz"
    path.write_bytes(codec.compress(pixels(20, 12)))
    return path


@pytest.fixture
def bundled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A zoo holding the tiny model only, so that files written with it decode without ``model=``."""
    folder = tmp_path / "zoo"
    folder.mkdir()
    (folder / "tiny.safetensors").write_bytes(MODEL.read_bytes())
    monkeypatch.setattr(zoo, "ZOO_DIR", folder)
    yield folder


def test_decompress_takes_paths_bytes_and_files(codec: Codec, vqz: Path):
    expected = np.asarray(codec.decompress(vqz.read_bytes()))
    data = vqz.read_bytes()
    with open(vqz, "rb") as f:
        inputs = [str(vqz), vqz, data, bytearray(data), memoryview(data), f, VQZFile.from_bytes(data)]
        for given in inputs:
            np.testing.assert_array_equal(np.asarray(vqcodec.decompress(given, model=codec)), expected)
    images = vqcodec.decompress_many([str(vqz), vqz, io.BytesIO(data)], model=MODEL)
    for image in images:
        np.testing.assert_array_equal(np.asarray(image), expected)


def test_bad_inputs_are_type_errors(vqz: Path):
    with pytest.raises(FileNotFoundError):
        vqcodec.decompress(str(vqz) + ".missing", model=MODEL)  # a str is a path, never data
    with open(vqz, encoding="latin-1") as text, pytest.raises(TypeError, match="binary mode"):
        vqcodec.info(text)
    with pytest.raises(TypeError, match="a path, bytes or a binary file"):
        vqcodec.info(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sequence of files"):
        vqcodec.decompress_many(str(vqz))


def test_info_reads_the_header_only(vqz: Path, bundled: Path, monkeypatch: pytest.MonkeyPatch):
    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("header-only info loaded a model")

    with monkeypatch.context() as patched:
        patched.setattr(zoo, "load_cached", no_model)
        start = time.perf_counter()
        for given in (vqz, str(vqz), vqz.read_bytes(), io.BytesIO(vqz.read_bytes())):
            report = vqcodec.info(given, model=MODEL)
        assert time.perf_counter() - start < 1.0
    assert (report["width"], report["height"], report["model"]) == (20, 12, "tiny")
    assert report["ideal_bits"] is None and report["overhead_percent"] is None
    assert all(level["ideal_bits"] is None and level["bits_per_code"] is None for level in report["levels"])

    with_bits = vqcodec.info(vqz, bits=True)  # the bundled model
    assert with_bits["ideal_bits"] > 0 and with_bits["overhead_percent"] is not None
    assert all(level["ideal_bits"] > 0 for level in with_bits["levels"])
    assert with_bits.keys() == report.keys()
    assert {k: v for k, v in with_bits.items() if k not in ("levels", "ideal_bits", "overhead_percent")} == {
        k: v for k, v in report.items() if k not in ("levels", "ideal_bits", "overhead_percent")
    }


def test_info_checks_a_model_given_without_bits(vqz: Path, tmp_path: Path):
    """It was ignored: `info -m other.safetensors` described the file as if the model fitted it."""
    other = tmp_path / "other.safetensors"
    other.write_bytes(MODEL.read_bytes() + b" ")
    with pytest.raises(ModelMismatchError, match="file needs model"):
        vqcodec.info(vqz, model=other)
    assert vqcodec.info(vqz, model=MODEL)["width"] == 20


def test_info_bits_without_the_model_stays_header_only(vqz: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(zoo, "ZOO_DIR", tmp_path)  # an empty zoo
    assert vqcodec.info(vqz, bits=True)["ideal_bits"] is None
    assert vqcodec.info(vqz, MODEL, bits=True)["ideal_bits"] > 0


def test_threads_apply_to_the_call_and_are_restored(vqz: Path):
    before = torch.get_num_threads()
    seen: list[int] = []
    vqcodec.decompress(vqz, model=MODEL, threads=1, progress=lambda *_: seen.append(torch.get_num_threads()))
    vqcodec.info(vqz, MODEL, bits=True, threads=1, progress=lambda *_: seen.append(torch.get_num_threads()))
    vqcodec.decompress_many([vqz], MODEL, threads=1, progress=lambda *_: seen.append(torch.get_num_threads()))
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("threads", [0, -1, 1.5, True, 1025])
def test_bad_threads_are_value_errors(vqz: Path, threads: object):
    missing = vqz.with_name("missing.vqz")  # checked before anything is read
    many = lambda path, **kw: vqcodec.decompress_many([path], **kw)  # noqa: E731
    for call in (vqcodec.decompress, vqcodec.info, vqcodec.compress, many):
        with pytest.raises(ValueError, match="threads must be an integer from 1 to 1024"):
            call(missing, threads=threads)


def test_errors_are_oserrors(vqz: Path):
    assert issubclass(VQZError, OSError)
    for error in (FormatError, CorruptDataError, ModelMismatchError):
        assert issubclass(error, VQZError)
    truncated = VECTORS / "truncated.vqz"
    with pytest.raises(OSError, match="truncated") as caught:
        Image.open(truncated)
    assert isinstance(caught.value, FormatError) and caught.value.strerror is None
    assert str(caught.value).startswith("file truncated")
    with pytest.raises(OSError):
        vqcodec.decompress(truncated, model=MODEL)
    with pytest.raises(OSError, match="not bundled"):
        Image.open(vqz).load()  # the tiny model is not bundled


def test_cli_reports_a_vqz_error_in_one_line(tmp_path: Path):
    command = ["-m", "vqcodec", "decompress", VECTORS / "truncated.vqz", tmp_path / "x.png"]
    result = subprocess.run([sys.executable, *command], capture_output=True, text=True)
    assert result.returncode == 1
    expected = f"vqcodec: error: {VECTORS / 'truncated.vqz'}: file truncated"
    assert result.stderr.startswith(expected) and result.stderr.count("\n") == 1


def test_plugin_opens_and_refuses_modes_without_torch(vqz: Path, tmp_path: Path):
    script = (
        "import sys, vqcodec; from PIL import Image\n"
        f"image = Image.open({str(vqz)!r}); print(image.format, image.size, image.mode)\n"
        "try:\n"
        f"    Image.new('CMYK', (8, 8)).save({str(tmp_path / 'cmyk.vqz')!r})\n"
        "except OSError as e:\n"
        "    print(e)\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [
        "VQZ (20, 12) RGB",
        "cannot write mode CMYK as VQZ; convert the image to RGB, RGBA, L or LA first",
        "False",
    ]
    assert not (tmp_path / "cmyk.vqz").exists()


# --- through compress and Codec.compress(metadata=...) ----------------------------------------------


def test_compress_threads_and_metadata(codec: Codec):
    image = Image.fromarray(pixels(16, 8))
    image.info["icc_profile"] = icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = vqcodec.compress(image, model=codec, threads=1)
    assert data == codec.compress(image) and VQZFile.from_bytes(data).icc == icc
    for strip in ("none", [], "exif,xmp"):
        assert VQZFile.from_bytes(vqcodec.compress(image, model=codec, metadata=strip)).icc is None
    with pytest.raises(ValueError, match="unknown metadata kind"):
        vqcodec.compress(image, model=codec, metadata="gps")


def test_compress_result_says_what_compress_settled_on(codec: Codec):
    image = pixels(64, 48, seed=3)
    found = vqcodec.compress_result(image, model=codec, quality=1)
    assert found.data == codec.compress(image, quality=1) and found.quality == 1 and found.psnr is None
    assert found.coded_size == VQZFile.from_bytes(found.data).coded_size
    aimed = vqcodec.compress_result(image, model=codec, target_size=len(found.data))
    assert len(aimed.data) <= len(found.data) and aimed.data == vqcodec.compress(
        image, model=codec, target_size=len(found.data)
    )


def test_pillow_save_then_open(codec: Codec, tmp_path: Path, bundled: Path):
    rgba = Image.fromarray(np.dstack([pixels(24, 16, seed=1), np.full((16, 24), 99, np.uint8)]))
    path = tmp_path / "x.vqz"
    with pytest.raises(zoo.UnknownModelError, match="no bundled default model"):
        rgba.save(path)  # the zoo holds the tiny model only, not a default: name it
    assert not path.exists()  # Pillow removes the file it created
    rgba.save(path, model="tiny")
    assert path.read_bytes() == codec.compress(rgba)
    with Image.open(path) as opened:
        assert (opened.format, opened.size, opened.mode) == ("VQZ", (24, 16), "RGBA")
        np.testing.assert_array_equal(np.asarray(opened)[..., 3], 99)
        assert opened.fp is None  # loaded, the file is let go, as Pillow's own formats do

    buffer = io.BytesIO()
    gray = Image.fromarray(pixels(24, 16, seed=2)[..., 0])
    gray.save(buffer, format="VQZ", quality=3, model=MODEL, tile=64, threads=1, metadata="none")
    assert buffer.getvalue() == codec.compress(gray, quality=3, tile=64)
    buffer.seek(0)
    assert Image.open(buffer).convert("L").size == (24, 16)

    target = len(codec.compress(gray, quality=0))  # a target takes the quality's place, as in compress
    fitted = io.BytesIO()
    gray.save(fitted, format="VQZ", model=MODEL, target_size=target)
    assert fitted.getvalue() == vqcodec.compress(gray, codec, target_size=target)
    assert len(fitted.getvalue()) <= target
    with pytest.raises(ValueError, match="give a quality or a target, not both"):
        vqcodec.compress(gray, codec, quality=4, target_size=target)


class Pipe(io.RawIOBase):
    """A non-seekable stream of ``data``, as stdin from a pipe is."""

    def __init__(self, data: bytes) -> None:
        self.data, self.position = data, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        chunk = self.data[self.position : self.position + len(buffer)]
        buffer[: len(chunk)] = chunk
        self.position += len(chunk)
        return len(chunk)


def test_streams_are_read_within_the_limits(codec: Codec, vqz: Path, monkeypatch: pytest.MonkeyPatch):
    png = io.BytesIO()
    Image.fromarray(pixels(20, 12)).save(png, format="PNG")
    assert vqcodec.compress(Pipe(png.getvalue()), codec) == codec.compress(pixels(20, 12))
    monkeypatch.setattr("vqcodec.imageio.MAX_IMAGE_FILE_BYTES", 10)
    with pytest.raises(FormatError, match="holds more than 10 bytes"):
        vqcodec.compress(Pipe(png.getvalue()), codec)
    data = vqz.read_bytes()
    padded = io.BytesIO(data + bytes(10**6))
    with pytest.raises(FormatError, match="trailing data"):
        Image.open(padded)
    assert padded.tell() < 1000  # the header's longest, at most: not the megabyte after it


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"image": None}, TypeError, "expected a path, bytes, a binary file"),
        ({"image": [[1]]}, TypeError, "got list"),
        ({"image": io.StringIO("text")}, TypeError, "binary mode"),
        ({"image": np.zeros((0, 5, 3), np.uint8)}, ValueError, "non-empty"),
        ({"tile": 64.0}, ValueError, "tile side must be"),
        ({"effort": True}, ValueError, "effort must be one of"),
        ({"effort": 1.0}, ValueError, "effort must be one of"),
        ({"device": "mps"}, ValueError, "unsupported device"),
    ],
)
def test_compress_refuses_what_it_cannot_take(codec: Codec, arguments: dict, error: type, message: str):
    arguments = {"image": pixels(20, 12), "model": codec, **arguments}
    with pytest.raises(error, match=message):
        vqcodec.compress(**arguments)


def test_numpy_numbers_are_numbers(codec: Codec, vqz: Path):
    image = pixels(20, 12)
    expected = codec.compress(image, quality=3)
    assert vqcodec.compress(image, codec, quality=np.int64(3), threads=np.int64(1)) == expected
    assert vqcodec.compress(image, codec, quality=np.float32(3), effort=np.int64(0)) == expected
    with pytest.raises(TypeError, match="sequence of files"):
        vqcodec.decompress_many(io.BytesIO(vqz.read_bytes()), model=codec)
