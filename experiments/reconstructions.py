"""Side-by-side crops: the original, vqcodec at each quality, and JPEG at the same file size.

    python experiments/reconstructions.py [--data DIR] [--out DIR]

For every listed image and quality, the whole image is compressed with the bundled default model;
JPEG (Pillow, 4:2:0, optimised) gets the largest quality whose file is no larger than vqcodec's (its
smallest, quality 1, when even that is larger, which the caption then shows). One PNG per image and
quality shows the same crop of the three, labelled with each file's bpp and whole-image PSNR.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import vqcodec
from vqcodec.metrics import psnr

# (image, left, top): crops with fine texture, edges and flat areas
CROPS = (("kodim23", 320, 80), ("kodim05", 256, 192), ("kodim15", 224, 64))
QUALITIES = (1, 4)
SIDE = 256
OUT = Path("benchmarks/results/kodak/reconstructions")
CAPTION = 22


def jpeg_at_most(rgb: np.ndarray, budget: int) -> tuple[bytes, int]:
    """The largest-quality 4:2:0 JPEG of ``rgb`` within ``budget`` bytes (quality 1 if none fits)."""
    best = None
    for quality in range(1, 96):
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, "JPEG", quality=quality, subsampling="4:2:0", optimize=True)
        if best is None or buffer.tell() <= budget:
            best = buffer.getvalue(), quality
        if buffer.tell() > budget:
            break
    assert best is not None
    return best


def caption(original: np.ndarray, decoded: np.ndarray, data: bytes, pixels: int) -> str:
    return f"{8 * len(data) / pixels:.3f} bpp, {psnr(original, decoded):.2f} dB"


def panel(crops: list[tuple[np.ndarray, str]]) -> Image.Image:
    """The crops in a row, each with its caption above it."""
    figure = Image.new("RGB", (len(crops) * (SIDE + 8) - 8, SIDE + CAPTION), "white")
    draw = ImageDraw.Draw(figure)
    for i, (crop, caption) in enumerate(crops):
        x = i * (SIDE + 8)
        figure.paste(Image.fromarray(crop), (x, CAPTION))
        draw.text((x + 2, 4), caption, fill="black")
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/kodak"), help="the Kodak images")
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the PNGs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    codec = vqcodec.load_model()
    for name, left, top in CROPS:
        rgb = np.asarray(Image.open(args.data / f"{name}.png").convert("RGB"))
        pixels = rgb.shape[0] * rgb.shape[1]
        window = np.s_[top : top + SIDE, left : left + SIDE]
        for quality in QUALITIES:
            data = codec.compress(rgb, quality=quality)
            ours = np.asarray(codec.decompress(data).convert("RGB"))
            jpeg, jpeg_quality = jpeg_at_most(rgb, len(data))
            theirs = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
            figure = panel(
                [
                    (rgb[window], f"{name} original"),
                    (ours[window], f"vqcodec q{quality}: {caption(rgb, ours, data, pixels)}"),
                    (theirs[window], f"JPEG q{jpeg_quality}: {caption(rgb, theirs, jpeg, pixels)}"),
                ]
            )
            path = args.out / f"{name}_q{quality}.png"
            figure.save(path, optimize=True)
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
