"""One timed operation in a fresh process, so that its peak memory is its own and its threads start cold.

``vqcodec.bench.speed`` starts it with ``run_child``; the child prints one JSON line: the seconds of
every call, the files' sizes, the peak resident memory (``ru_maxrss``: model and Python included) and,
on a GPU, the peak of the memory torch allocated there. "versus" times vqcodec and the baseline of
the speed targets (``baselines.bmshj2018_sides``) image by image in one process, alternating which
goes first, so that a ratio of the two holds while the machine's speed drifts.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vqcodec.allocator import keep_freed_memory

if TYPE_CHECKING:
    from vqcodec.codec import Codec

WARM_UP_SIDE = 64
VERSUS_ROUNDS = 2
"""Rounds of "versus" over the images; each round swaps which of the two codecs goes first."""

START = "import torch; from vqcodec.bench.child import main; main()"
"""torch first: OpenMP reads its wait variables when torch loads, and importing vqcodec first would set
them (``vqcodec.threads.spin_briefly``); the child must run with exactly the ones ``run_child`` gives."""


@dataclass
class Settings:
    """What every child of one speed run shares."""

    quality: float
    model: str | None
    device: str
    batch: int
    """Files per ``decompress_many`` call in "decode-batch"."""
    tile: int
    """Tile side in pixels; 0: whole code maps."""


def run_child(
    operation: str,
    paths: list[Path],
    settings: Settings,
    waits: dict[str, str],
    threads: int | None = None,
    allocator: bool = True,
) -> dict[str, Any]:
    """Run ``operation`` on ``paths`` in a fresh process with ``threads`` CPU threads (None: torch's
    default), ``waits``, the OpenMP variables (none: OpenMP's defaults), and ``allocator``: glibc's
    malloc set as the command sets it (``vqcodec.allocator``; False: as a plain Python process has it);
    its JSON result."""
    from vqcodec.threads import SPIN_COUNT, WAIT_POLICY

    job = {
        "operation": operation,
        "paths": [str(path) for path in paths],
        "threads": threads,
        "allocator": allocator,
        **asdict(settings),
    }
    env = {key: value for key, value in os.environ.items() if key not in (WAIT_POLICY, SPIN_COUNT)}
    source = str(Path(__file__).resolve().parents[2])  # the child imports this vqcodec, wherever it runs
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    env.update(waits)
    result = subprocess.run(
        [sys.executable, "-c", START, json.dumps(job)], capture_output=True, text=True, env=env
    )
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise RuntimeError(f"the {operation} process failed: {last}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    """The child's side: read the job from argv, time it, print the result."""
    job = json.loads(sys.argv[1])
    if job.pop("allocator"):
        keep_freed_memory()
    threads, operation = job.pop("threads"), job.pop("operation")
    paths = [Path(path) for path in job.pop("paths")]
    settings = Settings(**job)
    if operation == "versus":
        print(json.dumps(versus(paths, settings)))
    else:
        print(json.dumps(timed(operation, paths, settings, threads)))


def timed(operation: str, paths: list[Path], settings: Settings, threads: int | None) -> dict[str, Any]:
    """Time ``operation`` on every path, after an untimed warm-up: "encode" (PNG → .vqz beside it, with the
    files' sizes), "decode" (.vqz → pixels) or "decode-batch" (``settings.batch`` files a call)."""
    import torch
    from PIL import Image

    if threads is not None:
        torch.set_num_threads(threads)
    codec = _warm_codec(settings)
    seconds, sizes = [], []
    suffix = f".q{settings.quality}.t{settings.tile}.vqz"
    if operation == "encode":
        for path in paths:
            rgb = np.asarray(Image.open(path).convert("RGB"))
            tick = time.perf_counter()
            data = codec.compress(rgb, quality=settings.quality, tile=settings.tile or None)
            seconds.append(time.perf_counter() - tick)
            sizes.append(len(data))
            path.with_suffix(suffix).write_bytes(data)
    else:
        datas = [path.with_suffix(suffix).read_bytes() for path in paths]
        per_call = settings.batch if operation == "decode-batch" else 1
        for start in range(0, len(datas), per_call):
            tick = time.perf_counter()
            if operation == "decode-batch":
                codec.decompress_many(datas[start : start + per_call])
            else:
                codec.decompress(datas[start])
            seconds.append(time.perf_counter() - tick)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if settings.device.startswith("cuda") else None
    return {"seconds": seconds, "bytes": sizes, "peak_mb": peak_mb, "gpu_peak_mb": gpu_mb}


def versus(paths: list[Path], settings: Settings) -> dict[str, Any]:
    """Seconds of vqcodec's compress and decompress and of the baseline's encode and decode, for every
    image in ``VERSUS_ROUNDS`` rounds, each side once before and once after the other."""
    import torch
    from PIL import Image

    from vqcodec.bench.baselines import bmshj2018_sides, image_tensor

    codec = _warm_codec(settings)
    baseline, encode, decode = bmshj2018_sides()

    def ours(rgb: np.ndarray) -> tuple[float, float]:
        tick = time.perf_counter()
        data = codec.compress(rgb, quality=settings.quality, tile=settings.tile or None)
        middle = time.perf_counter()
        codec.decompress(data)
        return middle - tick, time.perf_counter() - middle

    def theirs(x: torch.Tensor) -> tuple[float, float]:
        with torch.inference_mode():
            tick = time.perf_counter()
            coded = encode(x)
            middle = time.perf_counter()
            decode(coded)
            return middle - tick, time.perf_counter() - middle

    with torch.inference_mode():
        decode(encode(image_tensor(np.zeros((WARM_UP_SIDE, WARM_UP_SIDE, 3), np.uint8))))
    sides: dict[str, list[float]] = {key: [] for key in ("encode", "decode", "base_encode", "base_decode")}
    for round_ in range(VERSUS_ROUNDS):
        for index, path in enumerate(paths):
            rgb = np.array(Image.open(path).convert("RGB"))
            x = image_tensor(rgb)
            if (round_ + index) % 2 == 0:
                mine, base = ours(rgb), theirs(x)
            else:
                base, mine = theirs(x), ours(rgb)
            for key, seconds in zip(sides, mine + base, strict=True):
                sides[key].append(seconds)
    return {"baseline": baseline, **sides}


def _warm_codec(settings: Settings) -> Codec:
    """The codec of ``settings``, loaded and run once untimed on a small image."""
    import vqcodec

    codec = vqcodec.load_model(settings.model, device=settings.device)
    codec.decompress(codec.compress(np.zeros((WARM_UP_SIDE, WARM_UP_SIDE, 3), np.uint8)))
    return codec
