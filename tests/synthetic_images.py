"""Synthetic pictures and tiny models for the tests: nothing here needs a dataset or a trained model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from vqcodec.models.config import tiny_config
from vqcodec.models.model import CodecModel
from vqcodec.zoo.modelfile import save_model


def make_images(folder: Path, n: int = 8, width: int = 128, height: int = 96, seed: int = 0) -> Path:
    """Write ``n`` photograph-like images (gradients with a few solid shapes) to ``folder``: PNG and JPEG
    with an upper-case suffix, one in a subfolder."""
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


def smooth(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Smooth synthetic uint8 [H, W, 3] content: gradients and gentle waves."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / 32.0
    a, b, c = rng.uniform(0.2, 1.0, (3, 3, 1, 1))
    planes = 0.5 + 0.3 * np.sin(a * x + b * y + 6.0 * c) + 0.15 * np.cos(x * y / 8.0)
    return (np.clip(planes, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)


def seeded_model_file(path: Path, seed: int) -> Path:
    """A random tiny model whose codebooks one training-mode pass seeded from images, so that its codes
    vary (an untrained codebook maps most pictures to a few codewords)."""
    torch.manual_seed(seed)
    model = CodecModel(tiny_config())
    images = torch.stack([torch.from_numpy(smooth(64, 64, seed + i)).permute(2, 0, 1) for i in range(4)])
    model.vqvae.train()
    with torch.no_grad():
        model.vqvae(images.float() / 255.0 - 0.5)
    save_model(model.eval(), path)
    return path
