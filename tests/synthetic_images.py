"""Synthetic photographs for training tests: smooth colour gradients with a few solid shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def make_images(folder: Path, n: int = 8, width: int = 128, height: int = 96, seed: int = 0) -> Path:
    """Write ``n`` images to ``folder`` (PNG and JPEG with an upper-case suffix, one in a subfolder)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    for i in range(n):
        a, b, c = rng.uniform(0.1, 1.0, (3, 3, 1, 1))
        pixels = np.clip((a + b * x + c * y) / 3.0, 0.0, 1.0)  # [3, H, W] gradients
        image = Image.fromarray((pixels.transpose(1, 2, 0) * 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x0, y0 = int(rng.integers(0, width - 24)), int(rng.integers(0, height - 24))
            size = int(rng.integers(8, 24))
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            draw.ellipse([x0, y0, x0 + size, y0 + size], fill=colour)
        sub = folder / "sub" if i == n - 1 else folder
        sub.mkdir(parents=True, exist_ok=True)
        image.save(sub / (f"img{i}.png" if i % 2 else f"img{i}.JPG"), quality=95)
    return folder
