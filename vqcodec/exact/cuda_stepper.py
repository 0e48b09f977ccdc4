"""The integer prior on a GPU: each wavefront step replayed as one CUDA graph (``exact.md`` §9).

Launching a step's many small kernels one by one takes longer than running them, so a step here is
the same operations on the same memory every time, captured once. The integers are the stepper's.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from vqcodec.coding import order
from vqcodec.exact.arithmetic import float_frequencies
from vqcodec.exact.stepper import ExactStepper, Sites

if TYPE_CHECKING:
    from vqcodec.exact.prior import ExactPrior


class ColumnStepper(ExactStepper):
    """An :class:`ExactStepper` whose every step runs the same operations on the same memory, so that a
    CUDA graph replays a step in one launch: on a GPU, launching the step's 200-odd small kernels one
    by one takes several times longer than running them.

    A step evaluates a whole slot column of the sheared caches: every row of the map, B images each.
    The rows whose position is off the map at step t (x = t - 2y outside 0..W-1) are computed too, and
    masked to zero when stored, so the caches keep their zero padding. The caches slide by one slot
    every step, so that step t always lies in slot ``lag``; the step counter lives on the device, and
    the codes and tables pass through fixed host buffers. The same integers as ``ExactStepper``, for
    2.4 times its positions on a Kodak image (the rows off the wavefront), which a GPU hardly notices.
    ``set_codes(t)`` launches step t + 1 at once and ``freqs(t + 1)`` waits for it, so that what the
    caller does in between (storing the codes, counting bits) runs while the GPU computes. On the CPU
    the step runs as it is (for the tests), without a graph.
    """

    def __init__(self, prior: ExactPrior, height: int, width: int, cond_codes: list[list[Tensor]]):
        super().__init__(prior, height, width, cond_codes)
        device, n = prior.device, height * self.batch
        self._column_ys = torch.arange(height, device=device).repeat_interleave(self.batch)
        self._column_images = torch.arange(self.batch, device=device).repeat(height)
        self._step = torch.full((), -1, dtype=torch.int64, device=device)  # the step last evaluated
        pinned = device.type == "cuda"
        self._codes_in = torch.zeros(n, dtype=torch.int64, pin_memory=pinned)
        self._codes = torch.zeros(n, dtype=torch.int64, device=device)
        self._tables = torch.zeros(n, prior.codebook_size, dtype=torch.int64, pin_memory=pinned)
        self._scratch = [torch.empty_like(memory[:, :, 1:]) for memory in self._memories]
        self._graph = self._capture() if device.type == "cuda" else None
        self._launched = 0  # steps whose tables were launched

    def _slot_count(self, whole: bool) -> int:
        return self._lag + 1

    def _column(self) -> Sites:
        """Every row at the step on the device's counter; the rows off the map masked."""
        xs = self._step - order.SLOPE * self._column_ys
        on_map = ((xs >= 0) & (xs < self.width)).to(torch.float64)[:, None]
        first = self._top * self.batch * self._slots + self._lag
        xs = xs.clamp(0, self.width - 1)  # off the map: any column, for in-range indices
        sites = self._column_ys, xs, self._column_images, (len(xs),), (self._slots,)
        return Sites(*sites, first, self._lag, on_map)

    def _advance(self) -> None:
        """One step: enter the last step's codes, slide the caches by a slot, compute the next tables."""
        self._codes.copy_(self._codes_in, non_blocking=True)
        self._store(self._embedded, self._column(), self.prior.embed.index_select(0, self._codes))
        for memory, scratch in zip(self._memories, self._scratch, strict=True):
            scratch.copy_(memory[:, :, 1:])
            memory[:, :, :-1].copy_(scratch)
            memory[:, :, -1].zero_()
        self._step.add_(1)
        self._tables.copy_(self._column_tables(), non_blocking=True)

    def _column_tables(self) -> Tensor:
        """int64 [n, K] tables of every row of the column at the device's step."""
        return float_frequencies(self._evaluate(self._column())).to(torch.int64)

    def _capture(self) -> torch.cuda.CUDAGraph:
        """Record one step as a CUDA graph; the caches and counter are reset afterwards."""
        device = self.prior.device
        stream = _capture_stream(device)
        with torch.cuda.device(device):
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self._advance()  # allocates what a step needs outside the capture
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                self._advance()
        for memory in self._memories:
            memory.zero_()
        self._step.fill_(-1)
        return graph

    def _row_range(self, t: int) -> slice:
        """The rows of the column (y B + b) that hold step t's positions."""
        y_first, y_last = self._first_row(t), min(self.height - 1, t // order.SLOPE)
        return slice(y_first * self.batch, max(y_first, y_last + 1) * self.batch)

    def __del__(self) -> None:
        """Wait for a step still running (a walk stopped by an error between ``set_codes`` and
        ``freqs``) before the host buffers it writes are freed."""
        if getattr(self, "_graph", None) is not None and self._launched > self._computed:
            torch.cuda.synchronize(self.prior.device)

    def _launch(self) -> None:
        """Start computing the tables of the next step (on the CPU: compute them)."""
        if self._graph is None:
            self._advance()
        else:
            with torch.cuda.device(self.prior.device):
                self._graph.replay()
                self._stream = torch.cuda.current_stream()  # the one to wait for
        self._launched += 1

    def freqs(self, t: int) -> np.ndarray:
        self._check_tables_step(t)
        if self._launched == t:  # the first step: nothing launched it
            self._launch()
        if self._graph is not None:
            self._stream.synchronize()
        self._computed += 1
        return self._tables[self._row_range(t)].numpy().copy()

    def set_codes(self, t: int, codes: Tensor | np.ndarray) -> None:
        self._check_codes_step(t)
        rows = self._row_range(t)
        codes = torch.as_tensor(codes).to("cpu", torch.int64).reshape(-1)
        if len(codes) != rows.stop - rows.start:
            raise ValueError(f"step {t} has {rows.stop - rows.start} codes, got {len(codes)}")
        self._check_code_range(codes)
        self._codes_in[rows] = codes
        self._known += 1
        if self._known < self.n_steps:
            self._launch()


@functools.cache
def _capture_stream(device: torch.device) -> torch.cuda.Stream:
    """The side stream on which every :class:`ColumnStepper` of ``device`` warms up and is captured:
    one for all, since cuBLAS keeps a workspace for every stream it has run on, for good."""
    return torch.cuda.Stream(device)
