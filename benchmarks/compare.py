"""Compare the decoding speed of two checkouts of vqcodec on a noisy machine, by alternating them.

    git worktree add /tmp/before 159977c
    python benchmarks/compare.py /tmp/before .   [--data DIR] [--images 3] [--rounds 4] [--device cuda]

Each checkout runs in a child process of its own (its source first on the path) that loads the
default model and encodes the first ``--images`` Kodak images once; then the two decode them
(``Codec.decode_codes``: the priors' walk, no pixels) in turn, image by image, ``--rounds`` times. On a
shared machine whose speed drifts by tens of percent within minutes, alternating puts both under
the same conditions; the median of the per-pair ratios is the figure to quote.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = """
import sys, time
import numpy as np
from PIL import Image
import vqcodec
codec = vqcodec.load_model(None, device=sys.argv[1])
paths = sys.argv[2:]
datas = [codec.compress(np.asarray(Image.open(path).convert("RGB"))) for path in paths]
codec.decode_codes(datas[0])
print(vqcodec.__file__, flush=True)
for line in sys.stdin:
    tick = time.perf_counter()
    codec.decode_codes(datas[int(line)])
    print(time.perf_counter() - tick, flush=True)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path, help="the first checkout (its root folder)")
    parser.add_argument("after", type=Path, help="the second checkout")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/kodak"), help="the Kodak images")
    parser.add_argument("--images", type=int, default=3, help="Kodak images decoded (default 3)")
    parser.add_argument("--rounds", type=int, default=4, help="times each image is decoded (default 4)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = parser.parse_args()
    paths = [str(path.resolve()) for path in sorted(args.data.glob("*.png"))[: args.images]]
    if not paths:
        raise SystemExit(f"no PNG images in {args.data}")
    children = []
    for root in (args.before, args.after):
        root = root.resolve()
        path = [str(root), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))  # its source first
        # `python -c` puts the working directory first on the path: the child's must be its root
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, args.device, *paths],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=root,
        )
        imported = Path(child.stdout.readline().strip())
        if not imported.is_relative_to(root):
            raise SystemExit(f"the child for {root} imported vqcodec from {imported or 'nowhere'}")
        children.append(child)
    seconds: list[list[float]] = [[], []]
    for _ in range(args.rounds):
        for image in range(len(paths)):
            for child, times in zip(children, seconds, strict=True):
                child.stdin.write(f"{image}\n")
                child.stdin.flush()
                times.append(float(child.stdout.readline()))
    for child in children:
        child.stdin.close()
        child.wait()
    for root, times in zip((args.before, args.after), seconds, strict=True):
        print(f"{root}: median {statistics.median(times):.3f} s, min {min(times):.3f} s per decode")
    ratios = [after / before for before, after in zip(*seconds, strict=True)]
    print(f"after / before: median {statistics.median(ratios):.3f} over {len(ratios)} pairs")


if __name__ == "__main__":
    main()
