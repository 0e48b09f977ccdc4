"""The hierarchical VQ-VAE of VQ-VAE-2 (Razavi et al. 2019, section 3.1): stage 1 of the codec.

Images go in and come out as ``pixel / 255 - 0.5``. The bottom encoder downsamples by ``bottom_stride``
and every level above halves the resolution again. Quantization runs top-down: each lower level's
quantizer sees its own encoder features *and* the decoded quantized levels above it (Fig. 2a), so a
lower level only has to carry what the levels above could not. The decoder sees all levels at once.
Levels are listed top first everywhere, as in the config.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from vqcodec.models.config import VQVAEConfig


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


class ResBlock(nn.Module):
    """ReLU-conv3x3-ReLU-conv1x1 with a skip connection, as in the original VQ-VAE."""

    def __init__(self, channels: int, res_channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, res_channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(res_channels, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


def _strided_widths(channels: int, stride: int) -> list[int]:
    """Output widths of the stride-2 convs of an encoder (half width first); decoders mirror them."""
    n_halvings = stride.bit_length() - 1
    return [channels // 2] + [channels] * (n_halvings - 1)


class Encoder(nn.Module):
    """Downsamples by ``stride`` (a power of two) with 4x4 stride-2 convs, then a 3x3 conv and res blocks."""

    def __init__(
        self, in_channels: int, channels: int, res_channels: int, n_res_blocks: int, stride: int
    ) -> None:
        super().__init__()
        widths = [in_channels, *_strided_widths(channels, stride)]
        layers: list[nn.Module] = []
        for a, b in pairwise(widths):
            layers += [nn.Conv2d(a, b, 4, stride=2, padding=1), nn.ReLU()]
        layers.append(nn.Conv2d(widths[-1], channels, 3, padding=1))
        layers += [ResBlock(channels, res_channels) for _ in range(n_res_blocks)]
        layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """A 3x3 conv and res blocks, then 4x4 stride-2 transposed convs up by ``stride`` (mirrors Encoder)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: int,
        res_channels: int,
        n_res_blocks: int,
        stride: int,
    ) -> None:
        super().__init__()
        widths = [channels, *_strided_widths(channels, stride)[::-1][1:], out_channels]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1)]
        layers += [ResBlock(channels, res_channels) for _ in range(n_res_blocks)]
        for a, b in pairwise(widths):
            layers += [nn.ReLU(), nn.ConvTranspose2d(a, b, 4, stride=2, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _upsampler(channels: int, n_doublings: int) -> nn.Sequential:
    """Doubles the resolution ``n_doublings`` times with transposed convs; empty (identity) for 0."""
    layers: list[nn.Module] = []
    for i in range(n_doublings):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1))
    return nn.Sequential(*layers)


class QuantizerOutput(NamedTuple):
    quantized: torch.Tensor  # [B, D, h, w]: the codewords in value, the identity in gradient
    codes: torch.Tensor  # int64 [B, h, w]
    commitment_loss: torch.Tensor  # scalar, already multiplied by beta
    perplexity: torch.Tensor  # scalar: exp(entropy) of the batch's code histogram
    usage: torch.Tensor  # scalar: fraction of codewords used in the batch


class VectorQuantizerEMA(nn.Module):
    """Nearest-codeword quantizer whose codebook tracks an EMA of the encoder outputs (eqs. 2-4).

    The codebook replaces the codebook loss by EMA updates of cluster sizes N and sums m, with
    e = m / N and Laplace smoothing of N so that no division by zero occurs. A codeword whose EMA
    cluster size drops below ``dead_threshold`` (default 1: it wins on average less than one encoder
    output per batch) is dead; during training it is re-seeded from a random encoder output of the
    current batch and its statistics reset to N = threshold. The statistics start at zero, so the
    first training step seeds the whole codebook from the data. Under ``torch.distributed`` the batch
    statistics are summed over ranks and re-seeding candidates come from rank 0, so every rank
    keeps the same codebook. Codebook and statistics are buffers: they are saved but not optimised.
    """

    def __init__(
        self,
        codebook_size: int,
        code_dim: int,
        decay: float = 0.99,
        commitment_cost: float = 0.25,
        dead_threshold: float = 1.0,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.code_dim = code_dim
        self.decay = decay
        self.commitment_cost = commitment_cost
        self.dead_threshold = dead_threshold
        self.eps = eps
        self.register_buffer("embedding", torch.randn(codebook_size, code_dim))
        self.register_buffer("cluster_size", torch.zeros(codebook_size))
        self.register_buffer("embed_sum", torch.zeros(codebook_size, code_dim))

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codeword for every row of ``flat`` [N, D] (||z||^2 is constant, dropped)."""
        scores = torch.addmm(self.embedding.pow(2).sum(1), flat, self.embedding.t(), alpha=-2.0)
        return scores.argmin(1)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """Codewords of int64 ``codes`` [B, h, w] as a [B, D, h, w] map."""
        return F.embedding(codes, self.embedding).permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor, update: bool | None = None) -> QuantizerOutput:
        """Quantize ``z`` [B, D, h, w]; with ``update`` (default: when training) step the EMA codebook.

        Runs in float32 outside autocast: code assignment should not depend on the training precision.
        """
        update = self.training if update is None else update
        with torch.autocast(z.device.type, enabled=False):
            z = z.float()
            b, _, h, w = z.shape
            flat = z.detach().permute(0, 2, 3, 1).reshape(-1, self.code_dim)
            codes = self.nearest(flat)
            counts = torch.bincount(codes, minlength=self.codebook_size).float()
            quantized = self.embed(codes.view(b, h, w))
            commitment_loss = self.commitment_cost * F.mse_loss(z, quantized)
            if update:
                self._update(flat, codes, counts)
            probs = counts / counts.sum()
            perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
            usage = (counts > 0).float().mean()
            # straight-through: exactly the codeword in value (z - z == 0), the identity in gradient
            quantized = quantized + (z - z.detach())
        return QuantizerOutput(quantized, codes.view(b, h, w), commitment_loss, perplexity, usage)

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, codes: torch.Tensor, counts: torch.Tensor) -> None:
        sums = torch.zeros_like(self.embed_sum).index_add_(0, codes, flat)
        stats = torch.cat([counts[:, None], sums], 1)
        if _distributed():
            dist.all_reduce(stats)
        self.cluster_size.mul_(self.decay).add_(stats[:, 0], alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(stats[:, 1:], alpha=1 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + self.codebook_size * self.eps) * total
        self.embedding.copy_(self.embed_sum / smoothed[:, None])
        self._revive_dead(flat)

    def _revive_dead(self, flat: torch.Tensor) -> None:
        """Re-seed dead codewords from random rows of ``flat``; fixed shapes, so no host sync is needed."""
        n, k = flat.shape[0], self.codebook_size
        if n >= k:
            idx = torch.randperm(n, device=flat.device)[:k]
        else:
            idx = torch.randint(n, (k,), device=flat.device)
        candidates = flat[idx]
        if _distributed():
            dist.broadcast(candidates, src=0)
        dead = (self.cluster_size < self.dead_threshold)[:, None]
        self.embedding.copy_(torch.where(dead, candidates, self.embedding))
        self.embed_sum.copy_(torch.where(dead, candidates * self.dead_threshold, self.embed_sum))
        self.cluster_size.masked_fill_(dead[:, 0], self.dead_threshold)


@dataclass
class VQVAEOutput:
    recon: torch.Tensor  # [B, C, H, W], same convention as the input, not clamped
    commitment_loss: torch.Tensor  # scalar, summed over levels (already multiplied by beta)
    codes: list[torch.Tensor]  # int64 [B, h_l, w_l] per level, top first
    perplexity: list[float]  # per level, top first
    usage: list[float]  # per level, top first


class VQVAE(nn.Module):
    """Hierarchical VQ-VAE with any number of levels. The training loss is mse(recon, x) + commitment_loss."""

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        stride = config.bottom_stride
        if stride < 2 or stride & (stride - 1):
            raise ValueError(f"bottom_stride must be a power of two >= 2, got {stride}")
        self.config = config
        c, n = config, config.n_levels
        dims = [level.code_dim for level in c.levels]
        # channels of the decoded levels above that each level's quantizer sees (none for the top)
        context_dims = [0] + dims[:-1]
        self.encoders = nn.ModuleList(
            Encoder(c.channels, c.channels, c.res_channels, c.n_res_blocks, 2)
            if level < n - 1
            else Encoder(c.in_channels, c.channels, c.res_channels, c.n_res_blocks, stride)
            for level in range(n)
        )
        self.quant_convs = nn.ModuleList(
            nn.Conv2d(c.channels + context_dims[level], dims[level], 1) for level in range(n)
        )
        self.quantizers = nn.ModuleList(
            VectorQuantizerEMA(level.codebook_size, level.code_dim, c.ema_decay, c.commitment_cost)
            for level in c.levels
        )
        # context_decoders[l] brings level l's codewords and its own context up to level l + 1
        self.context_decoders = nn.ModuleList(
            Decoder(
                dims[level] + context_dims[level], dims[level], c.channels, c.res_channels, c.n_res_blocks, 2
            )
            for level in range(n - 1)
        )
        self.upsamplers = nn.ModuleList(_upsampler(dims[level], n - 1 - level) for level in range(n))
        self.decoder = Decoder(sum(dims), c.in_channels, c.channels, c.res_channels, c.n_res_blocks, stride)

    def quantize(self, x: torch.Tensor, update: bool) -> list[QuantizerOutput]:
        """Encode bottom-up, then quantize top-down, each level conditioned on the decoded levels above."""
        m = self.config.multiple
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not a multiple of {m}")
        features, h = [], x
        for encoder in reversed(self.encoders):
            h = encoder(h)
            features.append(h)
        features.reverse()
        outputs: list[QuantizerOutput] = []
        context = features[0][:, :0]  # nothing above the top level
        for level, feature in enumerate(features):
            z = self.quant_convs[level](torch.cat([feature, context], 1))
            out = self.quantizers[level](z, update)
            outputs.append(out)
            if level < len(self.context_decoders):
                context = self.context_decoders[level](torch.cat([out.quantized, context], 1))
        return outputs

    def _decode(self, quantized: list[torch.Tensor]) -> torch.Tensor:
        upsampled = [up(q) for up, q in zip(self.upsamplers, quantized, strict=True)]
        return self.decoder(torch.cat(upsampled, 1))

    def forward(self, x: torch.Tensor) -> VQVAEOutput:
        """Reconstruct ``x`` [B, C, H, W]; in training mode this also steps the EMA codebooks."""
        outputs = self.quantize(x, update=self.training)
        recon = self._decode([out.quantized for out in outputs])
        n = len(outputs)
        stats = torch.stack([out.perplexity for out in outputs] + [out.usage for out in outputs]).tolist()
        return VQVAEOutput(
            recon=recon,
            commitment_loss=torch.stack([out.commitment_loss for out in outputs]).sum(),
            codes=[out.codes for out in outputs],
            perplexity=stats[:n],
            usage=stats[n:],
        )

    @torch.no_grad()
    def encode(self, x: torch.Tensor, part: Part | None = None) -> list[torch.Tensor]:
        """Int64 codes [B, h_l, w_l] per level, top first. Never updates the codebooks.

        ``part`` bounds memory on large images (``encode_in_parts``).
        """

        def encode(image: torch.Tensor, _rows: slice, _cols: slice) -> list[torch.Tensor]:
            return [out.codes for out in self.quantize(image, update=False)]

        return encode_in_parts(encode, x, self.config, self.encode_halo(), part)

    def encode_halo(self) -> int:
        """Bottom-level code rows beyond which a pixel cannot change a code, in whole top-level rows (and
        as many columns: every kernel is square).

        In pixels: a level's features reach ``1 + n_res_blocks`` rows of its own resolution (3x3 conv,
        res blocks), each 4x4 stride-2 conv below turning a reach of r rows into 2r + 1; a level's
        codes also reach, through the context decoder (3x3 conv, res blocks, one transposed conv),
        ``2 + n_res_blocks`` rows of the level above and what those codes reach.
        """
        c = self.config
        own = 1 + c.n_res_blocks

        def through_halvings(reach: int, halvings: int) -> int:
            for _ in range(halvings):
                reach = 2 * reach + 1
            return reach

        bottom = c.n_levels - 1
        features = [0] * c.n_levels  # each level's encoder output's reach, in pixels
        features[bottom] = through_halvings(own, c.bottom_stride.bit_length() - 1)
        for level in reversed(range(bottom)):
            features[level] = through_halvings(own, 1) * c.stride(level + 1) + features[level + 1]
        codes = features[0]
        for level in range(1, c.n_levels):
            codes = max(codes, features[level], (own + 1) * c.stride(level - 1) + codes)
        unit = 2**bottom
        return -(-codes // (c.bottom_stride * unit)) * unit

    def decode_codes(self, codes: list[torch.Tensor], part: Part | None = None) -> torch.Tensor:
        """The image (input convention, not clamped) for codes per level, top first.

        ``part`` bounds memory on large images (``decode_in_parts``).
        """

        def decode(maps: list[torch.Tensor]) -> torch.Tensor:
            return self._decode([q.embed(c) for q, c in zip(self.quantizers, maps, strict=True)])

        return decode_in_parts(decode, codes, self.config, self.decode_halo(), part)

    def decode_halo(self) -> int:
        """Bottom-level code rows (and columns) beyond which a code cannot change a decoded pixel,
        rounded up to whole top-level rows: 3x3 convs and res blocks add one row each, each transposed
        conv one row of its input (at most one in all at the bottom level and above, 2^(L-1) for the
        upsampled top level)."""
        unit = 2 ** (self.config.n_levels - 1)
        radius = self.config.n_res_blocks + 3 + unit
        return -(-radius // unit) * unit


Part = tuple[int, int]
"""Bottom-level code rows and columns that the VQ-VAE computes at once, besides the halo around them."""


def part_shape(height: int, width: int, codes: int, halo: int, unit: int) -> Part:
    """The part of about ``codes`` codes of a height x width bottom-level map that wastes the least
    work on its halo: whole-width bands of rows, or, on a map so wide that a band would be thin beside
    its halo, square blocks. Parts start on top-level codes (``unit`` bottom codes)."""
    rows = -(-min(height, max(1, codes // width)) // unit) * unit
    side = max(unit, math.isqrt(codes) // unit * unit)
    band_work, block_work = (rows + 2 * halo) / rows, ((side + 2 * halo) / side) ** 2
    if width > side + 2 * halo and block_work < band_work:
        return side, side
    return rows, width


def _spans(size: int, part: int, halo: int, unit: int) -> list[tuple[int, int, int, int]]:
    """Along one side of ``size`` codes: (start, stop) of each part's codes and (lo, hi) of the codes it
    is computed from, its halo included; a side that one part and its halo cover is not cut."""
    part = -(-part // unit) * unit  # parts start on top-level codes
    if size <= part + 2 * halo:
        return [(0, size, 0, size)]
    return [
        (start, min(size, start + part), max(0, start - halo), min(size, start + part + halo))
        for start in range(0, size, part)
    ]


def encode_in_parts(
    encode: Callable[[torch.Tensor, slice, slice], list[torch.Tensor]],
    x: torch.Tensor,
    config: VQVAEConfig,
    halo: int,
    part: Part | None,
) -> list[torch.Tensor]:
    """``encode(x, rows, cols)`` (images [B, C, H, W] whose bottom-level codes are ``rows`` x ``cols``,
    to codes per level [B, h_l, w_l], top first, and possibly pairs of maps [B, ..., h_l, w_l] per
    level after them), computed in parts of ``part`` bottom-level codes (None: the whole image): each
    part from the pixels under it and ``halo`` codes around it (``VQVAE.encode_halo``), beyond which a
    pixel cannot change its codes, so the parts give the maps of the whole image."""
    stride, n = config.bottom_stride, config.n_levels
    height, width = x.shape[-2] // stride, x.shape[-1] // stride
    if part is None:
        return encode(x, slice(0, height), slice(0, width))
    factors = [2 ** (n - 1 - level) for level in range(n)]  # bottom codes per code
    rows_of_parts: list[list[list[torch.Tensor]]] = []
    for start, stop, lo, hi in _spans(height, part[0], halo, factors[0]):
        row: list[list[torch.Tensor]] = []
        for left, right, c_lo, c_hi in _spans(width, part[1], halo, factors[0]):
            maps = encode(
                x[..., lo * stride : hi * stride, c_lo * stride : c_hi * stride],
                slice(lo, hi),
                slice(c_lo, c_hi),
            )
            map_factors = factors + [factors[i // 2] for i in range(len(maps) - n)]
            row.append(
                [
                    level_map[
                        ..., (start - lo) // f : (stop - lo) // f, (left - c_lo) // f : (right - c_lo) // f
                    ]
                    for level_map, f in zip(maps, map_factors, strict=True)
                ]
            )
        rows_of_parts.append([torch.cat(level, dim=-1) for level in zip(*row, strict=True)])
    return [torch.cat(level, dim=-2) for level in zip(*rows_of_parts, strict=True)]


def decode_in_parts(
    decode: Callable[[list[torch.Tensor]], torch.Tensor],
    codes: list[torch.Tensor],
    config: VQVAEConfig,
    halo: int,
    part: Part | None,
) -> torch.Tensor:
    """``decode(codes)`` (codes per level, top first, to images [B, C, H, W]), computed in parts of
    ``part`` bottom-level codes (None: the whole map): each with ``halo`` codes of context around it
    that the decoder's receptive field needs (``VQVAE.decode_halo``), so the parts join without seams."""
    if len(codes) != config.n_levels:
        raise ValueError(f"{len(codes)} code maps for {config.n_levels} levels")
    if part is None:
        return decode(codes)
    height, width, stride = codes[-1].shape[-2], codes[-1].shape[-1], config.bottom_stride
    factors = [2 ** (len(codes) - 1 - level) for level in range(len(codes))]  # bottom codes per code
    rows = []
    for start, stop, lo, hi in _spans(height, part[0], halo, factors[0]):
        row = []
        for left, right, c_lo, c_hi in _spans(width, part[1], halo, factors[0]):
            maps = [
                c[..., lo // f : -(-hi // f), c_lo // f : -(-c_hi // f)]
                for c, f in zip(codes, factors, strict=True)
            ]
            image = decode(maps)
            row.append(
                image[
                    ...,
                    (start - lo) * stride : (stop - lo) * stride,
                    (left - c_lo) * stride : (right - c_lo) * stride,
                ]
            )
        rows.append(torch.cat(row, dim=-1))
    return torch.cat(rows, dim=-2)
