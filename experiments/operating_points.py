"""Choosing operating points differently, without training: what it would do to issue #20's BD-rates.

    python experiments/operating_points.py [--data DIR] [--baselines DIR] [--out DIR]

Two questions, on the Kodak images with the default model at effort 0:

1. Per-image allocation. ``vqcodec bench rd`` codes every image at the same quality. A codec may instead
   give each image the quality where a dB costs a fixed number of bits (a slope λ): over a fine grid of
   qualities (0 to 4 in steps of 0.25, coded and decoded), each image takes the quality minimising a
   distortion plus λ · bpp, for a range of λ. Distortions: -PSNR (for the mean PSNR the benchmark
   averages), 100 · (1 - MS-SSIM) (for the mean MS-SSIM it averages), and mixes of the two. This is an
   oracle: it decodes every candidate, as an encoder searching the scale would have to.
2. Above full size. The image is enlarged with the codec's Lanczos filter, coded at quality 4, decoded
   and reduced back: what qualities above 4 would give (a format change: today's RESAMPLE chunk may
   only shrink the image, ``bitstream_spec/vqz.md`` §5.1).

Each curve's BD-rates against the committed WebP, JPEG XL and AVIF curves (``--baselines``, written by
``vqcodec bench rd``) and against the same-quality curve, as ``vqcodec bench rd`` computes them (PSNR:
the mean over images; MS-SSIM: the mean over images, then in dB). Writes ``operating_points.json`` and
``operating_points.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

import vqcodec
from vqcodec.bench.report import machine_info, run_line, save, table
from vqcodec.imageio import resize
from vqcodec.metrics import bd_rate, ms_ssim, ms_ssim_db, psnr

GRID = [step / 4 for step in range(17)]
"""The qualities each image may take: 0 to 4 in steps of 0.25."""
SWEEP = [0, 0.5, 1, 1.5, 2, 2.5, 3, 3.25, 3.5, 3.75, 4]
"""``vqcodec bench rd``'s qualities (``vqcodec.quality.SWEEP_QUALITIES``), the same for every image."""
ENLARGED = [0.95, 0.9, 0.8]
"""Scales below 1 (the coded image larger than the image) for question 2."""
MIXES = [0.0, 0.5, 1.0, 2.0, None]
"""Weight g of 100 · (1 - MS-SSIM) in the distortion -PSNR + g · 100 · (1 - MS-SSIM); None: MS-SSIM alone."""
BASELINES = {"WebP": "webp", "JPEG XL": "jxl", "AVIF": "avif"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/kodak"), help="the Kodak images")
    parser.add_argument(
        "--baselines", type=Path, default=Path("benchmarks/results/kodak"), help="vqcodec bench rd's results"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/kodak"), help="results folder")
    args = parser.parse_args()
    paths = sorted(args.data.glob("*.png"))
    if not paths:
        raise SystemExit(f"no PNG images in {args.data}")
    codec = vqcodec.load_model()
    images = []
    for path in paths:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        height, width = rgb.shape[:2]
        row: dict[str, list[list[float]]] = {"grid": [], "enlarged": []}
        for quality in GRID:
            data = codec.compress(rgb, quality=quality)
            row["grid"].append(_measure(rgb, data, np.asarray(codec.decompress(data))))
        for factor in ENLARGED:
            enlarged = resize(rgb, round(width / factor), round(height / factor))
            data = codec.compress(enlarged)
            reduced = resize(np.asarray(codec.decompress(data)), width, height)
            row["enlarged"].append(_measure(rgb, data, reduced))
        images.append(row)
        print(path.name, flush=True)
    baselines = {}
    for name, stem in BASELINES.items():
        results = json.loads((args.baselines / f"{stem}.json").read_text())["results"]
        similarity_db = [ms_ssim_db(value) for value in results["ms-ssim-rgb"]]
        baselines[name] = [results["bpp"], results["psnr-rgb"], similarity_db]
    report = {"machine": machine_info(), "images": [path.name for path in paths], "grid": GRID}
    report |= {"enlarged": ENLARGED, "measured": images}
    text = markdown(report, baselines)
    save(args.out, {"operating_points.json": report, "operating_points.md": text})
    print(text)


def _measure(rgb: np.ndarray, data: bytes, decoded: np.ndarray) -> list[float]:
    """[bpp, PSNR, MS-SSIM] of one coded image, the bits counted at the image's size."""
    return [8 * len(data) / (rgb.shape[0] * rgb.shape[1]), psnr(rgb, decoded), ms_ssim(rgb, decoded)]


def _curve(points: np.ndarray) -> np.ndarray:
    """Per-image [image, point, (bpp, PSNR, MS-SSIM)] to the benchmark's means: bpp, PSNR, MS-SSIM dB."""
    mean = points.mean(axis=0)
    return np.stack([mean[:, 0], mean[:, 1], [ms_ssim_db(v) for v in mean[:, 2]]], axis=1)


def _allocated(grid: np.ndarray, mix: float | None) -> np.ndarray:
    """The mean curve when each image takes the grid quality minimising its distortion + λ · bpp, over λ."""
    bpp, quality_db, similarity = grid[..., 0], grid[..., 1], grid[..., 2]
    distortion = 100 * (1 - similarity) if mix is None else -quality_db + mix * 100 * (1 - similarity)
    points = set()
    for slope in np.geomspace(1e-3, 1e4, 400):
        picks = (distortion + slope * bpp).argmin(axis=1)
        points.add(tuple(_curve(grid[np.arange(len(grid)), picks][:, None])[0]))
    return np.array(sorted(points))


def markdown(report: dict, baselines: dict[str, list[list[float]]]) -> str:
    grid = np.array([image["grid"] for image in report["measured"]])
    enlarged = np.array([image["enlarged"] for image in report["measured"]])
    same = _curve(grid[:, [GRID.index(q) for q in SWEEP]])

    def rates(curve: np.ndarray) -> list[str]:
        cells = []
        for anchor in [same.T, *baselines.values()]:
            for metric in (1, 2):
                cells.append(f"{bd_rate(anchor[0], anchor[metric], curve[:, 0], curve[:, metric]):+.2f} %")
        return cells

    header = ["curve", "points"] + [
        f"{metric} vs {name}" for name in ["same quality", *baselines] for metric in ("PSNR", "MS-SSIM")
    ]
    rows = [["every image at the same quality (the benchmark's)", len(same), *rates(same)]]
    for mix in MIXES:
        label = (
            "100 · (1 - MS-SSIM)"
            if mix is None
            else "-PSNR" + (f" + {mix:g} · 100 · (1 - MS-SSIM)" if mix else "")
        )
        curve = _allocated(grid, mix)
        rows.append([f"per image, distortion {label}", len(curve), *rates(curve)])
    above = _curve(enlarged)
    for count in range(1, len(ENLARGED) + 1):
        curve = np.concatenate([same, above[:count]])
        scales = ", ".join(f"{factor:g}" for factor in ENLARGED[:count])
        rows.append([f"the same quality, with scales {scales} above quality 4", len(curve), *rates(curve)])
    enlarged_rows = [
        [f"{factor:g}", f"{above[i, 0]:.4f}", f"{above[i, 1]:.3f}", f"{above[i, 2]:.3f}"]
        for i, factor in enumerate(ENLARGED)
    ]
    full = same[-1]
    lines = [
        "# Operating points chosen differently: per-image allocation, and above full size",
        "",
        f"{run_line(report['machine'])}; `python experiments/operating_points.py`, the default model,"
        f" {len(report['images'])} Kodak images, effort 0. BD-rates (negative: fewer bits at equal quality)"
        " against the benchmark's same-quality curve and the committed WebP, JPEG XL and AVIF curves, as"
        " `vqcodec bench rd` computes them. Per image: each image takes the quality of the grid 0, 0.25 …"
        " 4 minimising distortion + λ · bpp, one curve point per λ.",
        "",
        *table(header, "l" + "r" * (len(header) - 1), rows),
        "",
        "Above full size (every image at the same scale; a scale below 1 enlarges the coded image):",
        "",
        *table(
            ["scale", "bpp", "PSNR (dB)", "MS-SSIM (dB)"],
            "rrrr",
            [["1 (quality 4)", f"{full[0]:.4f}", f"{full[1]:.3f}", f"{full[2]:.3f}"], *enlarged_rows],
        ),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
