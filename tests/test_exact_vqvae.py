"""The exact integer VQ-VAE (exact.md §10-11): each layer is the convolution it mirrors, computed
exactly; the whole is the float model up to rounding; pixels and bytes do not depend on threads."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vqcodec.exact import fused, quantise
from vqcodec.exact.calibrate import calibrate
from vqcodec.exact.encoder import ExactEncoder
from vqcodec.exact.quantise import input_quantiser, quantise_rows8, ranges_under
from vqcodec.exact.vqvae import FP, ExactDecoder, IntegerConv, run_layers
from vqcodec.models.config import tiny_config
from vqcodec.models.model import CodecModel, to_uint8
from vqcodec.models.vqvae import part_shape


def _reference(
    conv: nn.Conv2d | nn.ConvTranspose2d, x: torch.Tensor, in_range: int, low: int, high: int
) -> torch.Tensor:
    """A layer by exact.md §3.2 and §10.1 (§11's 16-bit inputs alike): the input rounded in int64,
    torch's float64 convolution of the integers, then ``clamp(rshr(M acc + B, t))`` from the stored
    scale and bias."""
    weight = conv.weight.detach().double()
    rows = weight.permute(1, 0, 2, 3) if isinstance(conv, nn.ConvTranspose2d) else weight
    q8 = quantise_rows8(rows.flatten(1).numpy(), conv.bias.detach().double().numpy(), FP, in_range, high)
    m, t = input_quantiser(in_range, high)
    q = ((x.long() * m + 2 ** (t - 1)) >> t).clamp(low, high).double()
    w_int = torch.from_numpy(q8.weight).view(rows.shape)
    nchw = q.permute(2, 0, 1)[None]
    args = dict(stride=conv.stride, padding=conv.padding)
    if isinstance(conv, nn.ConvTranspose2d):
        acc = F.conv_transpose2d(nchw, w_int.permute(1, 0, 2, 3), **args)
    else:
        acc = F.conv2d(nchw, w_int, **args)
    acc = acc[0].permute(1, 2, 0)
    assert torch.equal(acc, acc.round())
    scale, low_bias, high_bias = (torch.from_numpy(v) for v in (q8.scale, q8.bias_low, q8.bias_high))
    return ((acc * scale + low_bias).floor() + high_bias).clamp(-(2**20 - 1), 2**20 - 1)


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(6, 5, 3, padding=1),
        nn.Conv2d(6, 5, 1),
        nn.Conv2d(6, 5, 4, stride=2, padding=1),
        nn.ConvTranspose2d(6, 5, 4, stride=2, padding=1),
        nn.Conv2d(8, 20, 3, padding=1),
        nn.ConvTranspose2d(8, 5, 4, stride=2, padding=1),
    ],
    ids=["3x3", "1x1", "down", "up", "3x3, 8 in", "up, 8 in"],  # 8 in: the kernels' tap products
)
@pytest.mark.parametrize("products", ["kernels", "int8", "float64"])
@pytest.mark.parametrize(
    ("low", "high"),
    [(-127, 127), (0, 255), (-32767, 32767), (0, 32767)],
    ids=["signed", "unsigned", "16-bit", "16-bit after a ReLU"],
)
def test_each_convolution_is_the_one_it_mirrors(
    conv: nn.Module, products: str, low: int, high: int, monkeypatch
) -> None:
    """The layer's products, whatever their kind, against torch's convolution of the same integers;
    some inputs lie beyond the range (they clip), and an unsigned input (after a ReLU) is never
    negative. ``products``: int8 ones rounded in the compiled kernels (``fused``) or by torch calls,
    or float64 ones (CUDA's)."""
    torch.manual_seed(0)
    x = torch.randint(0 if low == 0 else -(2**17), 2**17, (10, 14, conv.in_channels)).double()
    if products == "kernels" and not fused.available(torch.device("cpu")):
        pytest.skip("vqcodec.exact._kernels was not built")
    if products != "kernels":
        monkeypatch.setattr(fused, "_kernels", None)
    if products == "float64":
        monkeypatch.setattr(quantise, "INT8_DEVICES", frozenset())
    layer = IntegerConv.from_float(conv, 2**16, low, high)
    np.testing.assert_array_equal(layer(x).numpy(), _reference(conv, x, 2**16, low, high).numpy())


@pytest.mark.skipif(not fused.available(torch.device("cpu")), reason="vqcodec.exact._kernels was not built")
@pytest.mark.parametrize(
    ("first", "second"),
    [
        (nn.Conv2d(8, 12, 4, stride=2, padding=1), nn.Conv2d(12, 8, 4, stride=2, padding=1)),
        (nn.Conv2d(8, 12, 3, padding=1), nn.Conv2d(12, 4, 1)),
        (
            nn.ConvTranspose2d(8, 12, 4, stride=2, padding=1),
            nn.ConvTranspose2d(12, 3, 4, stride=2, padding=1),
        ),
    ],
    ids=["down, down", "3x3, 1x1", "up, up"],
)
@pytest.mark.parametrize(
    ("low", "high"),
    [(-127, 127), (0, 255), (-32767, 32767), (0, 32767)],
    ids=["signed", "unsigned", "16", "16 ReLU"],
)
def test_a_convolution_read_by_the_next_alone_hands_it_the_same_operands(
    first: nn.Module, second: nn.Module, low: int, high: int
) -> None:
    """``run_layers`` of two convolutions in a row (the first's rounding writes the second's int8
    operands, no map between) gives what one after the other gives."""
    torch.manual_seed(1)
    x = torch.randint(-(2**17), 2**17, (12, 16, first.in_channels)).double()  # twice down: even sides
    layers = [
        IntegerConv.from_float(first, 2**16, -127, 127),
        IntegerConv.from_float(second, 2**15, low, high),
    ]
    assert torch.equal(run_layers(layers, x), layers[1](layers[0](x)))


def test_unsupported_convolutions_are_refused() -> None:
    with pytest.raises(ValueError, match="no exact form"):
        IntegerConv.from_float(nn.Conv2d(3, 3, 2), 1000)
    with pytest.raises(ValueError, match="inputs"):
        IntegerConv.from_float(nn.Conv2d(3, 3, 1), 1000, -255, 255)
    with pytest.raises(ValueError, match="fan-in"):
        IntegerConv.from_float(nn.Conv2d(4097, 1, 3, padding=1), 1000, -32767, 32767)


@pytest.fixture(scope="module")
def models() -> tuple[CodecModel, ExactDecoder, ExactEncoder, torch.Tensor]:
    """A tiny model whose codebooks a training pass seeded, its exact decoder and encoder and 2 images
    [2, 3, 64, 96]."""
    torch.manual_seed(0)
    model = CodecModel(tiny_config())
    y, x = torch.meshgrid(torch.arange(64.0), torch.arange(96.0), indexing="ij")
    planes = [0.5 + 0.4 * torch.sin(x / (7 + i) + y / (5 + 2 * i)) for i in range(6)]
    images = (torch.stack(planes).view(2, 3, 64, 96) * 255).round().to(torch.uint8)
    model.vqvae.train()
    with torch.no_grad():
        model.vqvae(images.float() / 255 - 0.5)
    model.eval()
    calibrate(model, [images.float() / 255 - 0.5])
    decoder = ExactDecoder(model.vqvae, ranges_under(model.input_ranges, "vqvae."))
    return model, decoder, ExactEncoder(model.vqvae, ranges_under(model.input_ranges, "vqvae.")), images


def test_the_exact_model_is_the_float_one_up_to_rounding(models: tuple) -> None:
    """The decoder's 8-bit layers, with ranges measured on these images, give the float model's pixels
    within a level or two; the encoder's (8-bit weights, 16-bit inputs) mostly its codes (77 % of the
    top level's here, where the random model's codewords lie close)."""
    model, decoder, encoder, images = models
    with torch.no_grad():
        codes = model.vqvae.encode(images.float() / 255 - 0.5)
        floats = to_uint8(model.vqvae.decode_codes(codes))
    pixels = decoder.decode(codes)
    assert pixels.dtype == torch.uint8 and pixels.shape == images.shape
    differ = (pixels.int() - floats.int()).abs()
    print(f"max {differ.max()}, mean {differ.float().mean():.3f} levels")
    assert differ.max() <= 2 and differ.float().mean() < 0.1
    same = [(a == b).float().mean() for a, b in zip(encoder.encode(images), codes, strict=True)]
    assert min(same) > 0.75


def test_the_training_roundings_give_the_integer_decoders_pixels(models: tuple) -> None:
    """Quantisation-aware training (``train.fake_quant``) rounds inputs and weights as the integer
    decoder does, so its pixels are closer to the integer ones than the float model's; not equal, since
    the finer roundings it leaves out move values across the coarse ones' boundaries now and then
    (on a CBSD68 image a third of the pixels differ by a level; over 8, the mean PSNRs by 0.0004 dB)."""
    from vqcodec.train.decoder import DecoderHalf

    model, decoder, _, images = models
    with torch.no_grad():
        codes = model.vqvae.encode(images.float() / 255 - 0.5)
    vqvae = model.vqvae.double()
    ranges = ranges_under(model.input_ranges, "vqvae.")
    try:
        with torch.no_grad():
            floats = to_uint8(vqvae.decode_codes(codes))
            words = [quantizer.embed(c) for quantizer, c in zip(vqvae.quantizers, codes, strict=True)]
            rounded = to_uint8(DecoderHalf(vqvae, ranges)(words))
    finally:
        vqvae.float()
    pixels = decoder.decode(codes)
    off, float_off = (pixels != rounded).float().mean(), (pixels != floats).float().mean()
    print(f"pixels off: {off:.4f} rounded in training, {float_off:.4f} float")
    assert (pixels.int() - rounded.int()).abs().max() <= 2 and off < 0.75 * float_off


def test_float64_products_give_the_int8_products_pixels(models: tuple, monkeypatch) -> None:
    """Devices without int8 products (CUDA here) multiply the same 8-bit integers in float64."""
    model, decoder, encoder, images = models
    codes = encoder.encode(images)
    pixels = decoder.decode(codes)
    monkeypatch.setattr(quantise, "INT8_DEVICES", frozenset())
    float64 = ExactDecoder(model.vqvae, ranges_under(model.input_ranges, "vqvae."))
    assert torch.equal(float64.decode(codes), pixels)


def test_compiled_kernels_give_the_torch_calls_pixels_and_codes(models: tuple, monkeypatch) -> None:
    """The VQ-VAE's convolutions rounded in the compiled kernels or by torch calls: the same codes from
    the encoder, the same pixels from the decoder."""
    _, decoder, encoder, images = models
    if not fused.available(torch.device("cpu")):
        pytest.skip("vqcodec.exact._kernels was not built")
    codes = encoder.encode(images)
    pixels = decoder.decode(codes)
    monkeypatch.setattr(fused, "_kernels", None)
    assert all(torch.equal(a, b) for a, b in zip(encoder.encode(images), codes, strict=True))
    assert torch.equal(decoder.decode(codes), pixels)


def test_parts_give_the_pixels_and_codes_of_the_whole(models: tuple) -> None:
    """Bands of rows and blocks, with the halo around them, give the integers of the whole image."""
    _, decoder, encoder, images = models
    codes = encoder.encode(images)
    whole = decoder.decode(codes)
    for part in ((1, 24), (2, 4), (16, 2), (4, 8)):  # bottom-level codes; the map has 16 x 24 (halo 6)
        assert torch.equal(decoder.decode(codes, part), whole), part
    wide = torch.cat([images, images.flip(-1)], dim=-1)  # the encoder's halo is 14 codes: 32 x 48
    wide = torch.cat([wide, wide.flip(-2)], dim=-2)
    whole = encoder.encode(wide)
    for part in ((2, 48), (32, 2), (2, 4), (6, 10)):
        assert all(torch.equal(a, b) for a, b in zip(encoder.encode(wide, part), whole, strict=True)), part
    top = torch.randint(0, 32, whole[0].shape)  # fixed top codes, with candidates
    whole, parted = encoder.encode(wide, None, 3, [top]), encoder.encode(wide, (2, 4), 3, [top])
    assert torch.equal(whole[0], top) and len(whole) == 2 + 2 * 2
    assert all(torch.equal(a, b) for a, b in zip(parted, whole, strict=True))
    assert torch.equal(whole[4][:, 0], whole[1])  # the bottom's nearest candidate is its code


def test_a_wide_map_is_cut_into_blocks_and_a_narrow_one_into_bands() -> None:
    """Whichever computes fewer halo codes: a band 27 rows tall with a halo of 20 does 2.5 times its work."""
    assert part_shape(1600, 2400, 2**16, 20, 2) == (256, 256)
    assert part_shape(540, 960, 2**16, 20, 2) == (256, 256)
    assert part_shape(128, 192, 2**16, 20, 2) == (128, 192)  # one part: the whole map
    assert part_shape(4000, 400, 2**16, 20, 2) == (164, 400)  # bands of 164 rows beat blocks of 256


_WORKER = textwrap.dedent(
    """
    import hashlib, io, sys
    import numpy as np
    import vqcodec
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:192, 0:256] / 24.0
    rgb = 127 + 80 * np.sin(x[..., None] * [1.0, 1.3, 0.7] + y[..., None]) + rng.normal(0, 12, (192, 256, 3))
    image = np.clip(rgb, 0, 255).astype(np.uint8)
    data = vqcodec.compress(image, quality=4)
    pixels = np.asarray(vqcodec.decompress(data))
    chosen = vqcodec.compress(image, quality=4, effort=2)  # the rate-distortion choice too
    print(*(hashlib.sha256(b).hexdigest() for b in (data, pixels.tobytes(), chosen)))
    """
)


@pytest.mark.slow
def test_bytes_and_pixels_do_not_depend_on_the_thread_count() -> None:
    """The bundled model, in fresh processes with 1 and 2 OpenMP threads (torch reads them at start):
    the bytes at effort 0 and 2 and the decoded pixels."""
    results = set()
    for threads in ("1", "2"):
        env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        run = subprocess.run(
            [sys.executable, "-c", _WORKER], env=env, capture_output=True, text=True, check=True
        )
        results.add(run.stdout.strip())
    assert len(results) == 1, results
    assert all(len(h) == 64 for h in results.pop().split())
