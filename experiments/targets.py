"""Rate control on Kodak: how close ``--target-bpp`` comes to its target, and the lowest rate.

    python experiments/targets.py [--data DIR] [--limit N] [--bpp 0.05,0.1,0.25] [--out DIR]

For every image and every target, ``vqcodec.rate.compress_to_target`` with a bpp target: the bpp it
reached (never above the target; the closer below, the better), the quality it settled on, the encodes
the search took and its seconds. Also the bpp of quality 0, the lowest rate of the scale. Writes
``targets.json`` and ``targets.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

import vqcodec
from vqcodec.bench.report import machine_info, run_line, save, table
from vqcodec.quality import MIN_QUALITY
from vqcodec.rate import Target, compress_to_target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/kodak"), help="the Kodak images")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--bpp", default="0.05,0.1,0.25", help="comma-separated bpp targets")
    parser.add_argument("--model", default=None, help="bundled model name or model file (default: default)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/kodak"), help="results folder")
    args = parser.parse_args()
    try:
        targets = [float(value) for value in args.bpp.split(",")]
    except ValueError:
        parser.error(f"--bpp {args.bpp!r}: comma-separated numbers")
    if (args.limit is not None and args.limit < 1) or not all(target > 0 for target in targets):
        parser.error("--limit must be at least 1 and every --bpp target above 0")
    paths = sorted(args.data.glob("*.png"))[: args.limit]
    if not paths:
        raise SystemExit(f"no PNG images in {args.data}")
    codec = vqcodec.load_model(args.model)
    rows = []
    for path in paths:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        pixels = rgb.shape[0] * rgb.shape[1]
        row = {"image": path.name, "q0_bpp": 8 * len(codec.compress(rgb, quality=MIN_QUALITY)) / pixels}
        for target in targets:
            encodes: list[int] = []
            tick = time.perf_counter()
            try:
                reached = compress_to_target(
                    codec,
                    rgb,
                    Target(max_bpp=target),
                    progress=lambda done, _total, seen=encodes: seen.append(done),
                )
            except ValueError:  # below quality 0's rate
                row[str(target)] = None
                continue
            row[str(target)] = {
                "bpp": 8 * len(reached.data) / pixels,
                "quality": reached.quality,
                "coded_size": reached.coded_size,
                "encodes": len(encodes),
                "seconds": time.perf_counter() - tick,
            }
        rows.append(row)
        print(json.dumps(row), flush=True)
    command = " ".join(["python", "experiments/targets.py", *sys.argv[1:]])
    report = {
        "machine": machine_info(),
        "command": command,
        "model": args.model,
        "targets": targets,
        "rows": rows,
    }
    text = markdown(report)
    save(args.out, {"targets.json": report, "targets.md": text})
    print(text)


def summary(target: float, rows: list[dict]) -> list[object]:
    """One target's row: how many images met it, how close they came, and what the search took."""
    met = [row[str(target)] for row in rows if row[str(target)] is not None]
    if not met:
        return [target, f"0 of {len(rows)}", *[""] * 6]
    ratios = [entry["bpp"] / target for entry in met]
    return [
        target,
        f"{len(met)} of {len(rows)}",
        f"{statistics.mean(ratios):.3f}",
        f"{min(ratios):.3f}",
        f"{max(ratios):.3f}",
        f"{statistics.mean(entry['quality'] for entry in met):.2f}",
        f"{statistics.mean(entry['encodes'] for entry in met):.1f}",
        f"{statistics.mean(entry['seconds'] for entry in met):.1f}",
    ]


def markdown(report: dict) -> str:
    rows = report["rows"]
    header = ["target bpp", "images met", "reached / target: mean", "worst", "best", "quality (mean)"]
    lines = [
        "# Rate control: bpp targets",
        "",
        f"{run_line(report['machine'])}; `{report['command']}`, model"
        f" {report['model'] or 'default'}, {len(rows)} images. Reached: the file's bpp over the target"
        " (at most 1: a target is never exceeded).",
        "",
        *table(
            header + ["encodes (mean)", "seconds (mean)"],
            "rrrrrrrr",
            (summary(target, rows) for target in report["targets"]),
        ),
    ]
    q0 = [row["q0_bpp"] for row in rows]
    lines += [
        "",
        f"Quality 0, the lowest rate: {statistics.mean(q0):.4f} bpp on average ({min(q0):.4f} to"
        f" {max(q0):.4f}).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
