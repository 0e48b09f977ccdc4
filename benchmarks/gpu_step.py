"""The anatomy of one wavefront step on a GPU: kernels, kernel time, the CUDA graph's replay, the walk.

    python benchmarks/gpu_step.py [--model FILE] [--tiles 6] [--compile]

For each prior of the model, a ``ColumnStepper`` of ``--tiles`` maps of a 256-pixel tile (a Kodak
image's six) with random codes above:

* **walk**: the tables of every step and random codes back (``freqs``, ``set_codes``), per step;
* **replay**: the step's CUDA graph replayed 200 times back to back, per replay: the GPU's own time;
* **kernels**: the kernels one step launches when run without the graph, and their summed time.

``--compile`` does the same for a step whose layers ``torch.compile`` has fused (Triton kernels, then
the same CUDA graph), checks that its tables equal the plain step's at every step, and prints the time
the compilation took. Needs CUDA.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

import vqcodec
from vqcodec.coding.exact import ColumnStepper, ExactPrior

TILE_CODES = (32, 64)
"""The top and bottom maps of a 256-pixel tile."""


class CompiledColumnStepper(ColumnStepper):
    """A ``ColumnStepper`` whose tables come from ``torch.compile`` of its layers."""

    def _column_tables(self) -> torch.Tensor:
        if not hasattr(self, "_compiled"):
            self._compiled = torch.compile(super()._column_tables, dynamic=False)
        return self._compiled()


def walk(stepper: ColumnStepper, seed: int) -> tuple[float, list[np.ndarray]]:
    """Seconds per step of a walk with random codes, and the tables of every step."""
    rng, tables = np.random.default_rng(seed), []
    tick = time.perf_counter()
    for t in range(stepper.n_steps):
        tables.append(stepper.freqs(t))
        stepper.set_codes(t, rng.integers(0, stepper.prior.codebook_size, len(tables[-1])))
    return (time.perf_counter() - tick) / stepper.n_steps, tables


def replay_seconds(stepper: ColumnStepper, replays: int = 200) -> float:
    """The step's graph replayed back to back: the GPU's time per step."""
    torch.cuda.synchronize()
    tick = time.perf_counter()
    for _ in range(replays):
        stepper._graph.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - tick) / replays


def kernels(stepper: ColumnStepper) -> tuple[int, float]:
    """The kernels of one step run without its graph, and their summed time in microseconds."""
    stepper._graph = None
    stepper._advance()  # warm
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        stepper._advance()
        torch.cuda.synchronize()
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return len(events), sum(e.device_time for e in events)


def measure(kind: type[ColumnStepper], prior: ExactPrior, size: int, cond: list[list[torch.Tensor]]) -> dict:
    """The figures of one kind of stepper over size x size maps, and the tables of its walk."""
    tick = time.perf_counter()
    kind(prior, size, size, cond)  # the first one compiles, when there is anything to compile
    set_up = time.perf_counter() - tick
    per_step, tables = walk(kind(prior, size, size, cond), seed=1)
    stepper = kind(prior, size, size, cond)
    replay = replay_seconds(stepper)
    count, busy = kernels(stepper)
    return {
        "set-up": set_up,
        "walk": per_step,
        "replay": replay,
        "kernels": count,
        "busy": busy,
        "tables": tables,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="bundled model name or model file (default: default)")
    parser.add_argument("--tiles", type=int, default=6, help="maps evaluated together (default 6)")
    parser.add_argument("--compile", action="store_true", help="also time a torch.compile'd step")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_step.py needs CUDA")
    codec = vqcodec.load_model(args.model, device="cuda")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {args.tiles} tiles of 256 pixels")
    generator = torch.Generator().manual_seed(0)
    above: list[torch.Tensor] = []
    for level, prior in enumerate(codec.exact_priors):
        size = TILE_CODES[min(level, 1)] * 2 ** max(0, level - 1)
        cond = [[code.cuda() for code in above] for _ in range(args.tiles)]
        kinds = [ColumnStepper, CompiledColumnStepper] if args.compile else [ColumnStepper]
        results = [measure(kind, prior, size, cond) for kind in kinds]
        for kind, result in zip(kinds, results, strict=True):
            name = "compiled" if kind is CompiledColumnStepper else "plain"
            print(
                f"level {level} ({size}x{size} codes, {prior.channels} channels), {name}: "
                f"{result['kernels']} kernels, {result['busy']:.0f} us of kernel time; replay "
                f"{1e3 * result['replay']:.3f} ms, walk {1e3 * result['walk']:.3f} ms a step; first set-up "
                f"{result['set-up']:.1f} s"
            )
        if args.compile:
            same = all(np.array_equal(a, b) for a, b in zip(*(r["tables"] for r in results), strict=True))
            print(f"  the compiled step's tables equal the plain step's at every step: {same}")
        above.append(torch.randint(0, prior.codebook_size, (size, size), generator=generator))


if __name__ == "__main__":
    main()
