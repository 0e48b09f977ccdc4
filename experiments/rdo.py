"""What the rate-distortion code choice (``--effort``) buys on Kodak: BD-rate and encode time per effort.

    python experiments/rdo.py [--data DIR] [--step 2] [--qualities 1,2,3,3.5,4] [--out DIR]

Every ``--step``-th Kodak image is compressed at every quality with every effort (the efforts in turn,
image by image, so that a drifting machine affects them alike) and decoded. Per effort: mean bpp, PSNR
and MS-SSIM at each quality, the BD-rate against effort 0 (the nearest codewords) at equal PSNR and at
equal MS-SSIM over the qualities, and the median ratio of its encode time to effort 0's on the same
image and quality. Writes ``rdo.json`` and ``rdo.md``.
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
from vqcodec import rdo
from vqcodec.bench.report import machine_info, run_line, save, table
from vqcodec.metrics import bd_rate, ms_ssim, ms_ssim_db, psnr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/kodak"), help="the Kodak images")
    parser.add_argument("--step", type=int, default=2, help="every N-th image (default 2: 12 of 24)")
    parser.add_argument("--qualities", default="1,2,3,3.5,4", help="comma-separated qualities")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/kodak"), help="results folder")
    args = parser.parse_args()
    try:
        qualities = [float(value) for value in args.qualities.split(",")]
    except ValueError:
        parser.error(f"--qualities {args.qualities!r}: comma-separated numbers")
    if args.step < 1 or len(set(qualities)) < 2 or not all(0 <= quality <= 4 for quality in qualities):
        parser.error(
            "--step must be at least 1, and --qualities two or more from 0 to 4 (a BD-rate needs a curve)"
        )
    paths = sorted(args.data.glob("*.png"))[:: args.step]
    if not paths:
        raise SystemExit(f"no PNG images in {args.data}")
    codec = vqcodec.load_model()
    codec.compress(np.zeros((64, 64, 3), np.uint8))  # untimed warm-up
    rows = []
    for path in paths:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        for quality in qualities:
            for effort in rdo.EFFORTS:
                tick = time.perf_counter()
                data = codec.compress(rgb, quality=quality, effort=effort)
                seconds = time.perf_counter() - tick
                decoded = np.asarray(codec.decompress(data))
                row = {
                    "image": path.name,
                    "quality": quality,
                    "effort": effort,
                    "bpp": 8 * len(data) / (rgb.shape[0] * rgb.shape[1]),
                    "psnr": psnr(rgb, decoded),
                    "ms_ssim": ms_ssim(rgb, decoded),
                    "encode_s": seconds,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    command = " ".join(["python", "experiments/rdo.py", *sys.argv[1:]])
    report = {
        "machine": machine_info(),
        "command": command,
        "images": len(paths),
        "qualities": qualities,
        "rows": rows,
    }
    text = markdown(report)
    save(args.out, {"rdo.json": report, "rdo.md": text})
    print(text)


def markdown(report: dict) -> str:
    machine, rows, qualities = report["machine"], report["rows"], report["qualities"]

    def mean(effort: int, quality: float, key: str) -> float:
        return statistics.mean(r[key] for r in rows if r["effort"] == effort and r["quality"] == quality)

    def curve(effort: int, key: str) -> list[float]:
        values = [mean(effort, q, key) for q in qualities]
        return [ms_ssim_db(v) for v in values] if key == "ms_ssim" else values

    def time_ratio(effort: int) -> float:
        base = {(r["image"], r["quality"]): r["encode_s"] for r in rows if r["effort"] == 0}
        return statistics.median(
            r["encode_s"] / base[r["image"], r["quality"]] for r in rows if r["effort"] == effort
        )

    summary = []
    for effort in rdo.EFFORTS[1:]:
        rates = [
            bd_rate(curve(0, "bpp"), curve(0, key), curve(effort, "bpp"), curve(effort, key))
            for key in ("psnr", "ms_ssim")
        ]
        summary.append([effort, f"{rates[0]:+.2f} %", f"{rates[1]:+.2f} %", f"{time_ratio(effort):.2f}"])
    means = [
        [
            f"{quality:g}",
            effort,
            f"{mean(effort, quality, 'bpp'):.4f}",
            f"{mean(effort, quality, 'psnr'):.3f}",
        ]
        + [f"{mean(effort, quality, 'ms_ssim'):.5f}", f"{mean(effort, quality, 'encode_s'):.2f}"]
        for quality in qualities
        for effort in rdo.EFFORTS
    ]
    lines = [
        "# Rate-distortion code choice (`--effort`)",
        "",
        f"{run_line(machine)}; `{report['command']}`, the default model, {report['images']} images,"
        f" λ {rdo.LAMBDA_BOTTOM} (bottom) and {rdo.LAMBDA_ABOVE} (above),"
        f" {rdo.CANDIDATES} candidates. BD-rate against effort 0 over the qualities below (negative: fewer"
        " bits at equal quality); encode time: the median over images and qualities of the ratio to effort"
        " 0's, measured alternately.",
        "",
        *table(
            ["effort", "BD-rate, PSNR", "BD-rate, MS-SSIM", "encode time vs effort 0"],
            "rrrr",
            [[0, "—", "—", "1.00"], *summary],
        ),
        "",
        *table(["quality", "effort", "bpp", "PSNR (dB)", "MS-SSIM", "encode (s)"], "rrrrrr", means),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
