"""Execution of the integer prior, one wavefront step at a time (``exact.md`` §9): encoder and decoder.

How the layers are scheduled (caches, slots, strided views, batching several images) decides only
speed and memory: every product sum is exact in any order (§8), so any schedule that evaluates the
layers of §6 at the positions of one wavefront gives the same tables.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from torch import Tensor

from vqcodec.coding import entropy, order
from vqcodec.exact import fused
from vqcodec.exact.arithmetic import P_BITS, clamp, float_frequencies, gated_residual, round_shift
from vqcodec.exact.attention import attend, attention_weights
from vqcodec.exact.quantise import Linear, QuantAttention, int8_products, masked_offsets

if TYPE_CHECKING:
    from vqcodec.exact.prior import ExactPrior

_WHOLE_FLOAT64_BYTES = 2**27
"""The most bytes of a ``whole`` stepper's attention caches (keys and values) held as float64, for
the compiled kernels' bands; larger ones hold float32 and their bands run as torch calls."""

_STEP_CONTEXT_VALUES = 2**24
"""Largest positions x (1 + attention offsets) of a stepper whose steps' contexts are computed at once."""

_SLIDE = 32
"""Steps a stepper's caches hold beyond the ones a layer reads (more when a layer reads further back),
before they slide back."""


def reach(prior: ExactPrior) -> tuple[int, int, int]:
    """Rows above and below, and steps back, that the prior's taps reach: (top, bottom, lag).

    (Kernels wider than 3 reach the row below: (1, -2) is on the same wavefront.)
    """
    k = prior.kernel_size
    offsets = masked_offsets(k, first_layer=True) + masked_offsets(k, first_layer=False)
    offsets += prior.attention_offsets
    dys = [dy for dy, _ in offsets]
    return max(0, -min(dys)), max(0, max(dys)), max(-order.step_of(dy, dx) for dy, dx in offsets)


class RowTaps(NamedTuple):
    """The taps of a masked convolution in one kernel row: ``count`` neighbouring cache slots."""

    shift: int  # cache cells from a position to its first tap: dy * slots + dx_first + 2 dy
    width: int  # count * C input values, contiguous in the cache
    rows: slice  # the rows of the layer's weight that multiply them


class Sites(NamedTuple):
    """Positions evaluated together, and how they lie in every cache.

    A wavefront (``size`` (n B,)) or a band of whole rows (``size`` (h, W)): position i sits at cache
    cell ``first + sum(i_k stride_k)``, in slot ``slot`` (one for a wavefront, one per position for a
    band). ``mask``: 1 for the positions whose values the caches keep, 0 for those to be left as the
    zero padding (a :class:`ColumnStepper`'s rows off the map, or positions off a smaller map of a
    stepper of maps of several sizes); None keeps them all.
    """

    ys: Tensor  # [n] rows, flattened in ``size`` order
    xs: Tensor  # [n] columns
    images: Tensor  # [n] the image of each position
    size: tuple[int, ...]
    stride: tuple[int, ...]
    first: int
    slot: int | Tensor
    mask: Tensor | None = None
    limits: Tensor | None = None
    """[n, 2, 1] the height and width of the map each position's attention sees; None: the stepper's."""
    step: int | None = None
    """The wavefront step of the positions, if they are one (``ExactStepper._wavefront``)."""


class ExactStepper:
    """Frequency tables of one code map, one wavefront step at a time, for encoder and decoder alike.

    Call ``freqs(t)`` and then ``set_codes(t, codes)`` for t = 0, 1, ..., n_steps - 1. Every layer whose
    output is read at other positions (conv inputs after ELU, attention keys and values, code
    embeddings) has a cache; step t evaluates each layer only at the wavefront's positions, reading its
    taps from the previous layer's cache: mask "B" taps on the same wavefront are already written,
    because each layer runs for the whole wavefront before the next one.

    A cache is sheared by the decode order: ``[(top + H + bottom) B, slots, C]`` integers (a
    convolution's 8-bit inputs as int8 where the products are int8 ones, else float64 like the
    attention's keys and values; float32 in a ``whole`` stepper), where position (y, x) of image b (of
    B evaluated together) lies in row ``(top + y) B + b`` (zero rows above and below, for taps off the
    map) and slot
    ``x + 2 y - origin``, its step. A wavefront of all B images is then consecutive rows of one
    slot, and a kernel row's taps of it are neighbouring slots of the rows above or of its own: every
    convolution reads its inputs as strided views (one GEMM per kernel row), with no gather. The
    slots hold only the recent steps: taps reach at most ``lag`` steps back (3 for 3x3 kernels, 3r
    for an attention radius r), so when step t runs past the last slot the caches keep steps
    ``t - lag .. t - 1`` in their first slots and clear the rest. Cells outside the map are never
    written and read as the zero padding. Memory grows with the map's height only.

    With B images, the tables of step t are [n_t B, K] and its codes n_t B, position by position and
    image by image within a position: the same integers as each image's own stepper gives.

    On the CPU with the compiled kernels (``fused``), a step (or a band) runs as one call of a
    ``fused.StepProgram`` where the prior fits one, else with each layer's elementwise work in the
    kernels (``_fused_freqs``); elsewhere, or without them, as torch calls (``_evaluate``).
    """

    def __init__(
        self,
        prior: ExactPrior,
        height: int,
        width: int,
        cond_codes: list[list[Tensor]],
        whole: bool = False,
        sizes: list[tuple[int, int]] | None = None,
        cond_tables: list[Tensor] | None = None,
    ):
        """``cond_codes``: the levels above of each image; ``whole``: one image, a slot for every step
        (the caches never slide), to evaluate bands of whole rows; ``sizes``: the (h, w) of each
        image's map, at most height x width, when they differ (None: all height x width);
        ``cond_tables``: the images' conditioning tables if computed already (``ExactPrior.condition_maps``
        of ``cond_codes``)."""
        if height < 1 or width < 1:
            raise ValueError(f"empty map {height}x{width}")
        if not cond_codes or (whole and len(cond_codes) > 1):
            raise ValueError(f"{len(cond_codes)} images for a {'whole' if whole else 'batch'} stepper")
        if sizes is not None and (
            len(sizes) != len(cond_codes) or not all(1 <= h <= height and 1 <= w <= width for h, w in sizes)
        ):
            raise ValueError(
                f"sizes {sizes} must give each of {len(cond_codes)} maps, within {height}x{width}"
            )
        self.prior, self.height, self.width = prior, height, width
        self.batch = batch = len(cond_codes)
        self.n_steps = order.n_steps(height, width)
        device, channels, k = prior.device, prior.channels, prior.kernel_size
        taps_a, taps_b = masked_offsets(k, first_layer=True), masked_offsets(k, first_layer=False)
        self._top, bottom, self._lag = reach(prior)
        self._slots = self._slot_count(whole)
        self._origin = -self._lag  # the step held in slot 0
        # The convolutions' caches hold their 8-bit inputs: int8 for int8 products, else float64; the
        # attention's keys and values are wide activations (integers below 2**20). A band's taps are
        # copied out anyway (they overlap), so a whole map's caches can hold float32, unless they are
        # small enough for the float64 that the compiled kernels' bands read.
        self._fused = fused.available(device)
        wide = torch.float64
        if whole and not (
            self._fused
            and 2 * len(prior.attentions) * self.whole_cache_values(prior, height, width) * 8
            <= _WHOLE_FLOAT64_BYTES
        ):
            wide = torch.float32
        narrow = torch.int8 if int8_products(device) else wide
        rows = (self._top + height + bottom) * batch
        shape = (rows, self._slots, channels)
        self._memories = [
            torch.zeros(1 + 2 * len(prior.blocks), *shape, dtype=narrow, device=device),
            torch.zeros(2 * len(prior.attentions), *shape, dtype=wide, device=device),
        ]
        inputs, attention = (list(memory) for memory in self._memories)
        self._embedded = inputs[0]
        self._block_inputs = list(zip(inputs[1::2], inputs[2::2], strict=True))
        self._keys_values = list(zip(attention[0::2], attention[1::2], strict=True))
        self._taps_a, self._taps_b = self._row_taps(taps_a), self._row_taps(taps_b)
        self._window_rows = self._row_taps(prior.attention_offsets)
        self._offset_cells = torch.tensor(
            [dy * batch * self._slots + order.step_of(dy, dx) for dy, dx in prior.attention_offsets],
            device=device,
        )
        self._offsets = torch.tensor(prior.attention_offsets, dtype=torch.int64, device=device).view(-1, 2)
        self._sizes = (
            None if sizes is None or set(sizes) == {(height, width)} else torch.tensor(sizes, device=device)
        )
        self._condition(cond_codes, sizes, cond_tables)
        self._order_positions()
        self._step_context: tuple[Tensor | None, Tensor | None] | None = None  # ``_context``'s, all steps
        self._last_wavefront = Sites(self._ys[:0], self._xs[:0], self._images[:0], (0,), (0,), 0, 0)
        self._program = self._step_program() if self._fused and wide == torch.float64 else None
        self._computed = 0  # steps whose tables were computed
        self._known = 0  # steps whose codes were set
        self._all_codes: Tensor | None = None  # ``write_all_codes``'

    def _condition(
        self, cond_codes: list[list[Tensor]], sizes: list[tuple[int, int]] | None, tables: list[Tensor] | None
    ) -> None:
        """The conditioning tables of every image (``ExactPrior.condition``), one after the other, unless
        given, and where each image's table starts and how wide it is."""
        height, width, device = self.height, self.width, self.prior.device
        if tables is not None:
            self._cond = tables
        elif sizes is None or self._sizes is None:
            self._cond = self.prior.condition_maps(cond_codes, height, width)
        else:
            per_image = [
                self.prior.condition(codes, h, w) for codes, (h, w) in zip(cond_codes, sizes, strict=True)
            ]
            self._cond = (
                None
                if per_image[0] is None
                else [torch.cat(tables) for tables in zip(*per_image, strict=True)]
            )
        self._cond_width = -(-width // 2)
        self._cond_size = -(-height // 2) * self._cond_width
        if sizes is not None and self._sizes is not None:  # each image's table: its first row, its width
            cond_widths = [-(-w // 2) for _, w in sizes]
            cond_sizes = [
                -(-h // 2) * cond_width for (h, _), cond_width in zip(sizes, cond_widths, strict=True)
            ]
            self._cond_firsts = torch.tensor([0, *itertools.accumulate(cond_sizes)][:-1], device=device)
            self._cond_widths = torch.tensor(cond_widths, device=device)
            self._cond_last = sum(cond_sizes) - 1

    def _order_positions(self) -> None:
        """All positions of the B maps sorted by step, rows ascending within a step (the order of
        ``order.wavefront``), image by image within a position; with maps of several sizes, which lie
        on their map and which map each one's attention sees."""
        height, width, batch, device = self.height, self.width, self.batch, self.prior.device
        steps = torch.from_numpy(order.step_map(height, width)).flatten()
        perm = torch.argsort(steps, stable=True)
        self._ys = (perm // width).repeat_interleave(batch).to(device)
        self._xs = (perm % width).repeat_interleave(batch).to(device)
        self._images = torch.arange(batch, device=device).repeat(height * width)
        self._on_map = self._limits = None  # when the sizes differ:
        if self._sizes is not None:
            sizes = self._sizes[self._images]
            on_map = (self._ys < sizes[:, 0]) & (self._xs < sizes[:, 1])
            self._on_map = on_map.to(torch.float64)[:, None]  # 1.0 where a position lies on its map
            # the map each position's attention sees: its own, or for one off it, the largest
            largest = torch.tensor([height, width], device=device)
            self._limits = torch.where(on_map[:, None], sizes, largest)[:, :, None]
        bounds = torch.cumsum(torch.bincount(steps, minlength=self.n_steps), 0).mul(batch).tolist()
        self._bounds = [0, *bounds]

    @property
    def slots(self) -> int:
        """The steps every cache holds at once."""
        return self._slots

    @property
    def lag(self) -> int:
        """How many steps back the prior's taps reach."""
        return self._lag

    @property
    def cache_bytes(self) -> int:
        """The memory of the caches."""
        return sum(memory.nbytes for memory in self._memories)

    def _slot_count(self, whole: bool) -> int:
        """Slots of every cache: a slot for every step of a ``whole`` map; else the steps the taps
        reach back and at least as many more, so that sliding copies the last ``lag`` slots to the
        first without overlap."""
        return self.n_steps + self._lag if whole else self._lag + max(_SLIDE, self._lag)

    @classmethod
    def whole_cache_values(cls, prior: ExactPrior, height: int, width: int) -> int:
        """Values in one cache of a ``whole`` stepper of a height x width map."""
        top, bottom, lag = reach(prior)
        return (top + height + bottom) * (order.n_steps(height, width) + lag) * prior.channels

    def _row_taps(self, taps: list[tuple[int, int]]) -> list[RowTaps]:
        """Group a mask's taps (row-major) by kernel row; in each, the columns are consecutive."""
        c, groups, start = self.prior.channels, [], 0
        for dy in sorted({dy for dy, _ in taps}):
            dxs = [dx for tap_dy, dx in taps if tap_dy == dy]
            assert dxs == list(range(dxs[0], dxs[0] + len(dxs))), "a mask row's taps are contiguous"
            shift = dy * self.batch * self._slots + order.step_of(dy, dxs[0])
            groups.append(RowTaps(shift, len(dxs) * c, slice(start * c, (start + len(dxs)) * c)))
            start += len(dxs)
        return groups

    def positions(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and columns of the codes of step ``t`` (``order.wavefront``)."""
        return order.wavefront(t, self.height, self.width)

    def _cell(self, y: int, x: int) -> int:
        """The cache cell (row-major over [rows, slots]) of position (y, x) of the first image."""
        return (self._top + y) * self.batch * self._slots + order.step_of(y, x) - self._origin

    def _first_row(self, t: int) -> int:
        """The first row with a position at step t (``order.wavefront``)."""
        return max(0, -(-(t - self.width + 1) // order.SLOPE))

    def _wavefront(self, t: int) -> Sites:
        lo, hi = self._bounds[t], self._bounds[t + 1]
        y_first = self._first_row(t)
        first = self._cell(y_first, t - order.SLOPE * y_first)
        where = slice(lo, hi)
        sites = self._ys[where], self._xs[where], self._images[where]
        mask = limits = None  # all on the map, unless the maps' sizes differ
        if self._on_map is not None:
            mask, limits = self._on_map[where], self._limits[where]
        return Sites(*sites, (hi - lo,), (self._slots,), first, t - self._origin, mask, limits, t)

    def on_map(self, t: int) -> np.ndarray | None:
        """Which of the n_t B positions of step ``t`` lie on their image's map (None: all of them).
        With maps of several sizes, the tables of the others are computed and ignored, their codes
        may be anything, and what they write is kept as zeros, the padding off a map."""
        if self._on_map is None:
            return None
        return self._on_map[self._bounds[t] : self._bounds[t + 1], 0].cpu().numpy() > 0

    def _rows(self, y_start: int, y_stop: int) -> Sites:
        """The positions of rows ``y_start .. y_stop - 1`` (a ``whole`` stepper's)."""
        ys = torch.arange(y_start, y_stop, device=self.prior.device).repeat_interleave(self.width)
        xs = torch.arange(self.width, device=self.prior.device).repeat(y_stop - y_start)
        size, stride = (y_stop - y_start, self.width), (self._slots + order.SLOPE, 1)
        slot = xs + order.SLOPE * ys - self._origin
        return Sites(ys, xs, torch.zeros_like(ys), size, stride, self._cell(y_start, 0), slot)

    def freqs(self, t: int) -> np.ndarray:
        """int64 [n_t B, K] frequency tables of the codes of step ``t``, in ``positions(t)`` order (and
        image by image within each position)."""
        self._check_tables_step(t)
        self._slide(t)
        sites = self._last_wavefront = self._wavefront(t)
        self._computed += 1
        if len(sites.ys) == 0:  # a step without codes (a map one column wide has them at odd steps)
            return np.zeros((0, self.prior.codebook_size), dtype=np.int64)
        if self._fused:
            return self._fused_freqs(sites)
        return float_frequencies(self._evaluate(sites)).to(torch.int64).cpu().numpy()

    def set_codes(self, t: int, codes: Tensor | np.ndarray) -> None:
        """Record the n_t B codes of step ``t`` (in the order of its tables), after its tables."""
        self._check_codes_step(t)
        sites = self._last_wavefront if self._last_wavefront.step == t else self._wavefront(t)
        if isinstance(codes, np.ndarray):  # the walk's: checked in numpy, cheaper for a step's few codes
            codes = codes.reshape(-1)
            self._check_code_range(codes)
            codes = torch.from_numpy(codes.astype(np.int64, copy=False)).to(self.prior.device)
        else:
            codes = torch.as_tensor(codes, device=self.prior.device).to(torch.int64).reshape(-1)
            self._check_code_range(codes)
        if len(codes) != len(sites.ys):
            raise ValueError(f"step {t} has {len(sites.ys)} codes, got {len(codes)}")
        self._store(self._embedded, sites, self.prior.embed.index_select(0, codes))
        self._known += 1

    def _check_tables_step(self, t: int) -> None:
        if not 0 <= t < self.n_steps:
            raise ValueError(f"step {t} outside 0..{self.n_steps - 1}")
        if t != self._computed or self._known < t:
            raise ValueError(f"tables of step {t} asked after {self._computed} steps, {self._known} known")

    def _check_codes_step(self, t: int) -> None:
        if t != self._known or t >= self._computed:
            raise ValueError(f"codes of step {t} given after {self._known} steps, {self._computed} computed")

    def write_all_codes(self, codes: Tensor) -> None:
        """Enter every code [H, W] at once (a ``whole`` stepper, before ``evaluate_rows``)."""
        codes = codes.reshape(-1)
        self._check_code_range(codes)
        self._store(self._embedded, self._rows(0, self.height), self.prior.embed.index_select(0, codes))
        self._all_codes = codes

    def evaluate_rows(self, y_start: int, y_stop: int) -> Tensor:
        """Logits [n, K] (integer-valued float64) of rows ``y_start .. y_stop - 1``, whose codes and
        rows above were entered and evaluated (a ``whole`` stepper)."""
        return self._evaluate(self._rows(y_start, y_stop))

    def tables_rows(self, y_start: int, y_stop: int, out: np.ndarray, spans: bool = False) -> None:
        """The frequency tables int64 [n, K] of ``evaluate_rows``' logits into ``out`` (C-contiguous):
        with the kernels, without computing the logits. ``spans``: only the span of each code that
        ``write_all_codes`` entered, [n, 2] (``entropy.spans``)."""
        sites = self._rows(y_start, y_stop)
        codes = None
        if spans:
            assert self._all_codes is not None, "spans of codes never entered"
            codes = self._all_codes[y_start * self.width : y_stop * self.width].cpu().numpy()
        if self._program is not None:
            self._fused_freqs(sites, out, codes)
            return
        tables = (
            self._fused_freqs(sites)
            if self._fused
            else float_frequencies(self._evaluate(sites)).to(torch.int64).cpu().numpy()
        )
        out[...] = tables if codes is None else entropy.spans(tables, codes)

    def _check_code_range(self, codes: Tensor | np.ndarray) -> None:
        if len(codes) and (codes.min() < 0 or codes.max() >= self.prior.codebook_size):
            raise ValueError(f"codes must lie in 0..{self.prior.codebook_size - 1}")

    def _slide(self, t: int) -> None:
        """Before step t: if its slot is past the last, keep the steps its taps read and clear the rest."""
        if t - self._origin < self._slots:
            return
        kept = slice(t - self._lag - self._origin, t - self._origin)
        for memory in self._memories:
            memory[:, :, : self._lag] = memory[:, :, kept]
            memory[:, :, self._lag :] = 0
        self._origin = t - self._lag

    @staticmethod
    def _cells(cache: Tensor, sites: Sites, shift: int, width: int) -> Tensor:
        """[*size, width] strided view of the cache values from ``shift`` cells after each site."""
        c = cache.shape[2]
        strides = tuple(s * c for s in sites.stride) + (1,)
        return cache.as_strided(
            (*sites.size, width), strides, cache.storage_offset() + (sites.first + shift) * c
        )

    def _view(self, cache: Tensor, sites: Sites, shift: int, width: int) -> Tensor:
        """[n, width] of the cache values from ``shift`` cells after each site: a strided view for a
        wavefront, one copy for a band of rows (overlapping windows; float32 caches as float64)."""
        taps = self._cells(cache, sites, shift, width)
        if len(sites.size) == 1:
            return taps
        if taps.dtype == torch.int8:
            return taps.contiguous().view(-1, width)
        return taps.to(torch.float64).view(-1, width)

    def _store(self, cache: Tensor, sites: Sites, values: Tensor) -> None:
        if sites.mask is not None:
            values = values * sites.mask
        cells = self._cells(cache, sites, 0, cache.shape[2])
        cells.copy_(values.view(cells.shape))

    def _conv(self, layer: Linear, cache: Tensor, sites: Sites, taps: list[RowTaps]) -> Tensor:
        """A masked convolution at the sites, whose 8-bit inputs ``cache`` holds: one product per kernel
        row, then the rounding of ``Linear``."""
        return layer.finish(self._sums(layer, cache, sites, taps))

    def _sums(self, layer: Linear, cache: Tensor, sites: Sites, taps: list[RowTaps]) -> Tensor:
        """:meth:`Linear.accumulate`'s sums of a masked convolution at the sites: one product per kernel
        row of the inputs that ``cache`` holds."""
        out = None
        for tap in taps:
            out = layer.accumulate(out, self._view(cache, sites, tap.shift, tap.width), tap.rows)
        assert out is not None, "a mask has taps"
        return out

    def _row_sums(self, layer: Linear, cache: Tensor, sites: Sites, taps: list[RowTaps]) -> fused.Sums:
        """The int8 products of a masked convolution at a wavefront's sites, one per kernel row, in the
        two parts that ``fused``'s kernels add (a third row, of kernels wider than 3, added here)."""
        parts = [
            layer.accumulate(None, self._view(cache, sites, tap.shift, tap.width), tap.rows) for tap in taps
        ]
        while len(parts) > 2:
            parts[-2].add_(parts.pop())
        return tuple(parts)

    def _evaluate(self, sites: Sites) -> Tensor:
        """Logits [n, K] (integer-valued float64) at the sites, all layers in order, writing the caches
        there.

        Every position that a tap reads must be final: it is one of the sites or was evaluated before.
        """
        prior = self.prior
        x = self._conv(prior.input_conv, self._embedded, sites, self._taps_a)
        cond_rows, valid = self._context(sites)
        for i, (block, (inputs, middles)) in enumerate(zip(prior.blocks, self._block_inputs, strict=True)):
            self._store(inputs, sites, block.conv1.quantise_elu(x))
            h = self._conv(block.conv1, inputs, sites, self._taps_b)
            self._store(middles, sites, block.conv2.quantise_elu(h))
            h = self._conv(block.conv2, middles, sites, self._taps_b)
            if self._cond is not None:
                h = clamp(h.add_(self._cond[i].index_select(0, cond_rows)))
            x = self._attention(i, gated_residual(x, h), sites, valid)
        for block in prior.out_blocks:
            x = clamp(x.add_(block.conv2.on_elu(block.conv1.on_elu(x))))
        return prior.out_conv.on_elu(x)

    def _fused_freqs(
        self, sites: Sites, out: np.ndarray | None = None, codes: np.ndarray | None = None
    ) -> np.ndarray:
        """The frequency tables [n, K] at the sites (into ``out`` if given), as
        ``float_frequencies(_evaluate(sites))`` gives them: in one call of the stepper's program, or
        with each layer's elementwise work and the attention's averages in calls of ``fused`` between
        the products. ``codes`` (the sites', with the program only): their spans [n, 2] instead."""
        prior, mask, wavefront = self.prior, sites.mask, len(sites.size) == 1
        if self._program is not None:
            cond_rows, valid = self._context(sites)
            if out is None:
                width = prior.codebook_size if codes is None else 2
                out = np.empty((len(sites.ys), width), dtype=np.int64)
            self._program.run(sites.size, sites.stride, sites.first, mask, cond_rows, valid, out, codes)
            return out
        sums = self._row_sums if wavefront else self._sums
        x = fused.finish(prior.input_conv, sums(prior.input_conv, self._embedded, sites, self._taps_a))
        cond_rows, valid = self._context(sites)
        for i, (block, (inputs, middles)) in enumerate(zip(prior.blocks, self._block_inputs, strict=True)):
            self._write(inputs, sites, functools.partial(fused.elu_store, block.conv1, x, mask=mask))
            h = sums(block.conv1, inputs, sites, self._taps_b)
            self._write(
                middles,
                sites,
                functools.partial(fused.finish_elu_store, block.conv1, h, block.conv2, mask=mask),
            )
            h = sums(block.conv2, middles, sites, self._taps_b)
            fused.finish_gate(block.conv2, h, None if self._cond is None else self._cond[i], cond_rows, x)
            x = self._attention(i, x, sites, valid, compiled=True)
        for block in prior.out_blocks:
            q = torch.empty(x.shape, dtype=torch.int8)
            fused.elu_store(block.conv1, x, q)
            h = block.conv1.accumulate(None, q, slice(None))
            fused.finish_elu_store(block.conv1, h, block.conv2, q)
            fused.finish(block.conv2, block.conv2.accumulate(None, q, slice(None)), x, residual=True)
        q = torch.empty(x.shape, dtype=torch.int8)
        fused.elu_store(prior.out_conv, x, q)
        return fused.frequencies(prior.out_conv, prior.out_conv.accumulate(None, q, slice(None)), out)

    def _step_program(self) -> fused.StepProgram | None:
        """``_fused_freqs``' calls between the products, and the products, as one program of the kernels
        for a wavefront or a band (None where the prior does not fit one): the same layers in the same
        order."""
        prior, c = self.prior, self.prior.channels
        heads = max((attention.n_heads for attention in prior.attentions), default=0)
        if not fused.StepProgram.fits(c, heads * len(self._offsets)):
            return None
        k = prior.kernel_size
        taps = masked_offsets(k, first_layer=True) + masked_offsets(k, first_layer=False)
        rows_apart = all(order.step_of(dy, dx) < 0 or (dy, dx) == (0, 0) for dy, dx in taps)
        program = fused.StepProgram(c, prior.codebook_size, rows_apart)

        def row_taps(kernel_rows: list[RowTaps]) -> list[tuple[int, int, int]]:
            return [(tap.shift, tap.width, tap.rows.start) for tap in kernel_rows]

        program.conv(self._embedded, row_taps(self._taps_a), prior.input_conv)
        program.finish(prior.input_conv, "x")
        for i, (block, (inputs, middles)) in enumerate(zip(prior.blocks, self._block_inputs, strict=True)):
            program.elu(inputs, block.conv1)
            program.conv(inputs, row_taps(self._taps_b), block.conv1)
            program.finish_elu(middles, block.conv1, block.conv2)
            program.conv(middles, row_taps(self._taps_b), block.conv2)
            program.gate(block.conv2, None if self._cond is None else self._cond[i])
            if prior.attention_every and (i + 1) % prior.attention_every == 0:
                j = (i + 1) // prior.attention_every - 1
                attn, (keys, values) = prior.attentions[j], self._keys_values[j]
                program.linear(attn.key)
                program.finish_cells(keys, attn.key)
                program.linear(attn.value)
                program.finish_cells(values, attn.value)
                program.linear(attn.query)
                program.finish(attn.query, "query")
                program.attend(keys, values, attn.n_heads, self._offset_cells * c)
                program.linear(attn.proj, mixed=True)
                program.finish(attn.proj, "residual")
        for block in prior.out_blocks:
            program.elu(None, block.conv1)
            program.product(block.conv1)
            program.finish_elu(None, block.conv1, block.conv2)
            program.product(block.conv2)
            program.finish(block.conv2, "residual")
        program.elu(None, prior.out_conv)
        program.product(prior.out_conv)
        program.frequencies(prior.out_conv)
        return program

    def _write(self, cache: Tensor, sites: Sites, write: Callable[[Tensor], None]) -> None:
        """Let ``write`` fill the int8 values [n, C] of ``cache`` at the sites: a wavefront's cells are
        rows of one stride, written in place; a band's are written through a copy."""
        c = cache.shape[2]
        cells = self._cells(cache, sites, 0, c)
        if len(sites.size) == 1:
            write(cells.view(-1, c))
            return
        values = torch.empty(cells.numel() // c, c, dtype=cache.dtype, device=cache.device)
        write(values)
        cells.copy_(values.view(cells.shape))

    def _context(self, sites: Sites) -> tuple[Tensor | None, Tensor | None]:
        """Each site's row of the conditioning tables (None for the top prior), and which attention
        offsets of each lie on its map [n, n_off] (None without attention). A wavefront's are cut from
        those of every position, computed at its first step: a decode's steps spare their ten-odd
        small calls."""
        if sites.step is not None and len(self._ys) * (1 + len(self._offsets)) <= _STEP_CONTEXT_VALUES:
            if self._step_context is None:
                everywhere = Sites(self._ys, self._xs, self._images, (0,), (0,), 0, 0, limits=self._limits)
                self._step_context = self._context(everywhere)
            lo, hi = self._bounds[sites.step], self._bounds[sites.step + 1]
            return tuple(None if part is None else part[lo:hi] for part in self._step_context)  # type: ignore[return-value]
        ys, xs = sites.ys, sites.xs
        cond_rows = valid = None
        if self._cond is not None and self._sizes is None:
            cond_rows = sites.images * self._cond_size + (ys // 2) * self._cond_width + xs // 2
        elif self._cond is not None:  # positions off their map read any row in range
            cond_rows = (
                self._cond_firsts[sites.images] + (ys // 2) * self._cond_widths[sites.images] + xs // 2
            )
            cond_rows = cond_rows.clamp_(max=self._cond_last)
        if self.prior.attentions:
            oy, ox = ys[:, None] + self._offsets[:, 0], xs[:, None] + self._offsets[:, 1]
            heights, widths = (self.height, self.width) if sites.limits is None else sites.limits.unbind(1)
            valid = (oy >= 0) & (oy < heights) & (ox >= 0) & (ox < widths)  # [n, n_off]
        return cond_rows, valid

    def _attention(
        self, i: int, x: Tensor, sites: Sites, valid: Tensor | None, compiled: bool = False
    ) -> Tensor:
        """``x`` after gated block ``i``: through an attention block where one follows it; ``compiled``:
        with the elementwise work and the averages in ``fused``'s kernels."""
        prior = self.prior
        if not prior.attention_every or (i + 1) % prior.attention_every:
            return x
        assert valid is not None, "the offsets of an attention window"
        j = (i + 1) // prior.attention_every - 1
        attn, (keys, values) = prior.attentions[j], self._keys_values[j]
        if compiled:
            c = keys.shape[2]
            if len(sites.size) == 1:  # a wavefront: into the caches' cells, rows of one stride
                keys, values = (self._cells(cache, sites, 0, c).view(-1, c) for cache in (keys, values))
                fused.finish(attn.key, fused.linear(attn.key, x), keys, mask=sites.mask)
                fused.finish(attn.value, fused.linear(attn.value, x), values, mask=sites.mask)
            else:  # a band: through a copy into the float32 caches, then those as float64
                self._store(keys, sites, fused.finish(attn.key, fused.linear(attn.key, x)))
                self._store(values, sites, fused.finish(attn.value, fused.linear(attn.value, x)))
                keys, values = (self._cells(cache.double(), sites, 0, c) for cache in (keys, values))
            query = fused.finish(attn.query, fused.linear(attn.query, x))
            mixed = fused.attend(query, attn.n_heads, keys, values, self._offset_cells * c, valid)
            return fused.finish(attn.proj, fused.linear(attn.proj, mixed), x, residual=True)
        self._store(keys, sites, attn.key(x))
        self._store(values, sites, attn.value(x))
        if len(sites.size) == 1:  # a wavefront
            return attend(attn, self._window(keys, sites), self._window(values, sites), x, valid)
        return self._attend_band(attn, keys, values, x, sites, valid)

    def _window(self, cache: Tensor, sites: Sites) -> list[Tensor]:
        """Per row of the attention window, [n, w, C] strided views of ``cache`` at a wavefront's sites:
        a row's offsets are neighbouring slots, as a kernel row's taps are."""
        n, c = sites.size[0], cache.shape[2]
        return [self._cells(cache, sites, row.shift, row.width).view(n, -1, c) for row in self._window_rows]

    def _attend_band(
        self, attn: QuantAttention, keys: Tensor, values: Tensor, x: Tensor, sites: Sites, valid: Tensor
    ) -> Tensor:
        """:func:`attend` at a band of whole rows, from the caches ``keys`` and ``values`` [rows, slots,
        C] (a ``whole`` stepper's, float32).

        The keys (and values) of one offset at all the band's positions are one strided view of a
        cache, so each offset is a product and a sum over the band, with nothing gathered: gathered,
        the windows of a band hold every cell once per offset, and copying them was most of the top
        prior's time. The sums are exact as :func:`attention_rows` says, in any order.
        """
        (h, w), c, heads = sites.size, x.shape[1], attn.n_heads
        keys, values = keys.double(), values.double()  # the same layout, cast once
        query = attn.query(x).view(h, w, heads, c // heads)
        shifts = self._offset_cells.tolist()
        raw = x.new_empty(len(shifts), h, w, heads)
        for j, shift in enumerate(shifts):
            torch.linalg.vecdot(query, self._cells(keys, sites, shift, c).view(query.shape), out=raw[j])
        raw = raw.permute(1, 2, 3, 0).contiguous().view(h * w, heads, len(shifts))
        weights = attention_weights(raw, valid).view(h, w, heads, len(shifts))
        mixed = torch.zeros_like(query)
        for j, shift in enumerate(shifts):
            mixed.addcmul_(weights[..., j, None], self._cells(values, sites, shift, c).view(query.shape))
        return clamp(x.add_(attn.proj(round_shift(mixed, P_BITS).view(h * w, c))))
