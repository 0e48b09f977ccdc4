"""How the images that measure the 8-bit layers' input ranges change the pixel decoder's PSNR (format 2).

    python experiments/calibration_cost.py [--kodak DIR] [--out benchmarks/results/int8]

A model file stores the input range of every 8-bit layer (``bitstream_spec/exact.md`` §3.2); the
bundled model's were measured as the largest inputs on the first 8 CBSD432 training images. Larger
ranges clip fewer inputs but round all of them more coarsely. This runs the bundled model's exact pixel
decoder on every third Kodak image's codes (the encoder's, which the ranges do not change) with ranges
measured on 8, 32 and 128 images of each training set, scaled by 0.8, 1 and 1.25, against the float
decoder of the same codes.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vqcodec import zoo
from vqcodec.bench.report import machine_info, run_line
from vqcodec.exact.calibrate import decoder_ranges
from vqcodec.exact.encoder import ExactEncoder
from vqcodec.exact.quantise import ranges_under
from vqcodec.exact.vqvae import ExactDecoder
from vqcodec.metrics import psnr
from vqcodec.models.model import to_uint8
from vqcodec.train.data import calibration_images

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = {"cbsd432": SHARED / "train" / "cbsd432", "imagenet-sample": SHARED / "train" / "imagenet-sample"}
COUNTS = (8, 32, 128)
SCALES = (0.8, 1.0, 1.25)


def mean_psnr(decode: Callable[[list[torch.Tensor]], torch.Tensor], kodak: list) -> float:
    """Mean PSNR of ``decode`` (code maps [1, h, w] per level to uint8 [1, 3, H, W]) on Kodak's codes."""
    values = []
    for rgb, codes in kodak:
        pixels = decode(codes)[0].permute(1, 2, 0).numpy()
        values.append(psnr(rgb, pixels))
    return float(np.mean(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kodak", type=Path, default=SHARED / "kodak")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/int8"))
    args = parser.parse_args()
    start = time.time()
    model, sha256 = zoo.load_cached(zoo.resolve_model())
    encoder = ExactEncoder(model.vqvae, ranges_under(model.input_ranges, "vqvae."))
    kodak = []
    for path in sorted(args.kodak.glob("*.png"))[::3]:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        kodak.append((rgb, encoder.encode(torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None])))
    with torch.no_grad():
        float_psnr = mean_psnr(lambda codes: to_uint8(model.vqvae.decode_codes(codes)), kodak)
    rows = [{"ranges": "none: the float decoder", "psnr": round(float_psnr, 4)}]
    for name, folder in SETS.items():
        for count in COUNTS:
            images = calibration_images(folder, count, model.config.vqvae.multiple)
            measured = decoder_ranges(model.vqvae, [model.vqvae.encode(image) for image in images])
            for scale in SCALES:
                ranges = {layer: max(1, int(value * scale)) for layer, value in measured.items()}
                value = mean_psnr(ExactDecoder(model.vqvae, ranges).decode, kodak)
                rows.append({"ranges": f"{name}, {count} images, x {scale}", "psnr": round(value, 4)})
                print(rows[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "calibration.json").write_text(json.dumps({"model": sha256, "rows": rows}, indent=1) + "\n")
    reference = rows[0]["psnr"]
    lines = [
        "# The 8-bit pixel decoder's PSNR by the images that measure its input ranges",
        "",
        f"{run_line(machine_info())}; `python experiments/calibration_cost.py`, {time.time() - start:.0f} s: "
        f"the bundled model (`{sha256[:16]}…`), the codes of {len(kodak)} Kodak images (every third), "
        "ranges the largest input of each layer on the first N images of a training set, times a scale.",
        "",
        "| ranges | PSNR (dB) | against the float decoder |",
        "|---|---:|---:|",
    ]
    lines += [f"| {r['ranges']} | {r['psnr']:.4f} | {r['psnr'] - reference:+.4f} |" for r in rows]
    (args.out / "calibration.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
