"""The walk: the one loop that joins code maps, the priors' tables and the range coder.

Encoder and decoder must visit the codes in the same order with the same tables, so both run this
walk (``bitstream_spec/vqz.md`` §7); only what they do at each step differs, the ``code_step``:

    for each level, top first:
        for each wave of its tiles (``CodingOrder.waves``):
            for each wavefront step t of the wave:
                tables = the exact priors' frequency tables at step t's positions of every tile
                codes = code_step(tables, ...)   # encode the known codes, or decode them
                feed the codes back to the priors

The encoder's ``code_step`` range-codes the codes it has (``Codec.pack``), the decoder's decodes them
(``Codec.decode_many``), and the rate-distortion choice picks them (``Codec.choose_codes``).
"""

from __future__ import annotations

import functools
import itertools
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vqcodec.coding import order
from vqcodec.coding.entropy import coded_bits, span_bits
from vqcodec.coding.order import CodingOrder, Rect
from vqcodec.exact import ExactPrior, ExactStepper
from vqcodec.exact.encoder import WHOLE_MAP_VALUES, KnownCodes, KnownSpans, encoder_stepper

Progress = Callable[[int, int], None]
"""Called after every wavefront step with (steps done, steps in all)."""

CodeStep = Callable[[np.ndarray, int, int, np.ndarray, np.ndarray], np.ndarray]
"""``code_step(freqs, image, level, ys, xs)``: codes one image's step at map positions (ys, xs) with
the frequency tables ``freqs`` [n, K] (or the known codes' spans [n, 2]: ``walk``'s ``spans``; tile by
tile, each tile's positions by increasing row), and returns the n codes."""


@torch.inference_mode()  # integers need no autograd, whose bookkeeping every one of many small ops pays
def walk(
    priors: Sequence[ExactPrior],
    coding_order: CodingOrder,
    codes: list[list[np.ndarray]],
    code_step: CodeStep,
    tile: tuple[int, int] | None,
    *,
    known: bool = False,
    spans: bool = False,
    levels: Sequence[int] | None = None,
    progress: Progress | None = None,
    whole_map_values: int = WHOLE_MAP_VALUES,
) -> list[list[float]]:
    """Visit every level top first, wave by wave, wavefront by wavefront, for one or more images whose
    code maps ``codes[image][level]`` have the same shapes and are cut into tiles of ``tile`` (width,
    height) pixels (None: whole maps); ``code_step`` codes each step, and its codes are stored in
    ``codes`` and fed back to the priors.

    ``known``: one image whose ``codes`` already hold every code (encoding), so the priors may compute
    the tables of a whole tile in one pass of at most ``whole_map_values`` values; they are the same
    integers either way. ``spans`` (with ``known``): ``code_step`` gets only each known code's span in
    its table, [n, 2] (``entropy.spans``), all that a range encoder needs: no table is kept whole; and
    where a wave's spans were all computed in advance, it gets them in one call, in the order of the
    wave's steps (nothing between two steps depends on the codes: they are known).
    ``levels``: visit only these (with ``known``). Returns the ideal bits of each image's levels visited.
    """
    shapes = [level.shape for level in codes[0]]
    levels = range(len(shapes)) if levels is None else levels
    total, done = coding_order.n_steps(shapes, tile, levels), 0
    level_bits: list[list[float]] = [[] for _ in codes]
    for level in levels:
        bits = np.zeros(len(codes))
        for wave in coding_order.waves(shapes, level, tile):
            groups = _tile_groups(priors[level], codes, level, wave, known, spans, whole_map_values)
            at_once = spans and all(isinstance(group.stepper, KnownCodes) for group in groups)
            if at_once:
                _code_wave(groups, level, code_step, bits)
            for t in range(order.wave_steps(wave)):
                if not at_once:
                    step = _Step([group for group in groups if t < group.stepper.n_steps], t, len(codes))
                    _code(step, codes, level, code_step, bits, spans)
                done += 1
                if progress is not None:
                    progress(done, total)
        for image_bits, level_total in zip(level_bits, bits.tolist(), strict=True):
            image_bits.append(level_total)
    return level_bits


def shifted(progress: Progress, done: int, total: int) -> Progress:
    """A part's progress reported as the progress of the whole: ``done`` steps before it, ``total`` in all."""
    return lambda step, _part_total: progress(done + step, total)


def _code(
    step: _Step,
    codes: list[list[np.ndarray]],
    level: int,
    code_step: CodeStep,
    bits: np.ndarray,
    spans: bool,
) -> None:
    """Code one step of every image, feed its codes to the priors, store them and count their bits."""
    step_codes = np.empty(len(step.images), dtype=np.int64)
    coded = []
    for image, where in enumerate(step.by_image):
        ys, xs, tables = step.ys[where], step.xs[where], step.freqs[where]
        symbols = code_step(tables, image, level, ys, xs)
        step_codes[where] = symbols
        coded.append((ys, xs, tables, symbols))
    step.set_codes(step_codes)  # a GPU starts on the next step: store and count meanwhile
    for image, (ys, xs, tables, symbols) in enumerate(coded):
        codes[image][level][ys, xs] = symbols
        bits[image] += span_bits(tables) if spans else coded_bits(symbols, tables)


def _code_wave(groups: list[_TileGroup], level: int, code_step: CodeStep, bits: np.ndarray) -> None:
    """Code a wave of one image's known codes whose spans were all computed in advance, in one call: the
    order of its steps, and within each step of ``_Step``'s (tile by tile, rows ascending)."""
    parts = []
    for group in groups:
        assert isinstance(group.stepper, KnownCodes)
        steps, maps, rows, cols, spans = group.stepper.everything()
        parts.append((steps, group.ranks[maps], rows, rows + group.ys[maps], cols + group.xs[maps], spans))
    steps, ranks, rows, ys, xs, spans = (np.concatenate(column) for column in zip(*parts, strict=True))
    coding = np.lexsort((rows, ranks, steps))
    ordered = spans[coding]
    code_step(ordered, 0, level, ys[coding], xs[coding])
    bits[0] += span_bits(ordered)


def _crop(
    codes: np.ndarray, rect: tuple[int, int, int, int], ratio: int, device: torch.device
) -> torch.Tensor:
    """The codes of a level ``ratio`` times coarser under the tile ``rect`` (y, x, h, w), on ``device``."""
    y, x, h, w = rect
    rows, cols = slice(y // ratio, -(-(y + h) // ratio)), slice(x // ratio, -(-(x + w) // ratio))
    return torch.from_numpy(codes[rows, cols]).to(device)


def _tile_groups(
    prior: ExactPrior,
    codes: list[list[np.ndarray]],
    level: int,
    wave: list[Rect],
    known: bool,
    spans: bool,
    whole_map_values: int,
) -> list[_TileGroup]:
    """A wave of a level's tiles of every image, evaluated together: by one stepper on the CPU, the
    smaller tiles inside the largest one's map; else one stepper (or one pass of the known codes) for
    all those of a size."""
    height, device = codes[0][level].shape[0], prior.device
    tiles = [(image, rank, *rect) for image in range(len(codes)) for rank, rect in wave]
    one_size = known or device.type == "cuda"
    sizes: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
    for tile in tiles:
        sizes.setdefault(tile[4:] if one_size else (0, 0), []).append(tile)
    groups = []
    for members in sizes.values():
        h, w = (max(tile[i] for tile in members) for i in (4, 5))
        upper = [
            [
                _crop(codes[image][k], (y, x, th, tw), height // codes[image][k].shape[0], device)
                for k in range(level)
            ]
            for image, _, y, x, th, tw in members
        ]
        if known:
            maps = [_crop(codes[image][level], (y, x, h, w), 1, device) for image, _, y, x, _, _ in members]
            stepper = encoder_stepper(prior, maps, upper, whole_map_values, spans)
        else:
            stepper = prior.batch_stepper(h, w, upper, [(th, tw) for *_, th, tw in members])
        columns = np.array(members, dtype=np.int64)[:, :4].T  # images, ranks, ys, xs
        rows = stepper.height  # a step has at most a position per row
        groups.append(_TileGroup(stepper, *columns, *(np.tile(column, rows) for column in columns)))
    return groups


@dataclass(frozen=True)
class _TileGroup:
    """Tiles of a level's wave, of every image walked, evaluated together by one stepper: those of
    one size, or on the CPU all of them (``_tile_groups``)."""

    stepper: ExactStepper | KnownCodes | KnownSpans
    images: np.ndarray
    """The image of each tile (the stepper's images, in order)."""
    ranks: np.ndarray
    """Each tile's place in its image's tiles (raster order)."""
    ys: np.ndarray
    """The map row and column of each tile's top-left code."""
    xs: np.ndarray
    each_images: np.ndarray
    """The four above repeated for every row of the stepper's maps, tile by tile within each: a step's
    positions take the first of them (``_Step``), without a copy."""
    each_ranks: np.ndarray
    each_ys: np.ndarray
    each_xs: np.ndarray


class _Step:
    """One wavefront step of a level's tile groups: their tables, and where each lies in the coding
    order (by image, then tile, then row) and in the maps."""

    def __init__(self, groups: list[_TileGroup], t: int, batch: int) -> None:
        self._groups, self._t, self._counts, self._on_map = groups, t, [], []
        columns: tuple[list[np.ndarray], ...] = ([], [], [], [], [], [])
        freqs, images, ranks, rows, ys, xs = columns
        for group in groups:
            local_ys, local_xs = _positions(t, group.stepper.height, group.stepper.width)
            tiles = len(group.images)
            n = len(local_ys) * tiles
            tile_rows = np.repeat(local_ys, tiles)
            parts = [
                group.stepper.freqs(t),  # position by position, tile by tile within each
                group.each_images[:n],
                group.each_ranks[:n],
                tile_rows,
                tile_rows + group.each_ys[:n],
                np.repeat(local_xs, tiles) + group.each_xs[:n],
            ]
            on_map = group.stepper.on_map(t)
            if on_map is not None:  # a smaller tile's positions outside it
                parts = [part[on_map] for part in parts]
            self._counts.append(n)
            self._on_map.append(on_map)
            for part, into in zip(parts, (freqs, images, ranks, rows, ys, xs), strict=True):
                into.append(part)
        join = np.concatenate if len(groups) > 1 else operator.itemgetter(0)  # spares copying the tables
        self.freqs, self.images, self.ys, self.xs = join(freqs), join(images), join(ys), join(xs)
        coding_order = np.lexsort((join(rows), join(ranks), self.images))
        bounds = np.searchsorted(self.images[coding_order], np.arange(batch + 1))
        self.by_image = [coding_order[lo:hi] for lo, hi in itertools.pairwise(bounds)]
        """Per image, the indices of its tables and positions in coding order."""

    def set_codes(self, codes: np.ndarray) -> None:
        """Enter the step's codes, in the order of its tables, into the groups' steppers."""
        start = 0
        for group, count, on_map in zip(self._groups, self._counts, self._on_map, strict=True):
            if on_map is None:
                group.stepper.set_codes(self._t, codes[start : start + count])
                start += count
            else:  # the positions outside their tile get code 0, which the stepper keeps as padding
                coded = int(on_map.sum())
                step_codes = np.zeros(count, dtype=np.int64)
                step_codes[on_map] = codes[start : start + coded]
                group.stepper.set_codes(self._t, step_codes)
                start += coded


@functools.lru_cache(maxsize=4096)
def _positions(t: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``order.wavefront`` computed once (read-only) for the many steps of the many tiles of one size
    that a decode walks."""
    ys, xs = order.wavefront(t, height, width)
    ys.flags.writeable = xs.flags.writeable = False
    return ys, xs
