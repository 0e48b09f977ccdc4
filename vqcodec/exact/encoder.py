"""The encoder's side of exact inference (``exact.md`` §11, informative): nothing a decoder needs.

* **Pixels to codes.** ``ExactEncoder`` runs the VQ-VAE's encoder in the integers of ``vqvae.py`` and
  picks each nearest codeword by exact integer distances (ties to the smallest index), so the same
  image gives the same codes, hence the same bytes, whatever the threads or device.
* **Tables of known codes.** The encoder has every code before it writes a bit, so it may evaluate
  the prior over whole maps in one pass (``tables_full``: a few large GEMMs) instead of wavefront by
  wavefront: the same integers, since every layer reads only positions before its own (§9).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from vqcodec.coding import entropy, order
from vqcodec.exact.arithmetic import Q_MAX_WIDE
from vqcodec.exact.prior import COND_MAPS_AT_ONCE, ExactPrior
from vqcodec.exact.quantise import Ranges, input_range
from vqcodec.exact.stepper import ExactStepper, reach
from vqcodec.exact.vqvae import (
    FP,
    IntegerConv,
    move_layers,
    quantise_codebook,
    quantise_layers,
    run_layers,
)
from vqcodec.models.vqvae import VQVAE, Part, encode_in_parts

WHOLE_MAP_VALUES = 2**24
"""Largest positions x K of a map that the encoder evaluates in one pass (its logits then take at most
128 MiB), and largest size of each of its caches (in values), by default."""


def encoder_stepper(
    prior: ExactPrior,
    codes: list[Tensor],
    cond_codes: list[list[Tensor]],
    whole_map_values: int = WHOLE_MAP_VALUES,
    spans: bool = False,
) -> ExactStepper | KnownCodes | KnownSpans:
    """Tables of maps of one size whose codes are all known, as the encoder has them (``codes`` [H, W]
    and ``cond_codes``, the levels above, of each), in the order of ``ExactPrior.batch_stepper``: each
    map in one parallel pass (``tables_full``) when its logits and caches hold at most
    ``whole_map_values`` values, else step by step. ``spans``: only each code's span in its table
    [n, 2] (``entropy.spans``), all that a range encoder needs."""
    height, width = codes[0].shape
    logits = len(codes) * height * width * prior.codebook_size
    too_large = max(logits, ExactStepper.whole_cache_values(prior, height, width)) > whole_map_values
    if too_large or _band_rows(prior, height, width) < height and _reaches_below(prior):
        stepper = prior.batch_stepper(height, width, cond_codes)
        return KnownSpans(stepper, codes) if spans else stepper
    tables = np.empty((len(codes), height, width, 2 if spans else prior.codebook_size), dtype=np.int64)
    per_map = -(-height // 2) * -(-width // 2)  # rows of a map's conditioning tables
    for first in range(0, len(codes), COND_MAPS_AT_ONCE):
        cond_tables = prior.condition_maps(cond_codes[first : first + COND_MAPS_AT_ONCE], height, width)
        for i, image_codes in enumerate(codes[first : first + COND_MAPS_AT_ONCE]):
            image_tables = (
                None if cond_tables is None else [t[i * per_map : (i + 1) * per_map] for t in cond_tables]
            )
            tables_full(prior, image_codes, cond_codes[first + i], tables[first + i], spans, image_tables)
    return KnownCodes(tables)


def logits_full(prior: ExactPrior, codes: Tensor, cond_codes: list[Tensor]) -> Tensor:
    """int64 logits [H, W, K] at FA of one image's codes [H, W], every position at once.

    Runs the stepper's evaluation on bands of whole rows instead of wavefronts (every layer reads
    only rows above and its own, or, with kernels wider than 3, one band of all the rows), so it
    equals what the stepper gives step by step. The coder uses ``tables_full``; the tests check both
    against the stepper through these logits.
    """
    height, width = codes.shape
    stepper = ExactStepper(prior, height, width, [cond_codes], whole=True)
    stepper.write_all_codes(codes.to(prior.device, torch.int64))
    band = height if _reaches_below(prior) else _band_rows(prior, height, width)
    logits = torch.empty(height, width, prior.codebook_size, dtype=torch.int64, device=prior.device)
    for y in range(0, height, band):
        rows = stepper.evaluate_rows(y, min(y + band, height))
        logits[y : y + band] = rows.view(-1, width, prior.codebook_size)
    return logits


def tables_full(
    prior: ExactPrior,
    codes: Tensor,
    cond_codes: list[Tensor],
    out: np.ndarray | None = None,
    spans: bool = False,
    cond_tables: list[Tensor] | None = None,
) -> np.ndarray:
    """The frequency tables int64 [H, W, K] of ``logits_full``'s logits, in the same bands (with the
    kernels on the CPU, without computing the logits), into C-contiguous ``out`` if given; ``spans``:
    only each code's span [H, W, 2] (``entropy.spans``); ``cond_tables``: the conditioning tables of
    ``cond_codes`` if computed already."""
    height, width = codes.shape
    stepper = ExactStepper(prior, height, width, [cond_codes], whole=True, cond_tables=cond_tables)
    stepper.write_all_codes(codes.to(prior.device, torch.int64))
    band = height if _reaches_below(prior) else _band_rows(prior, height, width)
    if out is None:
        out = np.empty((height, width, 2 if spans else prior.codebook_size), dtype=np.int64)
    for y in range(0, height, band):
        stop = min(y + band, height)
        stepper.tables_rows(y, stop, out[y:stop].reshape(-1, out.shape[-1]), spans)
    return out


def _band_rows(prior: ExactPrior, height: int, width: int) -> int:
    """Rows of a band of ``tables_full`` whose arrays hold about ``prior.chunk`` values."""
    widest = max(prior.codebook_size, prior.kernel_size * prior.channels)
    return min(height, max(1, prior.chunk // (width * widest)))


def _reaches_below(prior: ExactPrior) -> bool:
    """Whether a mask's taps reach the row below (kernels wider than 3: (1, -2) is on the same
    wavefront), so that a band of rows would read the next band's before it is evaluated."""
    return reach(prior)[1] > 0


class KnownCodes:
    """The stepper interface over tables (or spans) computed in advance, all at once
    (``encoder_stepper``)."""

    def __init__(self, tables: np.ndarray):
        self._tables = tables  # int64 [B, H, W, K or 2]
        _, self.height, self.width, self._k = tables.shape
        self.n_steps = order.n_steps(self.height, self.width)

    def positions(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        return order.wavefront(t, self.height, self.width)

    def everything(self) -> tuple[np.ndarray, ...]:
        """Every position of every map at once, map by map, row-major: its step, map, row and column
        (int64 [n] each) and its table or span [n, K or 2]."""
        maps, h, w = self._tables.shape[:3]
        steps = np.tile(order.step_map(h, w).ravel(), maps)
        rows = np.tile(np.repeat(np.arange(h, dtype=np.int64), w), maps)
        cols = np.tile(np.arange(w, dtype=np.int64), maps * h)
        return steps, np.repeat(np.arange(maps), h * w), rows, cols, self._tables.reshape(maps * h * w, -1)

    def freqs(self, t: int) -> np.ndarray:
        """Position by position, image by image within each, as ``ExactStepper.freqs``."""
        ys, xs = self.positions(t)
        return self._tables[:, ys, xs].transpose(1, 0, 2).reshape(-1, self._k)

    def set_codes(self, t: int, codes: Tensor | np.ndarray) -> None:
        """Nothing to do: the tables already saw every code."""

    def on_map(self, t: int) -> None:
        """Every position lies on its map (``ExactStepper.on_map``)."""


class KnownSpans:
    """A stepper's tables of known codes as the codes' spans (``encoder_stepper``)."""

    def __init__(self, stepper: ExactStepper, codes: list[Tensor]):
        self._stepper, self._codes = stepper, torch.stack(codes).cpu().numpy()  # [B, H, W]
        self.height, self.width, self.n_steps = stepper.height, stepper.width, stepper.n_steps

    def positions(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        return self._stepper.positions(t)

    def freqs(self, t: int) -> np.ndarray:
        """The spans [n, 2], in the order of ``ExactStepper.freqs``."""
        ys, xs = self.positions(t)
        return entropy.spans(self._stepper.freqs(t), self._codes[:, ys, xs].T.reshape(-1))

    def set_codes(self, t: int, codes: Tensor | np.ndarray) -> None:
        self._stepper.set_codes(t, codes)

    def on_map(self, t: int) -> None:
        """Every position lies on its map (``ExactStepper.on_map``)."""


NEAREST_ROWS = 1024
"""Rows whose distances to every codeword ``nearest_codewords`` computes at a time: a block that stays
in the caches, where a whole map's (100 MB for a Kodak image's bottom level) would be fresh memory."""


def _scores(z: Tensor, book: Tensor, out: Tensor | None = None) -> Tensor:
    """``|z - e|^2 - |z|^2 = |e|^2 - 2 z.e`` [n, K] of rows z [n, D] and codewords ``book`` [K, D], all
    integer-valued float64: integers below 2**48, so exact in any order of summation."""
    return torch.addmm(book.square().sum(1), z, book.t(), alpha=-2.0, out=out)


def nearest_codewords(z: Tensor, book: Tensor) -> Tensor:
    """int64 [n]: the index of each row of ``z`` [n, D]'s nearest codeword in ``book`` [K, D], the
    first of equal distances (argmin's, on every device), ``NEAREST_ROWS`` rows at a time."""
    codes = torch.empty(len(z), dtype=torch.int64, device=z.device)
    scores = torch.empty(min(len(z), NEAREST_ROWS), len(book), dtype=z.dtype, device=z.device)
    for start in range(0, len(z), NEAREST_ROWS):
        rows = z[start : start + NEAREST_ROWS]
        torch.argmin(_scores(rows, book, scores[: len(rows)]), 1, out=codes[start : start + len(rows)])
    return codes


def _input_table() -> Tensor:
    """``rhe((p / 255 - 1/2) 2**FP)`` for p = 0..255 (no ties: 255 is odd), in exact integers."""
    values = []
    for p in range(256):
        numerator = (2 * p - 255) * 2 ** (FP - 1)  # (p / 255 - 1/2) 2**FP = numerator / 255
        values.append((2 * numerator + 255) // 510)
    return torch.tensor(values, dtype=torch.float64)


class ExactEncoder:
    """The integer VQ-VAE encoder of one float ``VQVAE``: pixels to codes, the same on every platform."""

    def __init__(self, vqvae: VQVAE, ranges: Ranges | None = None) -> None:
        """The encoder of ``vqvae`` whose convolutions' inputs have ``ranges`` (at FP, by module name in
        ``vqvae``; ``DEFAULT_RANGE`` where none is given), rounded to 16 bits in the encoders' plain
        convolutions and quant_convs, to 8 in their residual blocks and the context decoders (exact.md
        §11: what the codes need)."""
        ranges = ranges or {}
        self.config = vqvae.config
        self._encode_halo = vqvae.encode_halo()
        self.codebooks = [quantise_codebook(q.embedding) for q in vqvae.quantizers]
        self.encoders = [
            quantise_layers(encoder.net, ranges, f"encoders.{level}.net.", wide=True)
            for level, encoder in enumerate(vqvae.encoders)
        ]
        self.quant_convs = [
            IntegerConv.from_float(
                conv, input_range(ranges, f"quant_convs.{level}", FP), -Q_MAX_WIDE, Q_MAX_WIDE
            )
            for level, conv in enumerate(vqvae.quant_convs)
        ]
        self.context_decoders = [
            quantise_layers(decoder.net, ranges, f"context_decoders.{level}.net.")
            for level, decoder in enumerate(vqvae.context_decoders)
        ]
        self.inputs = _input_table()
        self.device = torch.device("cpu")

    def to(self, device: torch.device | str) -> ExactEncoder:
        """This encoder with every tensor on ``device`` (in place)."""
        self.device = torch.device(device)
        for name in ("codebooks", "encoders", "quant_convs", "context_decoders", "inputs"):
            setattr(self, name, move_layers(getattr(self, name), self.device))
        return self

    @torch.inference_mode()
    def encode(
        self,
        pixels: Tensor,
        part: Part | None = None,
        candidates: int = 0,
        fixed: list[Tensor] | None = None,
    ) -> list[Tensor]:
        """int64 codes [B, h_l, w_l] per level, top first, of uint8 pixels [B, 3, H, W] .

        ``fixed``: codes [B, h_l, w_l] to take for the first levels instead of the nearest codewords (the
        levels below then see them). ``candidates`` M > 0 appends, for every level, its M nearest
        codewords [B, M, h_l, w_l] (nearest first, ties to the smaller index) and their distances less
        ``|z|^2`` (exact int64, same shape), for a rate-distortion choice among them (``vqcodec.rdo``).
        """
        fixed = fixed or []
        factors = [2 ** (self.config.n_levels - 1 - level) for level in range(len(fixed))]

        def encode(images: Tensor, rows: slice, cols: slice) -> list[Tensor]:
            upper = [
                level[:, rows.start // f : -(-rows.stop // f), cols.start // f : -(-cols.stop // f)]
                for level, f in zip(fixed, factors, strict=True)
            ]
            per_image = [
                self.encode_image(image, candidates, [level[i] for level in upper])
                for i, image in enumerate(images)
            ]
            return [torch.stack(level) for level in zip(*per_image, strict=True)]

        m = self.config.multiple
        if pixels.shape[-2] % m or pixels.shape[-1] % m:
            raise ValueError(f"image size {tuple(pixels.shape[-2:])} is not a multiple of {m}")
        return encode_in_parts(encode, pixels, self.config, self._encode_halo, part)

    def encode_image(
        self, pixels: Tensor, candidates: int = 0, fixed: list[Tensor] | None = None
    ) -> list[Tensor]:
        """int64 code maps [h_l, w_l], top first, of one image's uint8 pixels [3, H, W], taking the
        ``fixed`` codes for the first levels; with ``candidates`` then each level's nearest codewords and
        distances [M, h_l, w_l] (``encode``)."""
        fixed = fixed or []
        x = self.inputs[pixels.to(self.device).permute(1, 2, 0).long()]
        features = []
        for layers in reversed(self.encoders):
            x = run_layers(layers, x)
            features.append(x)
        features.reverse()
        codes, ranked, context = [], [], features[0][..., :0]
        for level, feature in enumerate(features):
            z = self.quant_convs[level](torch.cat([feature, context], dim=2))
            book = self.codebooks[level]
            if level < len(fixed):
                level_codes = fixed[level].to(self.device)
            else:
                level_codes = nearest_codewords(z.flatten(0, 1), book).view(z.shape[:2])
            codes.append(level_codes)
            if candidates:
                nearest, order = torch.sort(_scores(z.flatten(0, 1), book), dim=1, stable=True)
                for kept in (order, nearest.long()):
                    ranked.append(kept[:, :candidates].t().reshape(-1, *z.shape[:2]).contiguous())
            if level < len(self.context_decoders):
                context = run_layers(
                    self.context_decoders[level], torch.cat([book[level_codes], context], dim=2)
                )
        return codes + ranked
