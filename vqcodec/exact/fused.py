"""The elementwise work between the integer products, in single passes of compiled code (execution,
not normative).

A wavefront step on the CPU is small matrices: a few hundred positions of 64 to 512 channels. Done as
torch calls, each layer's rounding, clamps, lookups, gate and stores are a dozen calls, and these,
not the int8 products between them, took most of a decode. ``_kernels.c`` computes each such chain
in one pass over the same integers: the rounding of a layer's int32 sums (``Linear.finish``), the
8-bit inputs of the next layer (``Linear.quantise_elu``) written straight into a cache, a gated
block's end (``gated_residual``), the attention's averages (``attention_rows``) and the frequency
tables (``float_frequencies``); on whole maps, a VQ-VAE convolution's int8 operands and its rounding
(``IntegerConv``), split over threads. Between these calls the products stay torch's (``int_mm``);
``StepProgram`` goes further and runs a prior's whole step (or an encoder's band) in one call, its
int8 products in the kernels too, its positions split over threads.

The extension is built by ``pip install`` where a C compiler is found (``pyproject.toml``); without
it, ``available`` is false and the same torch calls run as on other devices. Tests check that both
give the same tables, codes and pixels.
"""

from __future__ import annotations

import functools
import warnings
import weakref
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from vqcodec.coding.entropy import PRECISION
from vqcodec.exact.arithmetic import ACT_MAX, FA, P_BITS, Q_MAX, TABLE_SIZE, tables_on
from vqcodec.exact.arithmetic import exp_table as exp_table_on
from vqcodec.exact.gather import tap_sums
from vqcodec.exact.quantise import Linear, int8_products, int_mm

KERNELS_VERSION = 11
"""The version of ``_kernels.c`` that this module calls: an editable install's extension built from
older sources (before a ``pip install -e .`` again) is left unused, with a warning."""

try:
    from vqcodec.exact import _kernels
except ImportError:  # built without a C compiler
    _kernels = None

if _kernels is not None and getattr(_kernels, "VERSION", None) != KERNELS_VERSION:
    warnings.warn(
        "vqcodec's compiled kernels are out of date (run pip install again): using torch calls instead",
        RuntimeWarning,
        stacklevel=1,
    )
    _kernels = None
if _kernels is not None and _kernels.ACT_MAX != ACT_MAX:
    raise ImportError(f"vqcodec.exact._kernels was built for ACT_MAX {_kernels.ACT_MAX}, not {ACT_MAX}")

_CPU = torch.device("cpu")


def _require(condition: bool, what: str = "") -> None:
    """A compiled kernel's precondition on its arguments, checked even under ``python -O`` (where an
    ``assert`` is not): a kernel called against it would read or write outside its buffers."""
    if not condition:
        raise RuntimeError(f"a compiled kernel's precondition does not hold{': ' + what if what else ''}")


def available(device: torch.device) -> bool:
    """Whether steps on ``device`` run through the compiled kernels: the CPU, with int8 products."""
    return _kernels is not None and device.type == "cpu" and int8_products(device)


def describe() -> str:
    """One line for ``vqcodec --version``: whether the compiled kernels run, and their products."""
    if _kernels is None:
        return (
            "compiled kernels: not in use (not built, or out of date: pip install again with a C compiler);"
            " the same integers come from torch calls, about 3 times as slowly"
        )
    products = "AVX-512 VNNI" if _kernels.use_vnni(True) else "a plain loop (no AVX-512 VNNI here)"
    return f"compiled kernels: in use on the CPU, int8 products with {products}"


def use_vnni(allowed: bool) -> bool:
    """Whether the kernels' int8 products may use AVX-512 VNNI where the CPU has it (True unless a
    test compares them with the plain loop); returns whether they do now."""
    return _kernels.use_vnni(allowed)


def _rounding(layer: Linear) -> tuple[int, int, int]:
    return layer.scale.data_ptr(), layer.bias_low.data_ptr(), layer.bias_high.data_ptr()


_WIDE_ELU_INPUTS: dict[int, Tensor] = {}
"""Each layer's ``elu_inputs`` as int32, by the id of the int8 table while it lives: the kernels
gather int32 entries."""


def _elu_inputs(layer: Linear) -> tuple[int, float, float]:
    table = layer.elu_inputs
    _require(table is not None, "a layer with_elu_inputs")
    wide = _WIDE_ELU_INPUTS.get(id(table))
    if wide is None:
        wide = _WIDE_ELU_INPUTS[id(table)] = table.to(torch.int32)
        weakref.finalize(table, _WIDE_ELU_INPUTS.pop, id(table), None)
    return wide.data_ptr(), float(TABLE_SIZE), float(len(table) - 1 - TABLE_SIZE)


@functools.cache
def _sigmoid() -> Tensor:
    """The sigmoid table of exact.md §4 as float64 (integers below 2**11)."""
    return tables_on(_CPU)[1].double()


Sums = Tensor | tuple[Tensor, ...]
"""A layer's int32 sums [n, C]: one tensor, or the two parts that a product per kernel row gives."""


def _sums(sums: Sums) -> tuple[int, int, int, int]:
    """The pointers of the sums' one or two parts (0: none) and their shape."""
    parts = sums if isinstance(sums, tuple) else (sums,)
    _require(1 <= len(parts) <= 2)
    for part in parts:
        _require(part.dtype == torch.int32 and part.is_contiguous() and part.shape == parts[0].shape)
    n, c = parts[0].shape
    return parts[0].data_ptr(), parts[1].data_ptr() if len(parts) == 2 else 0, n, c


def _pointer(tensor: Tensor | None, dtype: torch.dtype) -> int:
    """A contiguous tensor's data pointer for the kernels (0: None), its dtype checked."""
    if tensor is None:
        return 0
    _require(tensor.dtype == dtype and tensor.is_contiguous())
    return tensor.data_ptr()


def _rows(dst: Tensor) -> tuple[int, int]:
    """The pointer and row stride of an int8 [n, C] view with contiguous rows (a cache's cells)."""
    _require(dst.dtype == torch.int8 and dst.stride(1) == 1)
    return dst.data_ptr(), dst.stride(0)


def elu_store(layer: Linear, x: Tensor, dst: Tensor, mask: Tensor | None = None) -> None:
    """``dst = layer.quantise_elu(x)`` (times ``mask``, float64 [n, 1] of 0 and 1, if given), for
    contiguous float64 activations ``x`` [n, C] and an int8 view ``dst`` [n, C]."""
    _require(x.dtype == torch.float64 and x.is_contiguous() and dst.shape == x.shape)
    n, c = x.shape
    _kernels.elu_store(x.data_ptr(), n, c, *_elu_inputs(layer), *_rows(dst), _pointer(mask, torch.float64))


def finish_elu_store(
    layer: Linear, sums: Sums, reader: Linear, dst: Tensor, mask: Tensor | None = None
) -> None:
    """``dst = reader.quantise_elu(layer.finish(sums))`` (times ``mask``), from ``layer``'s int32
    sums [n, C]."""
    mask_ptr = _pointer(mask, torch.float64)
    _kernels.finish_elu_store(*_sums(sums), *_rounding(layer), *_elu_inputs(reader), *_rows(dst), mask_ptr)


def finish(
    layer: Linear,
    sums: Sums,
    out: Tensor | None = None,
    residual: bool = False,
    mask: Tensor | None = None,
) -> Tensor:
    """``layer.finish(sums)`` (times ``mask``) into float64 ``out`` [n, C] with contiguous rows (a new
    tensor if None: a cache's cells, say), or with ``residual`` ``out = clamp(out + layer.finish(sums))``."""
    acc, more, n, c = _sums(sums)
    if out is None:
        out = torch.empty(n, c, dtype=torch.float64)
    _require(out.dtype == torch.float64 and out.shape == (n, c) and out.stride(1) == 1)
    mask_ptr = _pointer(mask, torch.float64)
    _kernels.finish_to(acc, more, n, c, *_rounding(layer), out.data_ptr(), out.stride(0), mask_ptr, residual)
    return out


def linear(layer: Linear, x: Tensor) -> Tensor:
    """The int32 sums of ``layer`` (a 1x1 convolution) at contiguous float64 activations ``x`` [n, C]."""
    _require(x.dtype == torch.float64 and x.is_contiguous())
    n, c = x.shape
    q = torch.empty(n, c, dtype=torch.int8)
    _kernels.quantise(x.data_ptr(), n, c, layer.in_scale, float(Q_MAX), q.data_ptr())
    return int_mm(q, layer.weight8)


def attend(query: Tensor, heads: int, keys: Tensor, values: Tensor, shifts: Tensor, valid: Tensor) -> Tensor:
    """``attention_rows``' averages [n, C] of queries ``query`` [n, C] (contiguous float64): ``keys`` is
    a float64 cache's view [n, C] (a wavefront's cells) or [h, w, C] (a band's), each query's cell,
    and its key at window offset o lies ``shifts[o]`` values (int64 [n_off]) after it (``values``
    alike, the same layout); ``valid`` [n, n_off] says which offsets lie on the map."""
    n, c = query.shape
    _require(query.dtype == keys.dtype == values.dtype == torch.float64 and query.is_contiguous())
    _require(keys.stride() == values.stride() and keys.stride(-1) == 1 and valid.shape == (n, len(shifts)))
    _require(valid.dtype == torch.bool and valid.is_contiguous() and shifts.dtype == torch.int64)
    cols, col_stride = (keys.shape[1], keys.stride(1)) if keys.dim() == 3 else (1, 0)
    out = torch.empty(n, c, dtype=torch.float64)
    _kernels.attend(
        query.data_ptr(),
        n,
        c,
        heads,
        keys.data_ptr(),
        values.data_ptr(),
        cols,
        keys.stride(0),
        col_stride,
        shifts.data_ptr(),
        len(shifts),
        valid.data_ptr(),
        exp_table_on(_CPU).data_ptr(),
        TABLE_SIZE,
        FA,
        P_BITS,
        out.data_ptr(),
    )
    return out


def finish_gate(layer: Linear, sums: Sums, cond: Tensor | None, rows: Tensor | None, x: Tensor) -> Tensor:
    """``x = gated_residual(x, h)`` in place, with ``h = layer.finish(sums)`` ([n, 2C]), or where the
    block is conditioned ``h = clamp(h + cond[rows])`` (float32 ``cond``, int64 ``rows``)."""
    acc, more, n, width = _sums(sums)
    _require(x.dtype == torch.float64 and x.shape == (n, width // 2) and x.is_contiguous())
    _require(cond is None or (cond.dtype == torch.float32 and cond.is_contiguous() and rows is not None))
    _require(rows is None or (rows.dtype == torch.int64 and rows.shape == (n,) and rows.is_contiguous()))
    cond_ptr, rows_ptr = (0, 0) if cond is None or rows is None else (cond.data_ptr(), rows.data_ptr())
    _kernels.finish_gate(
        acc,
        more,
        n,
        width // 2,
        *_rounding(layer),
        cond_ptr,
        rows_ptr,
        _sigmoid().data_ptr(),
        TABLE_SIZE,
        FA,
        x.data_ptr(),
    )
    return x


def frequencies(layer: Linear, sums: Sums, out: np.ndarray | None = None) -> np.ndarray:
    """``float_frequencies(layer.finish(sums))`` as int64 [n, K] (into C-contiguous ``out`` if given):
    the frequency tables of the logits whose int32 sums are ``sums``."""
    acc, more, n, k = _sums(sums)
    if out is None:
        out = np.empty((n, k), dtype=np.int64)
    _require(out.shape == (n, k) and out.dtype == np.int64 and out.flags.c_contiguous)
    exp_table = exp_table_on(_CPU)
    _kernels.frequencies(
        acc,
        more,
        n,
        k,
        *_rounding(layer),
        exp_table.data_ptr(),
        TABLE_SIZE,
        PRECISION,
        out.ctypes.data,
        torch.get_num_threads(),
    )
    return out


def conv_inputs(x: Tensor, scale: float, low: int, high: int) -> tuple[Tensor, Tensor | None]:
    """A VQ-VAE convolution's int8 operands of float64 activations ``x`` [H, W, C]: ``q = clamp(floor(x
    scale + 1/2), low, high)`` as int8 (8 bits signed), ``q - 128`` (unsigned: ``low`` 0), or the limbs
    ``hi``, ``lo - 128`` of ``q = 256 hi + lo`` (16 bits: ``high`` above 255). A large map is split over
    torch's number of threads, as the kernels of ``conv_outputs``."""
    x = x.contiguous()
    mode = _input_mode(low, high)
    a = torch.empty(x.shape, dtype=torch.int8)
    b = torch.empty(x.shape, dtype=torch.int8) if mode == 2 else None
    _kernels.conv_inputs(
        x.data_ptr(),
        x.numel(),
        scale,
        float(low),
        float(high),
        mode,
        a.data_ptr(),
        0 if b is None else b.data_ptr(),
        torch.get_num_threads(),
    )
    return a, b


def _input_mode(low: int, high: int) -> int:
    """How ``conv_inputs`` stores inputs of ``low .. high``: 0 as int8, 1 as q - 128, 2 as two limbs."""
    return 2 if high > 255 else 1 if low == 0 else 0


class NextInputs(NamedTuple):
    """The int8 operands (``conv_inputs``' ``a`` and ``b`` or None, rounded by ``scale``, ``low``,
    ``high``) of the convolution that reads a convolution's outputs, for ``conv_outputs`` to write."""

    a: Tensor
    b: Tensor | None
    scale: float
    low: int
    high: int


def conv_outputs(
    sums: list[Tensor], scales: list[Tensor], start: Tensor, high: Tensor, out: Tensor | NextInputs
) -> None:
    """``out = clamp(floor(sum_i sums[i] scales[i] + start) + high)`` per channel, for one or two int32
    sums [h, w, C] with contiguous positions (rows of any stride) and a float64 view ``out`` [h, w, C]
    whose channels are contiguous; or, for ``NextInputs``, the int8 operands of those outputs (views [h,
    w, C] alike) instead: the outputs themselves are never stored."""
    a, b = sums[0], sums[1] if len(sums) == 2 else None
    rows, cols, c = a.shape
    _require(a.dtype == torch.int32 and a.stride()[1:] == (c, 1) and (b is None or b.stride() == a.stride()))
    nxt = out if isinstance(out, NextInputs) else None
    target = nxt.a if nxt else out
    _require(target.dtype == (torch.int8 if nxt else torch.float64) and target.shape == a.shape)
    _require(target.stride(2) == 1 and (nxt is None or nxt.b is None or nxt.b.stride() == target.stride()))
    _kernels.conv_outputs(
        a.data_ptr(),
        0 if b is None else b.data_ptr(),
        rows,
        cols,
        c,
        a.stride(0),
        scales[0].data_ptr(),
        scales[-1].data_ptr(),
        start.data_ptr(),
        high.data_ptr(),
        0 if nxt else target.data_ptr(),
        target.stride(0),
        target.stride(1),
        nxt.scale if nxt else 0.0,
        float(nxt.low) if nxt else 0.0,
        float(nxt.high) if nxt else 0.0,
        _input_mode(nxt.low, nxt.high) if nxt else 0,
        target.data_ptr() if nxt else 0,
        nxt.b.data_ptr() if nxt and nxt.b is not None else 0,
        torch.get_num_threads(),
    )


def tap_products(padded: Tensor, taps: list[tuple[int, int]], weights: Tensor, height: int) -> Tensor:
    """``gather.tap_sums`` of an int8 map ``padded`` [H, W, C] and int8 ``weights`` [taps, C, out] (or
    [taps C, out]; a tensor that lives on, whose packing is kept): the int32 sums [height, W, out] of the
    taps' flat slices, in the kernels' products (no copies of the slices, no sum of a product per tap),
    split over torch's threads. C a multiple of 4, at most 16 taps (``tap_products_fit``)."""
    _, width, c = padded.shape
    _require(padded.dtype == weights.dtype == torch.int8 and padded.is_contiguous())
    _require(tap_products_fit(c, len(taps)) and weights.numel() == len(taps) * c * weights.shape[-1])
    packed, bias = _packed(weights)
    out_channels = weights.shape[-1]
    shifts = torch.tensor([dy * width + dx for dy, dx in taps], dtype=torch.int64)
    out = torch.empty(height, width, out_channels, dtype=torch.int32)
    _kernels.tap_product(
        padded.data_ptr(),
        height * width,
        c,
        len(taps),
        shifts.data_ptr(),
        packed.data_ptr(),
        out_channels,
        packed.shape[1],
        bias.data_ptr(),
        out.data_ptr(),
        torch.get_num_threads(),
    )
    return out


def tap_products_fit(channels: int, taps: int) -> bool:
    """Whether ``tap_products`` takes maps of ``channels`` channels read at ``taps`` taps."""
    return _kernels is not None and channels % 4 == 0 and 1 <= taps <= 16


def elu_conv(layer: Linear, x: Tensor, height: int, width: int, maps: int = 1) -> Tensor:
    """A zero-padded 3x3 ``layer`` (taps row-major, ``with_elu_inputs``) reading ``elu(x)`` of contiguous
    float64 activations ``x`` [maps height width, C] of ``maps`` maps one after the other: float64
    [maps height width, out]. The 8-bit inputs of the maps, each padded, stacked into one tall map,
    then the products of its taps on flat slices of it (``tap_products``, else ``gather.tap_sums``):
    the two rows of outputs between two maps are computed and dropped."""
    c, out_channels = x.shape[1], layer.weight8.shape[1]
    q = torch.empty(maps * height * width, c, dtype=torch.int8)
    elu_store(layer, x, q)
    rows = maps * (height + 2)  # each map's rows, padded above and below
    padded = torch.zeros(rows + 1, width + 2, c, dtype=torch.int8)  # + 1: the last slices run on
    padded[:rows].view(maps, height + 2, width + 2, c)[:, 1:-1, 1:-1] = q.view(maps, height, width, c)
    taps = [(dy, dx) for dy in range(3) for dx in range(3)]
    if tap_products_fit(c, len(taps)):
        sums = tap_products(padded, taps, layer.weight8, rows - 2)
    else:
        sums = tap_sums(padded, taps, layer.weight8.view(len(taps), c, -1), layer.bias_low, rows - 2)
    out = torch.empty(rows, width, out_channels, dtype=torch.float64)
    conv_outputs([sums[:, :width]], [layer.scale], layer.bias_low, layer.bias_high, out[: rows - 2])
    return out.view(maps, height + 2, width, out_channels)[:, :height].reshape(-1, out_channels).contiguous()


_PACKED: dict[int, tuple[Tensor, Tensor]] = {}
"""Each layer's weight packed for the kernels' products (``_packed``), by the id of its int8 weight
while it lives."""

_HEADS_OFFSETS_MOST = 1024
"""Heads times window offsets that ``_kernels.step`` holds room for."""


def _packed(weight: Tensor) -> tuple[Tensor, Tensor]:
    """An int8 weight [..., k, n] (its rows: all but the last dimension) as the kernels' products read it,
    [k / 4, np, 4] with np = n rounded up to 16 (zero columns past n), and 128 times the sum of each
    column (int32 [np])."""
    packed = _PACKED.get(id(weight))
    if packed is None:
        rows = weight.reshape(-1, weight.shape[-1])
        k, n = rows.shape
        np_ = -(-n // 16) * 16
        padded = torch.zeros(k, np_, dtype=torch.int8)
        padded[:, :n] = rows
        bias = torch.zeros(np_, dtype=torch.int32)
        bias[:n] = rows.sum(0, dtype=torch.int32) * 128
        packed = _PACKED[id(weight)] = (padded.view(k // 4, 4, np_).permute(0, 2, 1).contiguous(), bias)
        weakref.finalize(weight, _PACKED.pop, id(weight), None)
    return packed


def _bits(value: float) -> int:
    """The int64 whose bits are the float64 ``value``'s: how a program holds its doubles."""
    return int(np.array(value, dtype=np.float64).view(np.int64))


class StepProgram:
    """A prior's layers at a wavefront, written once per stepper as a program that ``_kernels.step``
    runs in one call per step: the calls of ``stepper._fused_freqs``, in the same order on the same
    integers, with the int8 products in the kernels too, so that nothing returns to Python between
    the layers of a step.

    The words hold pointers to caches, tables and packed weights, which the program keeps alive. It
    runs at a wavefront or at a band of whole rows (an encoder's), wherever the sites' cells lie.
    """

    @staticmethod
    def fits(channels: int, heads_offsets: int) -> bool:
        """Whether a prior of ``channels`` channels and attention windows of ``heads_offsets`` heads
        times offsets runs as a program (the products read their inputs four bytes at a time)."""
        return _kernels is not None and channels % 4 == 0 and heads_offsets <= _HEADS_OFFSETS_MOST

    def __init__(self, channels: int, codebook_size: int, rows_apart: bool):
        """``rows_apart``: no convolution reads another position of the same wavefront (its taps lie
        on earlier steps, or at the position itself), so that the threads that share a wavefront's
        positions need not wait for each other before each convolution (they do before an attention:
        its window reaches rows above on the same wavefront)."""
        exp_table, sigmoid = exp_table_on(_CPU), _sigmoid()
        self._words = [channels, 0, codebook_size, exp_table.data_ptr(), TABLE_SIZE]
        self._words += [sigmoid.data_ptr(), TABLE_SIZE, FA, P_BITS, PRECISION]
        self._keep: list[Tensor] = [exp_table, sigmoid]
        self._array: np.ndarray | None = None
        self._rows_apart = rows_apart

    def _layer(self, layer: Linear) -> list[int]:
        packed, bias = _packed(layer.weight8)
        k, n = layer.weight8.shape
        _require(k % 4 == 0, "inputs in whole groups of four")
        self._words[1] = max(self._words[1], n)  # the widest sums
        self._keep += [packed, bias, layer.scale, layer.bias_low, layer.bias_high]
        table, size, top = _elu_inputs(layer) if layer.elu_inputs is not None else (0, 0.0, 0.0)
        words = [packed.data_ptr(), bias.data_ptr(), k, n, packed.shape[1], *_rounding(layer), table]
        return words + [_bits(size), _bits(top), _bits(layer.in_scale)]

    def _cache(self, cache: Tensor | None, dtype: torch.dtype) -> int:
        if cache is not None:
            self._keep.append(cache)
        return _pointer(cache, dtype)

    def conv(self, cache: Tensor, taps: list[tuple[int, int, int]], layer: Linear) -> None:
        """The sums of a masked convolution reading the int8 ``cache``: per kernel row, its first tap's
        cells after the site's, its width in values and its first row of the weight."""
        _require(1 <= len(taps) <= 16 and all(width % 4 == 0 and row % 4 == 0 for _, width, row in taps))
        words = [self._cache(cache, torch.int8), len(taps)] + [word for tap in taps for word in tap]
        self._words += [1, *words, *self._layer(layer)]

    def linear(self, layer: Linear, mixed: bool = False) -> None:
        """The sums of a 1x1 ``layer`` reading the activations (or, ``mixed``, the attention's averages)."""
        self._words += [2, int(mixed), *self._layer(layer)]

    def product(self, layer: Linear) -> None:
        """The sums of a 1x1 ``layer`` reading the 8-bit inputs of the last ``elu``."""
        self._words += [3, *self._layer(layer)]

    def finish(self, layer: Linear, target: str) -> None:
        """``layer``'s outputs as the activations, the attention's queries, or added to the activations
        (``target`` "x", "query", "residual")."""
        self._words += [4, ("x", "query", "residual").index(target), *self._layer(layer)]

    def finish_cells(self, cache: Tensor, layer: Linear) -> None:
        """``layer``'s outputs into the float64 ``cache`` (keys or values)."""
        self._words += [5, self._cache(cache, torch.float64), *self._layer(layer)]

    def elu(self, cache: Tensor | None, layer: Linear) -> None:
        """``layer``'s 8-bit inputs of the activations' ELU, into ``cache`` (None: for ``product``)."""
        self._words += [6, self._cache(cache, torch.int8), *self._layer(layer)]

    def finish_elu(self, cache: Tensor | None, layer: Linear, reader: Linear) -> None:
        """``reader``'s 8-bit inputs of the ELU of ``layer``'s outputs, into ``cache`` (None: for
        ``product``)."""
        self._words += [7, self._cache(cache, torch.int8), *self._layer(layer), *self._layer(reader)]

    def gate(self, layer: Linear, cond: Tensor | None) -> None:
        """A gated block's end, from ``layer``'s sums and the conditioning table ``cond`` (or None)."""
        self._words += [8, self._cache(cond, torch.float32), *self._layer(layer)]

    def attend(self, keys: Tensor, values: Tensor, heads: int, shifts: Tensor) -> None:
        """The attention's averages from the float64 caches; the window's offset o lies ``shifts[o]``
        values (int64) after a site's cell."""
        _require(heads * len(shifts) <= _HEADS_OFFSETS_MOST)
        pointers = [self._cache(keys, torch.float64), self._cache(values, torch.float64)]
        self._words += [9, *pointers, heads, len(shifts), self._cache(shifts, torch.int64)]

    def frequencies(self, layer: Linear) -> None:
        """The frequency tables of ``layer``'s outputs, the step's result."""
        self._words += [10, *self._layer(layer)]

    def run(
        self,
        size: tuple[int, ...],
        stride: tuple[int, ...],
        first: int,
        mask: Tensor | None,
        cond_rows: Tensor | None,
        valid: Tensor | None,
        out: np.ndarray,
        codes: np.ndarray | None = None,
    ) -> None:
        """The tables int64 ``out`` [n, K] of the sites of a wavefront (``size`` (n,)) or a band of whole
        rows (``size`` (h, W)), the i-th at cache cell ``first + sum(i_k stride_k)`` (``mask``,
        ``cond_rows`` and ``valid`` as the stepper's ``Sites`` and ``_context`` give them); given the
        sites' ``codes`` (int64 [n]), only each code's span ``out`` [n, 2]: the frequencies below it and
        its own."""
        if self._array is None:
            self._array = np.array(self._words, dtype=np.int64)
        n, wavefront = int(np.prod(size)), len(size) == 1
        width = self._words[2] if codes is None else 2
        _require(out.shape == (n, width) and out.dtype == np.int64 and out.flags.c_contiguous)
        _require(
            codes is None or (codes.shape == (n,) and codes.dtype == np.int64 and codes.flags.c_contiguous)
        )
        _require(valid is None or valid.shape[0] == n)
        cols, row_cells, col_cells = (1, stride[0], 0) if wavefront else (size[1], *stride)
        _kernels.step(
            self._array.ctypes.data,
            len(self._array),
            n,
            first,
            cols,
            row_cells,
            col_cells,
            _pointer(mask, torch.float64),
            _pointer(cond_rows, torch.int64),
            _pointer(valid, torch.bool),
            0 if codes is None else codes.ctypes.data,
            out.ctypes.data,
            torch.get_num_threads(),
            not (wavefront and self._rows_apart),  # a band's taps read its own positions
        )
