"""Where one decode's time goes, and how batch decoding scales.

    python benchmarks/profile_decode.py [--image PNG] [--model FILE] [--device cuda] [--repeats 3]
                                        [--batch 1 8 32]

Encodes one image (default kodim23) with the default model (or ``--model``), then:

* decodes it ``--repeats`` times with ``Codec.decode_codes`` (the priors' walk, no pixels): the median;
* walks it once more as ``decode_codes`` does, timing each part: the steppers' set-up (the
  conditioning, and on a GPU the capture of the step's CUDA graph), the tables of every step (the
  priors' evaluation, and on a GPU the launch and the wait for it), the range decoder, and entering
  the decoded codes;
* decodes ``--batch`` copies of the file at once (``decode_many``), for each size given: seconds per
  image, images per second and, on a GPU, the peak memory torch allocated there.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import vqcodec
from vqcodec.codec import Codec, _Step, _wave_steps
from vqcodec.coding.container import VQZFile
from vqcodec.coding.entropy import Decoder


def clock_for(device: torch.device) -> Callable[[], float]:
    """A timer that first waits for the device's queued work."""

    def clock() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    return clock


def breakdown(codec: Codec, data: bytes) -> dict[str, float]:
    """Seconds of each part of one decode, walked level by level, wave of tiles by wave and step by
    step as ``Codec._walk`` walks it."""
    clock = clock_for(codec.device)
    file = VQZFile.from_bytes(data)
    decoder = Decoder(file.payload)
    codes = [np.zeros(shape, dtype=np.int64) for shape in file.level_shapes]
    parts = dict.fromkeys(("set-up", "tables", "range decoding", "codes entered"), 0.0)
    steps = 0
    for level in range(len(codes)):
        for wave in codec._waves(file.level_shapes, level, file.tile):
            tick = clock()
            groups = codec._tile_groups([codes], level, wave, known=False)
            parts["set-up"] += clock() - tick
            for t in range(_wave_steps(wave)):
                tick = clock()
                step = _Step([group for group in groups if t < group.stepper.n_steps], t, 1)
                tables = clock()
                (where,) = step.by_image
                symbols = decoder.decode(step.freqs[where])
                decoded = clock()
                codes[level][step.ys[where], step.xs[where]] = symbols
                step_codes = np.empty(len(step.images), dtype=np.int64)
                step_codes[where] = symbols
                step.set_codes(step_codes)
                entered = clock()
                parts["tables"] += tables - tick
                parts["range decoding"] += decoded - tables
                parts["codes entered"] += entered - decoded
                steps += 1
    parts["steps"] = steps
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", type=Path, default=Path("../shared/data/kodak/kodim23.png"))
    parser.add_argument("--model", default=None, help="bundled model name or model file (default: default)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--repeats", type=int, default=3, help="timed decodes (default 3)")
    parser.add_argument("--batch", type=int, nargs="*", default=[], help="batch sizes to time")
    args = parser.parse_args()

    codec = vqcodec.load_model(args.model, device=args.device)
    data = codec.compress(np.asarray(Image.open(args.image).convert("RGB")))
    clock = clock_for(codec.device)
    codec.decode_codes(data)  # warm-up
    seconds = []
    for _ in range(args.repeats):
        tick = clock()
        codec.decode_codes(data)
        seconds.append(clock() - tick)
    name = torch.cuda.get_device_name(codec.device) if codec.device.type == "cuda" else "cpu"
    print(f"{args.image.name} on {name}: decode_codes median {statistics.median(seconds):.3f} s")
    parts = breakdown(codec, data)
    steps = parts.pop("steps")
    total = sum(parts.values())
    print(f"one decode by part ({steps} steps, {total:.3f} s in all):")
    for part, spent in parts.items():
        per_step = "" if part == "set-up" else f"  {1000 * spent / steps:6.3f} ms a step"
        print(f"  {part:15s} {spent:7.3f} s{per_step}")
    for size in args.batch:
        if codec.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(codec.device)
        tick = clock()
        codec.decode_many([data] * size)
        spent = clock() - tick
        line = f"batch of {size}: {spent / size:.3f} s per image, {size / spent:.2f} images/s"
        if codec.device.type == "cuda":
            line += f", GPU peak {torch.cuda.max_memory_allocated(codec.device) / 2**30:.2f} GB"
        print(line, flush=True)


if __name__ == "__main__":
    main()
