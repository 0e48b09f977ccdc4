"""The codec pipeline: exact round trips of the code maps, image modes, bit budget, model handling."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms
from synthetic_images import seeded_model_file, smooth

import vqcodec
from vqcodec import zoo
from vqcodec.codec import Budgets, Codec, ConversionWarning, check_device
from vqcodec.coding import order
from vqcodec.coding.container import VQZFile
from vqcodec.coding.order import CodingOrder, n_steps
from vqcodec.errors import CorruptDataError, ImageTooLargeError, ModelMismatchError, VQZError
from vqcodec.exact import quantise
from vqcodec.exact.encoder import logits_full
from vqcodec.imageio import load_image
from vqcodec.threads import limited as threads

KODAK = Path(__file__).resolve().parents[2] / "shared/data/kodak"


def round_trip_codes(codec: Codec, image: object, encode_threads: int, decode_threads: int) -> bytes:
    """Encode with one thread count, decode with another; the decoder must get the encoder's codes."""
    with threads(encode_threads):
        source = load_image(image)
        codes = codec.image_codes(source.rgb)
        data = codec.pack(source, codes)
    with threads(decode_threads):
        decoded = codec.decode_codes(data)
    assert [c.shape for c in decoded.codes] == [c.shape for c in codes]
    for mine, theirs in zip(decoded.codes, codes, strict=True):
        np.testing.assert_array_equal(mine, theirs)
    return data


@pytest.mark.parametrize("width, height", [(1, 1), (7, 13), (64, 64), (333, 517)])
@pytest.mark.parametrize("encode_threads, decode_threads", [(1, 2), (2, 1)])
def test_round_trip_is_exact(codec: Codec, width: int, height: int, encode_threads: int, decode_threads: int):
    image = Image.fromarray(smooth(width, height, seed=width))
    data = round_trip_codes(codec, image, encode_threads, decode_threads)
    decoded = codec.decompress(data)
    assert decoded.size == (width, height) and decoded.mode == "RGB"


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_lower_qualities_code_a_smaller_image(codec: Codec, mode: str):
    rgb = smooth(75, 45, seed=3)
    image = Image.fromarray(rgb).convert(mode)
    if mode == "RGBA":  # a real alpha plane (an opaque one is dropped on the way in)
        image.putalpha(Image.fromarray(np.linspace(0, 255, 75 * 45).reshape(45, 75).astype(np.uint8)))
    sizes = {}
    for quality, coded in ((1, (38, 23)), (2, (50, 30)), (3, (60, 36)), (4, (75, 45))):
        data = codec.compress(image, quality=quality)
        file = VQZFile.from_bytes(data)
        assert (file.coded_width, file.coded_height) == coded
        assert file.level_shapes == tuple(codec.model.code_shapes(*codec.padded_size(coded[1], coded[0])))
        decoded = codec.decompress(data)
        assert (decoded.size, decoded.mode) == ((75, 45), mode)
        if mode == "RGBA":  # the alpha plane stays exact at full size
            assert decoded.getchannel("A").tobytes() == image.getchannel("A").tobytes()
        sizes[quality] = len(data)
    assert sizes[1] < sizes[2] < sizes[3] < sizes[4]


def test_quality_must_be_on_the_scale(codec: Codec):
    for quality in (5, -0.5, float("nan"), "4", True):
        with pytest.raises(ValueError, match="quality must be a number from 0 to 4"):
            codec.compress(smooth(8, 8), quality=quality)  # type: ignore[arg-type]


def test_quality_one_keeps_tiny_images_at_least_one_pixel(codec: Codec):
    data = codec.compress(smooth(1, 3), quality=1)
    file = VQZFile.from_bytes(data)
    assert (file.coded_width, file.coded_height) == (1, 2)
    assert codec.decompress(data).size == (1, 3)


def walk_tables(
    codec: Codec, codes: list[np.ndarray], tile: tuple[int, int] | None, known: bool = True
) -> list:
    """Per step of the walk of ``codes`` (the encoder's, or with ``known`` false the decoder's), its
    (level, y, x, table) in coding order."""
    steps: list[list[tuple]] = []

    def record(freqs: np.ndarray, image: int, level: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        steps.append([(level, y, x, tuple(table)) for y, x, table in zip(ys, xs, freqs, strict=True)])
        return codes[level][ys, xs]

    maps = [level.copy() if known else np.zeros_like(level) for level in codes]
    codec.walk([maps], record, tile, known=known)
    return steps


@pytest.mark.parametrize("known", [True, False])
def test_tiles_are_coded_as_independent_images(codec: Codec, known: bool):
    """Every tile's tables are those of the tile coded as an image of its own, for the encoder and the
    decoder; the tiles are walked in waves, and a step of a wave codes its tiles in raster order, each
    tile's positions by increasing row."""
    # waves of 4 tiles 56 pixels tall
    codec = Codec(codec.model, codec.sha256, coding_order=CodingOrder(8, tile_wave=256))
    codes = codec.image_codes(smooth(224, 152, seed=5))  # maps 19 x 28 and 38 x 56
    tile = codec.order.tile_size(19, 28, 64)
    assert tile == (56, 56)  # 4 x 3 tiles of 7 x 7 top-level codes, those of the last row 5 tall
    alone = {}  # per tile (level, rank): its steps alone, positions moved to the tile's place
    for rank, (y, x, h, w) in enumerate(order.tiles(19, 28, 7, 7)):
        steps = walk_tables(
            codec, [codes[0][y : y + h, x : x + w], codes[1][2 * y : 2 * (y + h), 2 * x : 2 * (x + w)]], None
        )
        for level in (0, 1):
            scale = level + 1  # the bottom map has twice the top's rows and columns
            mine = steps[: n_steps(h, w)] if level == 0 else steps[n_steps(h, w) :]
            alone[level, rank] = [
                [(level, yy + scale * y, xx + scale * x, f) for _, yy, xx, f in step] for step in mine
            ]
    expected = []
    for level in (0, 1):
        for wave in range(3):  # 12 tiles in waves of 4, raster order
            ranks = range(4 * wave, 4 * wave + 4)
            for t in range(max(len(alone[level, rank]) for rank in ranks)):
                expected.append(
                    [p for rank in ranks if t < len(alone[level, rank]) for p in alone[level, rank][t]]
                )
    tiled = walk_tables(codec, codes, tile, known)
    assert len(tiled) == len(expected) == codec.order.n_steps([c.shape for c in codes], tile)
    for t, (mine, theirs) in enumerate(zip(tiled, expected, strict=True)):
        assert mine == theirs, t


@pytest.mark.parametrize(("tile", "size"), [(64, (64, 56)), (128, (88, 104)), (192, None), (None, None)])
def test_tiled_round_trip_is_exact(codec: Codec, tile: int | None, size: tuple[int, int] | None):
    """A 170 x 97 image, padded to 176 x 104 (13 x 22 top-level codes), cut as evenly as it can be."""
    image = Image.fromarray(smooth(170, 97, seed=6))
    data, codes = codec.encode(codec.source(image), tile=tile)
    assert VQZFile.from_bytes(data).tile == size
    decoded = codec.decode_codes(data)
    for mine, theirs in zip(decoded.codes, codes, strict=True):
        np.testing.assert_array_equal(mine, theirs)
    if tile == 192:  # one tile: the whole maps, the same bytes as without tiles
        assert data == codec.compress(image, tile=None)


def test_tiled_files_decode_together(codec: Codec):
    """Files of one size with tiles of one size share every step; other tilings walk on their own."""
    codec = Codec(codec.model, codec.sha256, coding_order=CodingOrder(8, tile_wave=128))
    images = [(0, 64), (1, None), (2, 64), (3, 128)]
    datas = [codec.compress(smooth(200, 72, seed), tile=tile) for seed, tile in images]
    calls: list[tuple[int, int]] = []
    together = codec.decode_many(datas, progress=lambda done, total: calls.append((done, total)))
    for data, many in zip(datas, together, strict=True):
        assert all(
            np.array_equal(a, b) for a, b in zip(codec.decode_codes(data).codes, many.codes, strict=True)
        )
    # Maps 9 x 25 and 18 x 50. At most 64 pixels: tiles of 56 x 40 pixels, 4 x 2 of them, of 5 x 7
    # top-level codes but the last row 4 and the last column 4, in waves of 128 // 40 = 3:
    # (5, 7) x 3 | (5, 4) (4, 7) (4, 7) | (4, 7) (4, 4); the bottom map's tiles twice as large.
    tiles_64 = sum(
        n_steps(5 * s, 7 * s) + max(n_steps(5 * s, 4 * s), n_steps(4 * s, 7 * s)) + n_steps(4 * s, 7 * s)
        for s in (1, 2)
    )
    # At most 128: 104 x 72 pixels, (9, 13) | (9, 12), one a wave.
    tiles_128 = sum(n_steps(9 * s, 13 * s) + n_steps(9 * s, 12 * s) for s in (1, 2))
    total = tiles_64 + n_steps(9, 25) + n_steps(18, 50) + tiles_128
    assert calls == [(i, total) for i in range(1, total + 1)]


@pytest.mark.parametrize("tile", [0, 56, 68, -64])
def test_tile_must_be_a_multiple_of_the_model(codec: Codec, tile: int):
    with pytest.raises(ValueError, match="multiple of 8 pixels, at least 64"):
        codec.compress(smooth(8, 8), tile=tile)


@pytest.mark.slow
@pytest.mark.skipif(not (KODAK / "kodim01.png").exists(), reason="Kodak images not available")
def test_kodak_round_trip(codec: Codec):
    round_trip_codes(codec, KODAK / "kodim01.png", encode_threads=1, decode_threads=2)
    round_trip_codes(codec, KODAK / "kodim01.png", encode_threads=2, decode_threads=1)


def test_exact_tables_do_not_depend_on_threads(codec: Codec):
    """The codec walks on one thread; the exact priors must not care (a caller may use more)."""
    top, bottom = codec.image_codes(smooth(96, 64))
    logits = []
    for n in (1, 2):
        with threads(n):
            prior = codec.exact_priors[1]
            logits.append(logits_full(prior, torch.from_numpy(bottom), [torch.from_numpy(top)]))
    assert torch.equal(logits[0], logits[1])


def test_torch_int8_products_are_used_only_where_exact(codec: Codec, monkeypatch: pytest.MonkeyPatch):
    """Their stand-in, float64 products of the same integers, gives the same files and pixels."""
    image = smooth(96, 64)
    data = codec.compress(image, effort=2)
    pixels = np.asarray(codec.decompress(data))
    monkeypatch.setattr(quantise, "int_mm_is_exact", lambda: False)
    assert codec.compress(image, effort=2) == data
    assert np.array_equal(np.asarray(codec.decompress(data)), pixels)


def test_files_do_not_depend_on_the_cpus_int8_kernels(tmp_path: Path):
    """oneDNN's int8 kernels for CPUs without VNNI (AVX2 ones, as ONEDNN_MAX_CPU_ISA=AVX2 makes it use
    here) saturate sums of products at 16 bits: such a CPU wrote other bytes, and failed to decode the
    files of others ("data left after the last code") or drew other pixels from their codes."""
    Image.fromarray(smooth(64, 64)).save(tmp_path / "a.png")

    def vqcodec_on(isa: str, *args: str | Path) -> None:
        command = [sys.executable, "-m", "vqcodec", *map(str, args)]
        subprocess.run(command, env=dict(os.environ, ONEDNN_MAX_CPU_ISA=isa), check=True, capture_output=True)

    for isa in ("ALL", "AVX2"):
        vqcodec_on(isa, "compress", "--effort", "1", tmp_path / "a.png", tmp_path / f"{isa}.vqz")
        vqcodec_on(isa, "decompress", tmp_path / "ALL.vqz", tmp_path / f"{isa}.png")
    assert (tmp_path / "ALL.vqz").read_bytes() == (tmp_path / "AVX2.vqz").read_bytes()
    pixels = [np.asarray(Image.open(tmp_path / f"{isa}.png")) for isa in ("ALL", "AVX2")]
    assert np.array_equal(*pixels)


def test_python_threads_may_code_side_by_side(codec: Codec):
    """The compiled kernels release the GIL and share one pool of worker threads: callers on several
    Python threads at once get the files and pixels that one at a time gets."""
    images = [smooth(256, 192), smooth(160, 256)]
    files = [codec.compress(image) for image in images]
    decoded = [np.asarray(codec.decompress(data)) for data in files]
    results: dict[int, tuple[bytes, np.ndarray]] = {}

    def code(k: int) -> None:
        data = codec.compress(images[k % 2])
        results[k] = data, np.asarray(codec.decompress(data))

    with threads(2):
        workers = [threading.Thread(target=code, args=(k,)) for k in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    for k, (data, pixels) in sorted(results.items()):
        assert data == files[k % 2] and np.array_equal(pixels, decoded[k % 2]), k
    assert len(results) == 4


def test_every_input_kind_gives_the_same_file(codec: Codec, tmp_path: Path):
    pixels = smooth(20, 12)
    path = tmp_path / "in.png"
    Image.fromarray(pixels).save(path)
    expected = codec.compress(path)
    assert codec.compress(pixels) == expected
    assert codec.compress(str(path)) == expected
    assert codec.compress(path.read_bytes()) == expected
    assert codec.compress(Image.fromarray(pixels)) == expected
    with open(path, "rb") as f:
        assert codec.compress(f) == expected
    with pytest.raises(ValueError, match="uint8"):
        codec.compress(pixels.astype(np.float32))


def test_grayscale_is_restored_as_l(codec: Codec):
    gray = smooth(24, 16)[..., 1]
    decoded = codec.decompress(codec.compress(Image.fromarray(gray)))
    assert decoded.mode == "L" and decoded.size == (24, 16)


def test_gray_rgb_decodes_with_equal_channels(codec: Codec):
    gray = np.repeat(smooth(24, 16)[..., 1:2], 3, axis=2)
    decoded = np.asarray(codec.decompress(codec.compress(gray)).convert("RGB"))
    assert (decoded[..., 0] == decoded[..., 1]).all() and (decoded[..., 1] == decoded[..., 2]).all()


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_kept_exactly(codec: Codec, mode: str):
    alpha = np.random.default_rng(1).integers(0, 256, (13, 7), dtype=np.uint8)
    colour = smooth(7, 13) if mode == "RGBA" else smooth(7, 13)[..., :1]
    image = Image.fromarray(np.dstack([colour, alpha]), mode)
    decoded = codec.decompress(codec.compress(image))
    assert decoded.mode == mode
    np.testing.assert_array_equal(np.asarray(decoded)[..., -1], alpha)


def test_palette_becomes_rgb_and_icc_is_kept(codec: Codec):
    palette = Image.fromarray(smooth(16, 16)).quantize(16)
    assert codec.decompress(codec.compress(palette)).mode == "RGB"

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    image = Image.fromarray(smooth(16, 8))
    image.info["icc_profile"] = icc
    assert codec.decompress(codec.compress(image)).info["icc_profile"] == icc


def test_lossy_input_conversion_warns(codec: Codec):
    sixteen = Image.fromarray(smooth(8, 8)[..., 0].astype(np.uint16) * 257)
    assert sixteen.mode == "I;16"
    with pytest.warns(ConversionWarning, match="16-bit"):
        codec.compress(sixteen)


def test_payload_close_to_ideal_and_small_header(codec: Codec):
    data = codec.compress(smooth(333, 517, seed=3))
    report = codec.info(data)
    assert report["payload_bits"] <= 1.005 * report["ideal_bits"] + 64
    assert report["ideal_bits"] == pytest.approx(sum(level["ideal_bits"] for level in report["levels"]))
    assert report["container_bytes"] - 4 < 64  # header only: plain RGB has no chunks; 4 = body CRC
    assert report["bpp"] == pytest.approx(8 * len(data) / (333 * 517))
    assert [level["shape"] for level in report["levels"]] == [[65, 42], [130, 84]]


def test_progress_counts_every_wavefront(codec: Codec):
    calls: list[tuple[int, int]] = []
    codec.compress(smooth(16, 24), progress=lambda done, total: calls.append((done, total)))
    total = n_steps(3, 2) + n_steps(6, 4)  # the top and bottom maps of a 16 x 24 image
    assert calls == [(i, total) for i in range(1, total + 1)]
    calls.clear()  # with the rate-distortion choice of both levels: each level's walk first
    codec.compress(smooth(16, 24), progress=lambda done, total: calls.append((done, total)), effort=2)
    total *= 2
    assert calls == [(i, total) for i in range(1, total + 1)]


@pytest.mark.parametrize("one_at_a_time", [False, True])
def test_decoding_many_files_together_gives_each_its_own_image(codec: Codec, one_at_a_time: bool):
    """Files of two sizes: those of one size share every wavefront step, or with waves of at most
    16 pixel rows a batch, walk one after the other; results come back in order."""
    if one_at_a_time:
        codec = codec.with_budgets(Budgets(batch_rows=(16, 16)))
    datas = [codec.compress(smooth(w, h, seed)) for seed, (w, h) in enumerate([(24, 16), (16, 24), (24, 16)])]
    alone = [codec.decode_codes(data) for data in datas]
    calls: list[tuple[int, int]] = []
    together = codec.decode_many(datas, progress=lambda done, total: calls.append((done, total)))
    for one, many in zip(alone, together, strict=True):
        assert all(np.array_equal(a, b) for a, b in zip(one.codes, many.codes, strict=True))
        assert one.level_bits == pytest.approx(many.level_bits)
    walks = 2 if one_at_a_time else 1  # the first size's: two files 16 pixels tall
    total = walks * (n_steps(2, 3) + n_steps(4, 6)) + n_steps(3, 2) + n_steps(6, 4)
    assert calls == [(i, total) for i in range(1, total + 1)]
    images = codec.decompress_many(datas)
    for image, data in zip(images, datas, strict=True):
        assert np.array_equal(np.asarray(image), np.asarray(codec.decompress(data)))
    assert [np.asarray(i).tolist() for i in vqcodec.decompress_many(datas[:2], model=codec)] == [
        np.asarray(i).tolist() for i in images[:2]
    ]
    with pytest.raises(VQZError):
        codec.decode_many([datas[0], datas[2][:-1]])  # the second one truncated


def test_tall_images_are_encoded_in_bands(codec: Codec, monkeypatch: pytest.MonkeyPatch):
    """Bands of 64 bottom-level codes, 10 rows of this 24 pixel wide image, give the same codes."""
    rgb = smooth(24, 400, seed=7)
    whole = codec.image_codes(rgb)
    codec = codec.with_budgets(Budgets(encode_part_codes=64))
    passes, encode = [], codec.exact_encoder.encode_image

    def counted(pixels: torch.Tensor, *args: object) -> list:
        passes.append(pixels)
        return encode(pixels, *args)

    monkeypatch.setattr(codec.exact_encoder, "encode_image", counted)
    banded = codec.image_codes(rgb)
    assert len(passes) == 10 and max(x.shape[1] for x in passes) < 400
    assert all(np.array_equal(a, b) for a, b in zip(banded, whole, strict=True))


@pytest.mark.parametrize("effort", [1, 2])
def test_the_code_choice_does_not_depend_on_the_budget(codec: Codec, effort: int):
    """A tile walked step by step fed the chosen codes back to the priors, where one pass over a smaller
    tile had every table from the nearest codes: the bytes changed with whole_map_values (and with
    the image's size, at the default budget)."""
    rgb = smooth(96, 64, seed=3)
    data = codec.compress(rgb, effort=effort, tile=None)
    assert codec.with_budgets(Budgets(whole_map_values=0)).compress(rgb, effort=effort, tile=None) == data


def test_files_decoded_together_are_bounded(codec: Codec):
    """``decode_many`` takes as many files of one size together as make waves of 12,288 pixel rows."""
    kodak, uhd = [(64, 96), (128, 192)], [(270, 480), (540, 960)]
    assert codec.files_per_batch(kodak, (256, 256)) == 8  # 6 tiles 256 pixels tall, one wave
    assert codec.files_per_batch(kodak, None) == 24  # whole maps, 512 pixels
    assert codec.files_per_batch(uhd, (256, 240)) == 3  # waves of 17 tiles 240 pixels tall
    assert codec.files_per_batch(uhd, None) == 5


def with_header_crc(data: bytes, change: int, mask: int) -> bytes:
    """``data`` with the byte at ``change`` flipped by ``mask`` and the header CRC recomputed."""
    out = bytearray(data)
    out[change] ^= mask
    for end in range(32, len(out)):
        if zlib.crc32(data[: end - 4]) == struct.unpack("<I", data[end - 4 : end])[0]:
            out[end - 4 : end] = struct.pack("<I", zlib.crc32(out[: end - 4]))
            return bytes(out)
    raise AssertionError("no header CRC found")


def test_wrong_codes_never_become_an_image(codec: Codec):
    data = codec.compress(smooth(16, 16))
    file = VQZFile.from_bytes(data)
    code_crc = data.index(struct.pack("<I", file.code_crc))
    with pytest.raises(CorruptDataError, match="checksum"):
        codec.decompress(with_header_crc(data, code_crc, 0x01))


def test_another_model_is_refused(codec: Codec, tmp_path: Path):
    other = Codec.open(seeded_model_file(tmp_path / "other.safetensors", seed=1))
    data = codec.compress(smooth(8, 8))
    with pytest.raises(ModelMismatchError, match=codec.model_id.hex()):
        other.decompress(data)


@pytest.fixture
def zoo_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "zoo"
    folder.mkdir()
    monkeypatch.setattr(zoo, "ZOO_DIR", folder)
    return folder


def test_decoding_without_a_model_finds_the_bundled_one(codec: Codec, model_file: Path, zoo_dir: Path):
    data = codec.compress(smooth(8, 8))
    with pytest.raises(ModelMismatchError, match=f"{codec.model_id.hex()}.*not bundled"):
        vqcodec.decompress(data)
    assert vqcodec.info(data)["ideal_bits"] is None  # header only: the model is unknown

    (zoo_dir / "tiny.safetensors").write_bytes(model_file.read_bytes())
    assert vqcodec.decompress(data).size == (8, 8)
    assert vqcodec.info(data)["model"] == "tiny"
    report = vqcodec.info(data, bits=True)
    assert report["model"] == "tiny" and report["ideal_bits"] > 0


def test_a_file_of_a_retired_default_model_names_the_version_that_reads_it(
    codec: Codec, zoo_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    data = codec.compress(smooth(8, 8))
    monkeypatch.setitem(zoo.RETIRED_MODELS, codec.model_id.hex(), "0.2.0")
    with pytest.raises(ModelMismatchError, match=r"vqcodec 0\.2\.0.*pip install 'vqcodec==0\.2\.0'"):
        vqcodec.decompress(data)


def test_no_bundled_model_is_retired() -> None:
    bundled = {info.sha256[:32] for info in zoo.list_models()}
    assert bundled and not bundled & set(zoo.RETIRED_MODELS)


def test_pillow_plugin_opens_vqz(codec: Codec, model_file: Path, zoo_dir: Path):
    (zoo_dir / "tiny.safetensors").write_bytes(model_file.read_bytes())
    data = codec.compress(Image.fromarray(np.dstack([smooth(10, 6), np.full((6, 10), 7, np.uint8)])))
    image = Image.open(io.BytesIO(data))
    assert (image.format, image.size, image.mode) == ("VQZ", (10, 6), "RGBA")
    assert np.asarray(image)[..., 3].max() == 7
    assert Image.registered_extensions()[".vqz"] == "VQZ"


def test_zoo_registry(model_file: Path, zoo_dir: Path):
    with pytest.raises(zoo.UnknownModelError, match="no bundled default model"):
        zoo.resolve_model(None)
    with pytest.raises(zoo.UnknownModelError, match="bundled models: none"):
        vqcodec.compress(smooth(8, 8), model="nonexistent")
    (zoo_dir / "small.safetensors").write_bytes(model_file.read_bytes())
    (zoo_dir / "small.json").write_text('{"description": "a test model"}')
    [info] = zoo.list_models()
    assert (info.name, info.size, info.description) == ("small", model_file.stat().st_size, "a test model")
    assert zoo.resolve_model("small") == zoo_dir / "small.safetensors"
    assert zoo.resolve_model(str(model_file)) == model_file
    assert zoo.find_by_id(bytes.fromhex(info.sha256)[:16]) == info
    assert zoo.find_by_id(bytes(16)) is None
    with pytest.raises(zoo.UnknownModelError, match="bundled models: small"):
        zoo.resolve_model("nonexistent")
    assert vqcodec.load_model("small").name == "small"


def test_codecs_share_the_loaded_model_and_exact_priors(model_file: Path):
    a, b = vqcodec.load_model(model_file), vqcodec.load_model(model_file)
    assert a.model is b.model and a.exact_priors is b.exact_priors


def test_devices():
    assert check_device(None) == torch.device("cpu")
    with pytest.raises(ValueError, match="invalid device"):
        check_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            check_device("cuda")


def test_api_does_not_import_torch_until_needed():
    import subprocess
    import sys

    code = "import sys, vqcodec; from PIL import Image; assert 'torch' not in sys.modules; print('ok')"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout == "ok\n"


def test_module_api_matches_codec(codec: Codec, model_file: Path):
    pixels = smooth(9, 9)
    assert vqcodec.compress(pixels, model=str(model_file)) == codec.compress(pixels)
    assert vqcodec.compress(pixels, model=codec) == codec.compress(pixels)


def test_the_codec_refuses_an_image_beyond_its_pixel_limit(codec: Codec) -> None:
    image = np.zeros((16, 24, 3), np.uint8)
    data = codec.compress(image)
    limited = codec.with_budgets(Budgets(max_pixels=16 * 24 - 1))
    with pytest.raises(ImageTooLargeError):
        limited.decompress(data)
    with pytest.raises(ImageTooLargeError):
        limited.compress(image)


def test_coding_never_runs_the_float_vqvae(codec: Codec, monkeypatch: pytest.MonkeyPatch):
    """Codes and pixels come from the exact VQ-VAE alone (exact.md §10-11), whatever the float settings."""
    vqvae = codec.model.vqvae
    for name in ("encode", "decode_codes", "forward"):
        monkeypatch.setattr(vqvae, name, lambda *args: pytest.fail("the float VQ-VAE ran"))
    image = smooth(40, 24, seed=3)
    assert np.asarray(codec.decompress(codec.compress(image))).shape == image.shape


def test_int8_products_of_a_side_of_one_are_exact():
    """torch._int_mm read memory beyond a matrix with a side of 1 stored transposed (strides (1, 1)):
    a model with a one-channel layer wrote other bytes on every run, and files it could not decode."""
    generator = torch.Generator().manual_seed(0)

    def int8(rows: int, cols: int, transposed: bool) -> torch.Tensor:
        shape = (cols, rows) if transposed else (rows, cols)
        matrix = torch.randint(-128, 128, shape, generator=generator, dtype=torch.int8)
        return matrix.t() if transposed else matrix

    for m, k, n in [(1, 9, 32), (64, 1, 32), (64, 16, 1), (1, 1, 1)]:
        for a_transposed in (False, True):
            for b_transposed in (False, True):
                a, b = int8(m, k, a_transposed), int8(k, n, b_transposed)
                expected = torch.mm(a.double(), b.double()).to(torch.int32)
                for _ in range(3):
                    assert torch.equal(quantise.int_mm(a, b), expected)
