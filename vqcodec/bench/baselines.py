"""What vqcodec's times are measured against: CompressAI's codecs on the same machine, and the floor
that the priors' products set whatever the implementation.

Every comparison is a ratio taken in one run on one machine, so it holds where absolute times do not.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn


def compressai_times(paths: list[Path]) -> dict[str, dict[str, Any]]:
    """Median encode and decode seconds of CompressAI's non-autoregressive bmshj2018-factorized and
    autoregressive mbt2018 (random weights: the time is the architecture's); {} if it is not installed."""
    try:
        import compressai
        from compressai.zoo import bmshj2018_factorized, mbt2018
    except ImportError:
        return {}
    times = {}
    for name, build in (("bmshj2018-factorized", bmshj2018_factorized), ("mbt2018", mbt2018)):
        net = build(quality=1, pretrained=False).eval()
        net.update(force=True)
        encode, decode = [], []
        for path in paths:
            x = image_tensor(np.array(Image.open(path).convert("RGB")))
            with torch.no_grad():
                tick = time.perf_counter()
                out = net.compress(x)
                encode.append(time.perf_counter() - tick)
                tick = time.perf_counter()
                net.decompress(out["strings"], out["shape"])
                decode.append(time.perf_counter() - tick)
        times[name] = {
            "encode_s": statistics.median(encode),
            "decode_s": statistics.median(decode),
            "version": compressai.__version__,
        }
    return times


class GDN(nn.Module):
    """Ballé's generalised divisive normalisation, y = x / sqrt(beta + gamma x^2); inverse: x * sqrt(...)."""

    def __init__(self, channels: int, inverse: bool) -> None:
        super().__init__()
        self.inverse = inverse
        self.norm = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = torch.sqrt(self.norm(x * x).abs() + 1e-6)
        return x * norm if self.inverse else x / norm


def factorized_transforms(n: int = 128, m: int = 192) -> tuple[nn.Module, nn.Module]:
    """bmshj2018-factorized's analysis and synthesis transforms (N=128, M=192: CompressAI's qualities 1-5)."""

    def down(i: int, o: int) -> nn.Module:
        return nn.Conv2d(i, o, 5, stride=2, padding=2)

    def up(i: int, o: int) -> nn.Module:
        return nn.ConvTranspose2d(i, o, 5, stride=2, padding=2, output_padding=1)

    analysis = nn.Sequential(
        down(3, n), GDN(n, False), down(n, n), GDN(n, False), down(n, n), GDN(n, False), down(n, m)
    )
    synthesis = nn.Sequential(
        up(m, n), GDN(n, True), up(n, n), GDN(n, True), up(n, n), GDN(n, True), up(n, 3)
    )
    return analysis, synthesis


def bmshj2018_sides() -> tuple[str, Callable[[torch.Tensor], Any], Callable[[Any], Any]]:
    """The baseline of the speed targets as (what it is, encode, decode) on a (1, 3, H, W) tensor:
    CompressAI's bmshj2018-factorized (random weights) where it is installed; without it, its
    transforms rebuilt here with the latent rounded, a lower bound on that codec's times (its entropy
    coder is left out), since CompressAI cannot be installed beside every torch."""
    try:
        from compressai.zoo import bmshj2018_factorized
    except ImportError:
        analysis, synthesis = factorized_transforms()
        what = (
            "bmshj2018-factorized's transforms rebuilt in torch (N=128, M=192, GDN, random weights), without"
            " its entropy coder, so a lower bound on its times"
        )
        return what, lambda x: analysis(x).round(), synthesis
    net = bmshj2018_factorized(quality=1, pretrained=False).eval()
    net.update(force=True)
    what = "CompressAI's bmshj2018-factorized (random weights, its entropy coder included)"
    return what, net.compress, lambda out: net.decompress(out["strings"], out["shape"])


def image_tensor(rgb: np.ndarray) -> torch.Tensor:
    """8-bit RGB pixels as the (1, 3, H, W) float tensor in [0, 1] that CompressAI's codecs take."""
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255


def prior_multiply_adds(model: str | None, width: int, height: int) -> int:
    """Multiply-adds of the priors' matrix products for one image of this size: every layer
    once per position (the conditioning stack and its projections at a quarter of them), the attention
    products counted without the heads' block-diagonal padding. The same on every machine."""
    import vqcodec

    codec = vqcodec.load_model(model, device="cpu")
    total = 0
    shapes = codec.model.code_shapes(*codec.padded_size(height, width))
    for prior, (h, w) in zip(codec.exact_priors, shapes, strict=True):
        full, quarter = h * w, -(-h // 2) * -(-w // 2)

        def work(layer: Any, positions: int) -> int:
            fan_in, out = layer.weight.shape
            return positions * fan_in * out

        total += work(prior.input_conv, full) + work(prior.out_conv, full)
        for block in prior.blocks:
            total += work(block.conv1, full) + work(block.conv2, full)
            total += work(block.cond_proj, quarter) if block.cond_proj is not None else 0
        for attn in prior.attentions:
            total += sum(work(layer, full) for layer in (attn.query, attn.key, attn.value, attn.proj))
            total += 2 * full * prior.channels * len(prior.attention_offsets)
        for block in prior.out_blocks:
            total += work(block.conv1, full) + work(block.conv2, full)
        if prior.cond_conv is not None:
            total += work(prior.cond_conv, quarter)
        for block in prior.cond_stack:
            total += work(block.conv1, quarter) + work(block.conv2, quarter)
    return total


def gemm_rate(device: str) -> tuple[str, float]:
    """The kind of the priors' matrix products on ``device`` (int8 x int8 -> int32, or float64 where
    there are no int8 products) and the G operations per second of a large one."""
    from vqcodec.exact.quantise import int8_products

    int8 = int8_products(torch.device(device))
    a = torch.randint(-127, 128, (8192, 320), dtype=torch.int8 if int8 else torch.float64, device=device)
    b = torch.randint(-127, 128, (320, 128), dtype=a.dtype, device=device)
    product = torch._int_mm if int8 else torch.matmul
    for _ in range(3):
        product(a, b)
    repeats = 20
    if device != "cpu":
        torch.cuda.synchronize()
    tick = time.perf_counter()
    for _ in range(repeats):
        product(a, b)
    if device != "cpu":
        torch.cuda.synchronize()
    rate = repeats * 2 * a.shape[0] * a.shape[1] * b.shape[1] / (time.perf_counter() - tick) / 1e9
    return ("int8" if int8 else "float64"), rate


def compute_floor(model: str | None, device: str) -> dict[str, Any]:
    """The least time the priors' products need for a Kodak image (768x512) on ``device``."""
    macs = prior_multiply_adds(model, 768, 512)
    kind, rate = gemm_rate(device)
    return {"kodak_gmac": macs / 1e9, "gemm": kind, "gemm_gops": rate, "kodak_floor_s": 2 * macs / 1e9 / rate}
