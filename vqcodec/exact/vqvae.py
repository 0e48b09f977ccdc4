"""The pixel decoder in integers (``exact.md`` §10): normative, so the decoded image is the same everywhere.

The integer mirror of ``models/vqvae.py``'s decoder (codes to pixels), in the priors' arithmetic
(§3, §5, §8) at ``FP`` fractional bits:

* every activation is an integer at ``FP`` clamped to ``|x| <= ACT_MAX``; every convolution rounds its
  input to 8 bits (unsigned after a ReLU) and has 8-bit weights with a scale per output channel;
* a convolution is a sum of one product per kernel tap on a zero-padded channels-last map: int8 x
  int8 -> int32 on the CPU, float64 GEMMs of the same integers elsewhere, exact whatever the BLAS,
  thread count or device. Transposed convolutions become stride-1 taps (one set per output parity),
  so no im2col, FFT or Winograd path is ever taken;
* ReLU, residual sums, clamps and the final rounding to 8-bit pixels are exact float64 operations on
  integers below ``2**53``.

The encoder's layers (§11: 16-bit inputs where its codes need them, also stride-2 convolutions)
are ``IntegerConv``s too; the rest of the encoder is in ``encoder.py``: a decoder needs none of it.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqcodec.exact import fused
from vqcodec.exact.arithmetic import ACT_MAX, Q_MAX, Q_MAX_UNSIGNED, Q_MAX_WIDE
from vqcodec.exact.gather import tap_sums
from vqcodec.exact.quantise import Ranges, input_range, int8_products, int_mm, quantise_rows8
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


def _pad(x: Map, top: int, bottom: int, left: int, right: int, zero: float = 0.0) -> Map:
    """``x`` with rows and columns of ``zero`` (how it stores 0) around it, and one more row below: the
    flat tap slices of the last output row read up to ``dx`` values past the padded map's end."""
    return F.pad(x, (0, 0, left, right, top, bottom + 1), value=zero)


_OFFSET = 128
"""An unsigned 8-bit value enters an int8 product as ``q - 128``."""

_UP_TAPS = ({1: 1, 0: 3}, {2: 0, 1: 2})
"""For a transposed 4x4 convolution with stride 2 and padding 1: output row ``2m + p`` reads the input
row ``m + dy - 1`` (``dy`` an offset into the input padded by one row) with kernel row
``_UP_TAPS[p][dy]``; columns alike."""


_INPUTS = ((-Q_MAX, Q_MAX), (0, Q_MAX_UNSIGNED), (-Q_MAX_WIDE, Q_MAX_WIDE), (0, Q_MAX_WIDE))
"""The inputs a layer may round to: signed and unsigned 8 bits (the decoder), 16 bits (the encoder;
from 0 after a ReLU, which that rounding then does: floor is monotone, so rounding relu(x) and clamping
to -32767 gives what rounding x and clamping to 0 gives)."""

MAX_FAN_IN_16 = 2**15
"""Largest fan-in of a layer with 16-bit inputs: its sums ``M acc`` then stay below ``2**15 * 127 *
32767 * 2**15 < 2**53`` units of ``2**-t``, exact in float64."""


@dataclasses.dataclass
class IntegerConv:
    """A quantised convolution (exact.md §10.1): ``kind`` "same" (k x k, stride 1, padding k // 2),
    "down" (4 x 4, stride 2, padding 1: the encoder's) or "up" (transposed 4 x 4, stride 2, padding 1),
    with 8-bit weights ``W_c``, a scale ``M_c 2**-t_c`` per output channel and inputs rounded to
    ``in_low .. in_high``: 8 bits in the decoder (§3.2; 0..255 after a ReLU), 16 in the encoder (§11).

    Its products are int8 x int8 -> int32 where the device has them: an unsigned 8-bit input enters
    as ``q - 128``, a 16-bit one as two such limbs ``q = 256 hi + lo``; the ``128 sum W`` this takes
    off is in ``starts``, where each list of taps' sums starts: ``(128 sum W) M 2**-t + low 2**-t``.
    Elsewhere float64 GEMMs of ``q`` with ``W_c M_c 2**-t_c`` start from ``low 2**-t``. Either way
    every sum is an integer times ``2**-t_c`` below ``2**53`` of them: exact."""

    kind: str
    taps: list[list[tuple[int, int]]]  # per output parity for "up", else one list
    weights: list[Tensor]  # float64 [taps, in, out] per list of taps: W_c M_c 2**-t_c
    weights8: list[Tensor]  # int8 [taps, in, out] per list of taps: W_c
    starts: list[Tensor]  # float64 [out] per list of taps, for int8 products
    scale: Tensor  # float64 [out]: M_c 2**-t_c
    bias_low: Tensor  # float64 [out]: low 2**-t_c
    bias_high: Tensor  # float64 [out]
    in_scale: float  # m 2**-t
    in_low: int
    in_high: int

    @classmethod
    def from_float(
        cls, conv: nn.Conv2d | nn.ConvTranspose2d, in_range: int, in_low: int = -Q_MAX, in_high: int = Q_MAX
    ) -> IntegerConv:
        """The layer of ``conv`` for inputs of range ``in_range`` (at FP) rounded to ``in_low ..
        in_high``: -127..127, 0..255 or -32767..32767."""
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
        if (in_low, in_high) not in _INPUTS:
            raise ValueError(f"inputs {in_low}..{in_high} are none of {_INPUTS}")
        if in_high > Q_MAX_UNSIGNED and weight[0].numel() > MAX_FAN_IN_16:
            raise ValueError(f"a layer with 16-bit inputs has a fan-in of at most {MAX_FAN_IN_16}")
        rows = weight.flatten(1).numpy()
        q = quantise_rows8(rows, conv.bias.detach().cpu().double().numpy(), FP, in_range, in_high)
        scale, bias_low = torch.from_numpy(q.scale), torch.from_numpy(q.bias_low)
        shape = weight.shape
        taps, (weights, integers) = cls._layout(
            kind, k, [torch.from_numpy(q.scaled).view(shape), torch.from_numpy(q.weight).view(shape)]
        )
        offset = _OFFSET if in_low >= 0 or in_high > Q_MAX_UNSIGNED else 0  # unsigned, or a low limb
        return cls(
            kind,
            taps,
            weights,
            [w.to(torch.int8) for w in integers],
            [(offset * w.sum((0, 1))) * scale + bias_low for w in integers],
            scale,
            bias_low,
            torch.from_numpy(q.bias_high),
            math.ldexp(q.in_multiplier, -q.in_shift),
            in_low,
            in_high,
        )

    @staticmethod
    def _layout(
        kind: str, k: int, matrices: list[Tensor]
    ) -> tuple[list[list[tuple[int, int]]], list[list[Tensor]]]:
        """The taps, and each of ``matrices`` ([out, in, kh, kw]) as [taps, in, out] per list of taps."""

        def per_tap(scaled: Tensor, kernel_offsets: list[tuple[int, int]]) -> Tensor:  # [taps, in, out]
            return torch.stack([scaled[:, :, ky, kx].t() for ky, kx in kernel_offsets])

        if kind == "same":
            taps = [[(ky, kx) for ky in range(k) for kx in range(k)]]
            return taps, [[per_tap(m, taps[0])] for m in matrices]
        if kind == "down":  # a 2x2 convolution of the space-to-depth map: channels (by, bx, in)
            out = []
            for m in matrices:
                blocks = m.reshape(m.shape[0], m.shape[1], 2, 2, 2, 2)  # [out, in, ay, by, ax, bx]
                per_block = blocks.permute(2, 4, 3, 5, 1, 0)  # [ay, ax, by, bx, in, out]
                out.append([per_block.reshape(4, -1, m.shape[0]).contiguous()])
            return [[(ay, ax) for ay in range(2) for ax in range(2)]], out
        # four 2x2 convolutions of the input padded by 1, one per output parity (py, px)
        taps = [
            [(dy, dx) for dy in rows for dx in cols] for rows, cols in itertools.product(_UP_TAPS, _UP_TAPS)
        ]
        kernel = [
            [(rows[dy], cols[dx]) for dy, dx in parity_taps]
            for (rows, cols), parity_taps in zip(itertools.product(_UP_TAPS, _UP_TAPS), taps, strict=True)
        ]
        return taps, [[per_tap(m, offsets) for offsets in kernel] for m in matrices]

    def _operands(self, x: Map) -> list[tuple[Map, float, float]]:
        """The maps the products take, each with its factor and how it stores 0: the rounded input, or
        for int8 products its int8 limbs (one 8-bit value; a 16-bit one's ``hi`` and ``lo - 128``)."""
        if fused.available(x.device):
            return self._int8_operands(*fused.conv_inputs(x, self.in_scale, self.in_low, self.in_high))
        q = x.mul(self.in_scale).add_(0.5).floor_().clamp_(self.in_low, self.in_high)
        if not int8_products(q.device):
            return [(q, 1.0, 0.0)]
        if self.in_high <= Q_MAX:
            return [(q.to(torch.int8), 1.0, 0.0)]
        if self.in_high == Q_MAX_UNSIGNED:
            return [(q.sub_(_OFFSET).to(torch.int8), 1.0, -_OFFSET)]
        high = q.mul(1 / 256).floor_()
        low = q.sub_(high * 256).sub_(_OFFSET)
        return [(high.to(torch.int8), 256.0, 0.0), (low.to(torch.int8), 1.0, -_OFFSET)]

    def _int8_operands(self, a: Map, b: Map | None) -> list[tuple[Map, float, float]]:
        """``_operands`` of the int8 maps ``fused.conv_inputs`` gives."""
        if b is not None:
            return [(a, 256.0, 0.0), (b, 1.0, -_OFFSET)]
        return [(a, 1.0, -_OFFSET if self.in_low >= 0 else 0.0)]

    def _sums(self, x: Map, zero: float, height: int, width: int) -> list[Tensor]:
        """Each list of taps' sums [height', width', out] over the operand map ``x``: int32 for an int8
        map, else float64 from ``bias_low``."""
        c = x.shape[2]
        weights = self.weights8 if x.dtype == torch.int8 else self.weights
        if self.kind == "same" and len(self.taps[0]) == 1:  # 1x1: one product over all positions
            flat = x.reshape(-1, c)
            if x.dtype == torch.int8:
                return [int_mm(flat, weights[0][0]).view(height, width, -1)]
            return [torch.addmm(self.bias_low, flat, weights[0][0]).view(height, width, -1)]
        if self.kind == "same":
            r = self.taps[0][-1][0] // 2
            padded = _pad(x, r, r, r, r, zero)
            return [self._tap_sums(padded, self.taps[0], weights[0], height)[:, :width]]
        if self.kind == "down":
            padded = _pad(x, 1, 1, 1, 1, zero)[: height + 2]  # [h + 2, w + 2, c], even sides
            s2d = padded.view(height // 2 + 1, 2, width // 2 + 1, 2, c).permute(0, 2, 1, 3, 4)
            s2d = _pad(s2d.reshape(height // 2 + 1, width // 2 + 1, 4 * c), 0, 0, 0, 0, zero)
            return [self._tap_sums(s2d, self.taps[0], weights[0], height // 2)[:, : width // 2]]
        padded = _pad(x, 1, 1, 1, 1, zero)
        return [
            self._tap_sums(padded, taps, parity_weights, height)[:, :width]
            for taps, parity_weights in zip(self.taps, weights, strict=True)
        ]

    def _tap_sums(self, padded: Map, taps: list[tuple[int, int]], weights: Tensor, height: int) -> Tensor:
        """``tap_sums``, in the compiled kernels' products where they take the map."""
        fits = fused.tap_products_fit(padded.shape[2], len(taps))
        if padded.dtype == torch.int8 and fits and fused.available(padded.device):
            return fused.tap_products(padded, taps, weights, height)
        return tap_sums(padded, taps, weights, self.bias_low, height)

    def __call__(self, x: Map) -> Map:
        h, w, _ = x.shape
        operands = self._operands(x)
        if fused.available(x.device):  # each operand's sums, scaled, added and rounded in one pass
            return self._fused_outputs(operands, h, w)
        if operands[0][0].dtype != torch.int8:  # one float64 map: sums started from the bias
            parts = self._sums(operands[0][0], 0.0, h, w)
        else:  # each int8 limb's int32 sums times its factor (factor M acc 2**-t: exact), plus the starts
            parts = list(self.starts)
            for operand, factor, zero in operands:
                scale = self.scale * factor
                sums = self._sums(operand, zero, h, w)
                parts = [s.double().mul_(scale).add_(part) for s, part in zip(sums, parts, strict=True)]
        if self.kind == "up":
            out = torch.stack(parts, dim=2).view(h, w, 2, 2, -1).permute(0, 2, 1, 3, 4)
            out = out.reshape(2 * h, 2 * w, -1)
        else:
            out = parts[0]
        return out.floor_().add_(self.bias_high).clamp_(-ACT_MAX, ACT_MAX)

    def _fused_outputs(self, operands: list[tuple[Map, float, float]], h: int, w: int) -> Map:
        """``__call__``'s outputs from the int8 operands, their rounding in ``fused``'s kernel."""
        out = torch.empty(self._output_shape(h, w), dtype=torch.float64)
        self._round_into(operands, h, w, out)
        return out

    def _reader_operands(
        self, operands: list[tuple[Map, float, float]], h: int, w: int, reader: IntegerConv
    ) -> list[tuple[Map, float, float]]:
        """``reader._operands(self._fused_outputs(operands, h, w))`` for the convolution that alone
        reads the outputs, rounded in the same pass: the float64 map between (8 bytes a value, in fresh
        memory whose page faults cost more than the rounding) is never stored."""
        shape = self._output_shape(h, w)
        a = torch.empty(shape, dtype=torch.int8)
        b = torch.empty(shape, dtype=torch.int8) if reader.in_high > Q_MAX_UNSIGNED else None  # two limbs
        self._round_into(
            operands, h, w, fused.NextInputs(a, b, reader.in_scale, reader.in_low, reader.in_high)
        )
        return reader._int8_operands(a, b)

    def _output_shape(self, h: int, w: int) -> tuple[int, int, int]:
        size = (2 * h, 2 * w) if self.kind == "up" else (h // 2, w // 2) if self.kind == "down" else (h, w)
        return (*size, self.scale.shape[0])

    def _round_into(
        self, operands: list[tuple[Map, float, float]], h: int, w: int, out: Map | fused.NextInputs
    ) -> None:
        """The int8 operands' sums, scaled, added and rounded into ``out`` (``fused.conv_outputs``)."""
        sums = [self._sums(operand, zero, h, w) for operand, _, zero in operands]
        scales = [self.scale * factor for _, factor, _ in operands]
        if self.kind != "up":
            fused.conv_outputs([part[0] for part in sums], scales, self.starts[0], self.bias_high, out)
            return
        for parity, start in enumerate(self.starts):  # output rows 2y + py, columns 2x + px
            py, px = divmod(parity, 2)
            parts = [part[parity] for part in sums]
            fused.conv_outputs(parts, scales, start, self.bias_high, _parity(out, py, px))


def _parity(out: Map | fused.NextInputs, py: int, px: int) -> Map | fused.NextInputs:
    """The rows ``2y + py`` and columns ``2x + px`` of a map, or of each operand map."""
    if isinstance(out, fused.NextInputs):
        b = None if out.b is None else out.b[py::2, px::2]
        return out._replace(a=out.a[py::2, px::2], b=b)
    return out[py::2, px::2]


def _relu(x: Map) -> Map:
    return x.clamp(min=0)


def _relu_into(conv: IntegerConv, x: Map) -> Map:
    """``relu(x)`` as ``conv``'s input: ``x`` itself where its inputs are unsigned, whose rounding
    clamps at 0 anyway."""
    return x if conv.in_low == 0 else _relu(x)


@dataclasses.dataclass
class _Res:
    """``clamp(x + conv2(relu(conv1(relu(x)))))``: a VQ-VAE ResBlock."""

    conv1: IntegerConv
    conv2: IntegerConv  # inputs unsigned: its rounding is the ReLU before it

    def __call__(self, x: Map) -> Map:
        h = run_layers([self.conv1, self.conv2], _relu_into(self.conv1, x))
        return h.add_(x).clamp_(-ACT_MAX, ACT_MAX)  # into conv2's outputs: no new map


Layer = Callable[[Map], Map]


def quantise_layers(net: nn.Module, ranges: Ranges, name: str, wide: bool = False) -> list[Layer]:
    """The exact layers of an ``nn.Sequential`` of convolutions, ReLUs and ResBlocks, in order, with
    the input ``ranges`` of its convolutions (at FP, by module name under ``name``): 8-bit inputs,
    unsigned after a ReLU (the decoder's, normative), or for the plain convolutions ``wide`` 16-bit
    ones (the encoder's: a ResBlock's keep 8 bits, exact.md §11). A ReLU whose only reader is a
    convolution is left to that convolution's rounding, which clamps at 0."""

    def conv(module: nn.Module, module_name: str, after_relu: bool, wide: bool = wide) -> IntegerConv:
        in_range = input_range(ranges, f"{name}{module_name}", FP)
        high = Q_MAX_WIDE if wide else Q_MAX_UNSIGNED if after_relu else Q_MAX
        return IntegerConv.from_float(module, in_range, 0 if after_relu else -high, high)

    layers: list[Layer] = []
    modules = list(net)
    for i, module in enumerate(modules):
        if isinstance(module, nn.ReLU):
            if i + 1 == len(modules) or not isinstance(modules[i + 1], nn.Conv2d | nn.ConvTranspose2d):
                layers.append(_relu)  # else the next layer's rounding clamps at 0 (_relu_into)
        elif isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
            layers.append(conv(module, f"{i}", i > 0 and isinstance(modules[i - 1], nn.ReLU)))
        elif isinstance(module, ResBlock):  # net: ReLU, conv1, ReLU, conv2
            conv1 = conv(module.net[1], f"{i}.net.1", True, wide=False)
            conv2 = conv(module.net[3], f"{i}.net.3", True, wide=False)
            layers.append(_Res(conv1, conv2))
        else:
            raise ValueError(f"no exact form for {type(module).__name__}")
    return layers


def run_layers(layers: list[Layer], x: Map) -> Map:
    """The ``layers`` in turn on ``x``. With the compiled kernels, a convolution that only the next one
    reads (a ReLU between them is the reader's rounding) hands it its int8 operands, not a map."""
    operands = None  # this layer's, where the one before handed them on
    for layer, after in itertools.zip_longest(layers, layers[1:]):  # after: None past the last
        if not isinstance(layer, IntegerConv):
            x = layer(x)
            continue
        reader = after if isinstance(after, IntegerConv) and fused.available(x.device) else None
        if operands is None and reader is None:
            x = layer(x)
            continue
        if operands is None:
            operands = layer._operands(x)
        h, w = operands[0][0].shape[:2]
        if reader is not None:
            operands = layer._reader_operands(operands, h, w, reader)
        else:
            x, operands = layer._fused_outputs(operands, h, w), None
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

    def __init__(self, vqvae: VQVAE, ranges: Ranges | None = None) -> None:
        """The decoder of ``vqvae`` whose convolutions' inputs have ``ranges`` (at FP, by module name in
        ``vqvae``; ``DEFAULT_RANGE`` where none is given)."""
        ranges = ranges or {}
        self.config: VQVAEConfig = vqvae.config
        self._halo = vqvae.decode_halo()
        self.codebooks = [quantise_codebook(q.embedding) for q in vqvae.quantizers]
        self.upsamplers = [
            quantise_layers(upsampler, ranges, f"upsamplers.{level}.")
            for level, upsampler in enumerate(vqvae.upsamplers)
        ]
        self.decoder = quantise_layers(vqvae.decoder.net, ranges, "decoder.net.")
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
