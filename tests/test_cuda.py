"""CPU <-> GPU with the bundled model: the same image gives the same bytes and pixels, and files written
on one device decode on the other (the GPU steps through CUDA graphs). Needs CUDA; skipped without it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import vqcodec
from vqcodec.codec import Budgets, Codec
from vqcodec.imageio import load_image

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

SIZES = [(1, 1), (1, 40), (40, 1), (3, 50), (50, 3), (17, 33), (64, 200)]


@pytest.fixture(scope="module")
def codecs() -> tuple[Codec, Codec]:
    return vqcodec.load_model(device="cpu"), vqcodec.load_model(device="cuda")


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_cpu_files_decode_on_the_gpu_one_by_one_and_in_mixed_batches(codecs: tuple[Codec, Codec]) -> None:
    cpu, gpu = codecs
    rng = np.random.default_rng(0)
    files = [cpu.compress(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in SIZES]
    expected = [cpu.decode_codes(data).codes for data in files]
    for data, codes in zip(files, expected, strict=True):
        assert same(gpu.decode_codes(data).codes, codes)
    together = gpu.decode_many(files + files[::-1])  # 14 files, 7 sizes: 7 batches of 2
    assert all(same(d.codes, c) for d, c in zip(together, expected + expected[::-1], strict=True))


@pytest.mark.parametrize("whole", [True, False])
def test_the_same_codes_pack_to_the_same_bytes(codecs: tuple[Codec, Codec], whole: bool) -> None:
    """The encoder's tables in one pass, or (as for maps too large for that) step by step."""
    cpu, gpu = codecs
    if not whole:
        cpu, gpu = (codec.with_budgets(Budgets(whole_map_values=0)) for codec in (cpu, gpu))
    rng = np.random.default_rng(1)
    source = load_image(Image.fromarray(rng.integers(0, 256, (96, 136, 3), dtype=np.uint8)))
    codes = gpu.image_codes(source.rgb)
    data = gpu.pack(source, codes)
    assert data == cpu.pack(source, codes)
    assert same(cpu.decode_codes(data).codes, codes)


def test_tiled_files_cross_devices(codecs: tuple[Codec, Codec]) -> None:
    """Tiles of several sizes (one CUDA graph per size on the GPU, one masked stepper on the CPU)."""
    cpu, gpu = codecs
    rng = np.random.default_rng(2)
    source = load_image(Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)))
    codes = cpu.image_codes(source.rgb)
    tile = cpu.order.tile_size(*codes[0].shape, 128)  # 3 x 2 tiles of 104 x 104, the last ones smaller
    data = cpu.pack(source, codes, tile=tile)
    assert data == gpu.pack(source, codes, tile=tile)
    assert same(gpu.decode_codes(data).codes, codes)


def test_bands_encode_like_the_whole_image_on_the_gpu(codecs: tuple[Codec, Codec]) -> None:
    """With cuDNN's default TF32 convolutions a band gave other codes than the whole image; not any more."""
    _, gpu = codecs
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (400, 120, 3), dtype=np.uint8)
    whole = gpu.image_codes(rgb)
    banded = gpu.with_budgets(Budgets(encode_part_codes=30 * 8))  # bands of 8 bottom rows
    assert same(banded.image_codes(rgb), whole)


def test_an_image_gives_the_same_bytes_and_pixels_on_both_devices(codecs: tuple[Codec, Codec]) -> None:
    """The exact VQ-VAE (exact.md §10-11): the encoder's codes and the decoded pixels do not depend on
    the device."""
    cpu, gpu = codecs
    rng = np.random.default_rng(4)
    y, x = np.mgrid[0:192, 0:256] / 24.0
    rgb = 127 + 80 * np.sin(x[..., None] * [1.0, 1.3, 0.7] + y[..., None]) + rng.normal(0, 12, (192, 256, 3))
    image = np.clip(rgb, 0, 255).astype(np.uint8)
    data = cpu.compress(image)
    assert gpu.compress(image) == data
    assert np.array_equal(np.asarray(gpu.decompress(data)), np.asarray(cpu.decompress(data)))
