"""The pixel decoder in integers (``exact.md`` §10): normative, so the decoded image is the same everywhere.

The integer mirror of ``models/vqvae.py``'s decoder (codes to pixels), in the priors' arithmetic
(§3, §5, §8) at ``FP`` fractional bits:

* every activation is an integer at ``FP`` clamped to ``|x| <= ACT_MAX``; weights are the priors'
  15-bit integers with a power-of-two scale per output channel;
* a convolution is a sum of one float64 GEMM per kernel tap on a zero-padded channels-last map, whose
  partial sums are integers (times ``2**-s_c``) below ``2**52``: exact whatever the BLAS, thread count
  or device. Strided and transposed convolutions become stride-1 taps (space-to-depth; one set of
  taps per output parity), so no im2col, FFT or Winograd path is ever taken;
* ReLU, residual sums, clamps and the final rounding to 8-bit pixels are exact float64 operations on
  integers below ``2**53``.

The encoder's half (pixels to codes, §11) is in ``encoder.py``: a decoder needs none of it.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqcodec.exact.arithmetic import ACT_MAX
from vqcodec.exact.quantise import scaled_rows
from vqcodec.models.config import VQVAEConfig
from vqcodec.models.vqvae import VQVAE, Part, ResBlock, decode_in_parts

FP = 14
"""Fractional bits of every VQ-VAE activation: the float model's activations stay below 16 on Kodak,
so ``ACT_MAX`` (2**20 - 1) leaves them a range of 64 with a resolution of 2**-14."""

Map = Tensor
"""A channels-last map [H, W, C] of integer-valued float64 at FP."""


def _pixels(x: Map) -> Tensor:
    """8-bit pixels ``clamp(rshr(255 x + 255 2**(FP-1), FP), 0, 255)`` of an output map at FP."""
    scaled = x.mul(255.0).add_(255.0 * 2 ** (FP - 1) + 2 ** (FP - 1)).mul_(2.0**-FP).floor_()
    return scaled.clamp_(0, 255).to(torch.uint8)


def _pad(x: Map, top: int, bottom: int, left: int, right: int) -> Map:
    """``x`` with zero rows and columns around it, and one more zero row below: the flat tap slices
    of the last output row read up to ``dx`` values past the padded map's end."""
    return F.pad(x, (0, 0, left, right, top, bottom + 1))


def _taps(padded: Map, taps: list[tuple[int, int]], weights: Tensor, bias: Tensor, height: int) -> Tensor:
    """``bias + sum over taps (dy, dx) of padded[y + dy, x + dx] @ weights[tap]`` for ``y < height`` and
    every column of ``padded`` (columns past the output's width are garbage): one GEMM per tap on a flat
    slice of the map, float64 [height, padded width, out]."""
    _, width, c = padded.shape
    flat = padded.view(-1, c)
    n = height * width
    out = bias.expand(n, -1).clone()
    for (dy, dx), weight in zip(taps, weights, strict=True):
        start = dy * width + dx
        out.addmm_(flat[start : start + n], weight)
    return out.view(height, width, -1)


_UP_TAPS = ({1: 1, 0: 3}, {2: 0, 1: 2})
"""For a transposed 4x4 convolution with stride 2 and padding 1: output row ``2m + p`` reads the input
row ``m + dy - 1`` (``dy`` an offset into the input padded by one row) with kernel row
``_UP_TAPS[p][dy]``; columns alike."""


@dataclasses.dataclass
class IntegerConv:
    """A quantised convolution (exact.md §10.1): ``kind`` "same" (k x k, stride 1, padding k // 2),
    "down" (4 x 4, stride 2, padding 1) or "up" (transposed 4 x 4, stride 2, padding 1)."""

    kind: str
    taps: list[list[tuple[int, int]]]  # per output parity for "up", else one list
    weights: list[Tensor]  # float64 [taps, in, out] per list of taps: W_c 2**-s_c
    bias_low: Tensor  # float64 [out]
    bias_high: Tensor  # float64 [out]

    @classmethod
    def from_float(cls, conv: nn.Conv2d | nn.ConvTranspose2d) -> IntegerConv:
        weight = conv.weight.detach().cpu().double()
        k, stride, padding = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        if isinstance(conv, nn.ConvTranspose2d):
            kind = "up" if (k, stride, padding) == (4, 2, 1) else ""
            weight = weight.permute(1, 0, 2, 3)  # [out, in, kh, kw] like a convolution
        else:
            kind = "same" if stride == 1 and k % 2 and padding == k // 2 else ""
            kind = "down" if (k, stride, padding) == (4, 2, 1) else kind
        plain = conv.dilation == (1, 1) and conv.groups == 1 and conv.bias is not None
        if isinstance(conv, nn.ConvTranspose2d):
            plain = plain and conv.output_padding == (0, 0)
        if not kind or not plain or conv.kernel_size[0] != conv.kernel_size[1]:
            raise ValueError(f"no exact form for {conv}")
        rows, low, high, _ = scaled_rows(
            weight.flatten(1).numpy(), conv.bias.detach().cpu().double().numpy(), FP
        )
        scaled = torch.from_numpy(rows).view(weight.shape)  # [out, in, kh, kw]

        def per_tap(kernel_offsets: list[tuple[int, int]]) -> Tensor:  # [taps, in, out]
            return torch.stack([scaled[:, :, ky, kx].t() for ky, kx in kernel_offsets])

        if kind == "same":
            taps = [[(ky, kx) for ky in range(k) for kx in range(k)]]
            weights = [per_tap(taps[0])]
        elif kind == "down":  # a 2x2 convolution of the space-to-depth map: channels (by, bx, in)
            taps = [[(ay, ax) for ay in range(2) for ax in range(2)]]
            blocks = scaled.view(scaled.shape[0], scaled.shape[1], 2, 2, 2, 2)  # [out, in, ay, by, ax, bx]
            per_block = blocks.permute(2, 4, 3, 5, 1, 0)  # [ay, ax, by, bx, in, out]
            weights = [per_block.reshape(4, -1, scaled.shape[0]).contiguous()]
        else:  # four 2x2 convolutions of the input padded by 1, one per output parity (py, px)
            taps, weights = [], []
            for rows, cols in itertools.product(_UP_TAPS, _UP_TAPS):
                taps.append([(dy, dx) for dy in rows for dx in cols])
                weights.append(per_tap([(rows[dy], cols[dx]) for dy, dx in taps[-1]]))
        return cls(kind, taps, weights, torch.from_numpy(low), torch.from_numpy(high))

    def __call__(self, x: Map) -> Map:
        h, w, c = x.shape
        if self.kind == "same" and len(self.taps[0]) == 1:  # 1x1: one GEMM over all positions
            out = torch.addmm(self.bias_low, x.reshape(-1, c), self.weights[0][0]).view(h, w, -1)
        elif self.kind == "same":
            r = self.taps[0][-1][0] // 2
            out = _taps(_pad(x, r, r, r, r), self.taps[0], self.weights[0], self.bias_low, h)[:, :w]
        elif self.kind == "down":
            padded = _pad(x, 1, 1, 1, 1)[: h + 2]  # [h + 2, w + 2, c], even sides
            s2d = padded.view(h // 2 + 1, 2, w // 2 + 1, 2, c).permute(0, 2, 1, 3, 4)
            s2d = _pad(s2d.reshape(h // 2 + 1, w // 2 + 1, 4 * c), 0, 0, 0, 0)
            out = _taps(s2d, self.taps[0], self.weights[0], self.bias_low, h // 2)[:, : w // 2]
        else:
            padded = _pad(x, 1, 1, 1, 1)
            out = x.new_empty(h, 2, w, 2, len(self.bias_low))
            for parity, (taps, weights) in enumerate(zip(self.taps, self.weights, strict=True)):
                py, px = divmod(parity, 2)
                out[:, py, :, px] = _taps(padded, taps, weights, self.bias_low, h)[:, :w]
            out = out.view(2 * h, 2 * w, -1)
        return out.floor_().add_(self.bias_high).clamp_(-ACT_MAX, ACT_MAX)


def _relu(x: Map) -> Map:
    return x.clamp(min=0)


@dataclasses.dataclass
class _Res:
    """``clamp(x + conv2(relu(conv1(relu(x)))))``: a VQ-VAE ResBlock."""

    conv1: IntegerConv
    conv2: IntegerConv

    def __call__(self, x: Map) -> Map:
        return (x + self.conv2(_relu(self.conv1(_relu(x))))).clamp_(-ACT_MAX, ACT_MAX)


Layer = Callable[[Map], Map]


def quantise_layers(net: nn.Module) -> list[Layer]:
    """The exact layers of an ``nn.Sequential`` of convolutions, ReLUs and ResBlocks, in order."""
    layers: list[Layer] = []
    for module in net:
        if isinstance(module, nn.ReLU):
            layers.append(_relu)
        elif isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
            layers.append(IntegerConv.from_float(module))
        elif isinstance(module, ResBlock):
            layers.append(_Res(IntegerConv.from_float(module.net[1]), IntegerConv.from_float(module.net[3])))
        else:
            raise ValueError(f"no exact form for {type(module).__name__}")
    return layers


def run_layers(layers: list[Layer], x: Map) -> Map:
    for layer in layers:
        x = layer(x)
    return x


def quantise_codebook(embedding: Tensor) -> Tensor:
    """A quantizer's codebook at FP, clamped: integer-valued float64 [K, D]."""
    table = np.rint(np.ldexp(embedding.detach().cpu().double().numpy(), FP))
    return torch.from_numpy(table).clamp_(-ACT_MAX, ACT_MAX)


def move_layers(obj: object, device: torch.device) -> object:
    """``obj`` (a tensor, a list, or a dataclass, changed in place) with every tensor on ``device``."""
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, list):
        return [move_layers(item, device) for item in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for field in dataclasses.fields(obj):
            setattr(obj, field.name, move_layers(getattr(obj, field.name), device))
    return obj


class ExactDecoder:
    """The integer pixel decoder of one float ``VQVAE`` (exact.md §10)."""

    def __init__(self, vqvae: VQVAE) -> None:
        self.config: VQVAEConfig = vqvae.config
        self._halo = vqvae.decode_halo()
        self.codebooks = [quantise_codebook(q.embedding) for q in vqvae.quantizers]
        self.upsamplers = [quantise_layers(upsampler) for upsampler in vqvae.upsamplers]
        self.decoder = quantise_layers(vqvae.decoder.net)
        self.device = torch.device("cpu")

    def to(self, device: torch.device | str) -> ExactDecoder:
        """This decoder with every tensor on ``device`` (in place)."""
        self.device = torch.device(device)
        for name in ("codebooks", "upsamplers", "decoder"):
            setattr(self, name, move_layers(getattr(self, name), self.device))
        return self

    @torch.inference_mode()
    def decode(self, codes: list[Tensor], part: Part | None = None) -> Tensor:
        """uint8 pixels [B, 3, H, W] of int64 code maps [B, h_l, w_l], top first, in parts of ``part``
        bottom-level codes (plus the halo the layers read; None: the whole map at once)."""

        def decode(maps: list[Tensor]) -> Tensor:
            return torch.stack([self.decode_maps([m[i] for m in maps]) for i in range(len(maps[0]))])

        return decode_in_parts(decode, codes, self.config, self._halo, part)

    def decode_maps(self, codes: list[Tensor]) -> Tensor:
        """uint8 pixels [3, H, W] of one image's int64 code maps [h_l, w_l], top first."""
        levels = [
            run_layers(up, book[c.to(self.device)])
            for up, book, c in zip(self.upsamplers, self.codebooks, codes, strict=True)
        ]
        return _pixels(run_layers(self.decoder, torch.cat(levels, dim=2))).permute(2, 0, 1)
