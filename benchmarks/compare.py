"""Compare the speed of two checkouts of vqcodec, or of two models, on a noisy machine, by alternating them.

    git worktree add /tmp/before 159977c
    python benchmarks/compare.py /tmp/before .   [--data DIR] [--images 3] [--rounds 4] [--device cuda]
    python benchmarks/compare.py . . --models default narrow.safetensors --images 24 --rounds 1
    python benchmarks/compare.py /tmp/before . --out benchmarks/results/compare/NAME   # NAME.md, .json

Each side runs in a child process of its own (its checkout's source first on the path) that loads its
model (``--models``: a bundled name or a model file per side; the default model otherwise). Then, image
by image, ``--rounds`` times, each side in turn (first in every other pair) compresses the image
(``Codec.compress``: the VQ-VAE encoder and the priors' one pass) and decodes it back
(``Codec.decompress``: the priors' walk and the VQ-VAE decoder's pixels).
On a shared machine whose speed drifts by tens of percent within minutes, alternating puts both under
the same conditions; the medians of the per-pair ratios are the figures to quote. The bytes of the
first round's files tell what another model's priors cost.
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
codec = vqcodec.load_model(sys.argv[2], device=sys.argv[1])
images = [np.asarray(Image.open(path).convert("RGB")) for path in sys.argv[3:]]
codec.decompress(codec.compress(images[0]))
print(vqcodec.__file__, flush=True)
for line in sys.stdin:
    tick = time.perf_counter()
    data = codec.compress(images[int(line)])
    encode = time.perf_counter() - tick
    tick = time.perf_counter()
    codec.decompress(data)
    print(encode, time.perf_counter() - tick, len(data), flush=True)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path, help="the first checkout (its root folder)")
    parser.add_argument("after", type=Path, help="the second checkout")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/kodak"), help="the Kodak images")
    parser.add_argument("--images", type=int, default=3, help="Kodak images coded (default 3)")
    parser.add_argument("--rounds", type=int, default=4, help="times each image is coded (default 4)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument(
        "--out", type=Path, default=None, help="also write the results to OUT.md and OUT.json (a report)"
    )
    parser.add_argument("--note", default="", help="what the two sides are, for the report")
    parser.add_argument(
        "--models",
        nargs=2,
        default=("default", "default"),
        metavar=("BEFORE", "AFTER"),
        help="the model of each side: a bundled name or a model file (default: default for both)",
    )
    args = parser.parse_args()
    paths = [str(path.resolve()) for path in sorted(args.data.glob("*.png"))[: args.images]]
    if not paths:
        raise SystemExit(f"no PNG images in {args.data}")
    children = []
    for root, model in zip((args.before, args.after), args.models, strict=True):
        root = root.resolve()
        model = str(Path(model).resolve()) if Path(model).is_file() else model  # the child runs in root
        path = [str(root), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))  # its source first
        # `python -c` puts the working directory first on the path: the child's must be its root
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, args.device, model, *paths],
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
    results: list[list[tuple[float, float, int]]] = [[], []]  # (encode s, decode s, bytes) per pair
    for pair, image in enumerate(list(range(len(paths))) * args.rounds):
        sides = list(zip(children, results, strict=True))
        # each side goes first in every other pair: the first of a pair runs measurably slower here
        for child, side in sides if pair % 2 == 0 else sides[::-1]:
            child.stdin.write(f"{image}\n")
            child.stdin.flush()
            encode, decode, size = child.stdout.readline().split()
            side.append((float(encode), float(decode), int(size)))
    for child in children:
        child.stdin.close()
        child.wait()
    sizes = [sum(r[2] for r in side[: len(paths)]) for side in results]  # the first round's files
    report: dict = {"command": " ".join(["python", "benchmarks/compare.py", *sys.argv[1:]]), "sides": []}
    for root, model, side, size in zip((args.before, args.after), args.models, results, sizes, strict=True):
        encode, decode = (statistics.median(r[i] for r in side) for i in (0, 1))
        print(f"{root} ({model}): median compress {encode:.3f} s, decompress {decode:.3f} s; {size} bytes")
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True)
        report["sides"].append(
            {"checkout": str(root), "commit": commit.stdout.decode().strip() or None, "model": model}
            | {"compress_s": encode, "decompress_s": decode, "bytes": size}
        )
    for i, what in enumerate(("compress", "decompress")):
        ratios = [after[i] / before[i] for before, after in zip(*results, strict=True)]
        print(f"after / before, {what}: median {statistics.median(ratios):.3f} over {len(ratios)} pairs")
        quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        report[what] = {"median": statistics.median(ratios), "quartiles": [quartiles[0], quartiles[2]]}
    print(f"after / before, bytes: {sizes[1] / sizes[0]:.4f}")
    report |= {"bytes": sizes[1] / sizes[0], "images": len(paths), "rounds": args.rounds, "note": args.note}
    if args.out is not None:
        write_report(report, args.out)


def write_report(report: dict, out: Path) -> None:
    """OUT.json and OUT.md: the run's command, machine, sides and ratios, for figures quoted elsewhere."""
    from vqcodec.bench.report import machine_info, run_line, save

    report["machine"] = machine_info()
    before, after = report["sides"]
    lines = [
        f"# Speed: {after['checkout']} against {before['checkout']}",
        "",
        f"{run_line(report['machine'])}; `{report['command']}`: {report['images']} Kodak images x"
        f" {report['rounds']} rounds, each side first in every other pair.",
        "",
        *([report["note"], ""] if report["note"] else []),
        "| side | checkout (commit) | model | median compress | median decompress | bytes |",
        "|---|---|---|---:|---:|---:|",
        *(
            f"| {name} | {side['checkout']} ({side['commit']}) | {side['model']} | {side['compress_s']:.3f} s"
            f" | {side['decompress_s']:.3f} s | {side['bytes']:,} |"
            for name, side in (("before", before), ("after", after))
        ),
        "",
        "After / before, medians of the per-pair ratios (quartiles): compress"
        f" {report['compress']['median']:.2f} ({report['compress']['quartiles'][0]:.2f}-"
        f"{report['compress']['quartiles'][1]:.2f}), decompress {report['decompress']['median']:.2f}"
        f" ({report['decompress']['quartiles'][0]:.2f}-{report['decompress']['quartiles'][1]:.2f}); bytes"
        f" {report['bytes']:.4f}.",
        "",
    ]
    save(out.parent, {f"{out.name}.json": report, f"{out.name}.md": "\n".join(lines)})


if __name__ == "__main__":
    main()
