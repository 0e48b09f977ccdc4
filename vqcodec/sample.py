"""Sampling: draw images from a model file's priors and write them as PNG files."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from vqcodec.models.model import sample_images
from vqcodec.zoo import resolve_model
from vqcodec.zoo.modelfile import read_model


def sample_to_folder(
    model_file: str | Path | None,
    out: str | Path,
    n: int,
    width: int = 256,
    height: int = 256,
    temperature: float = 1.0,
    seed: int = 0,
    device: str = "cpu",
) -> list[Path]:
    """Write ``n`` sampled ``width`` x ``height`` images as ``out/sample_<seed>_<i>.png``; return paths.

    ``model_file``: a bundled model's name or a model file; None for the bundled default.
    """
    model, _ = read_model(resolve_model(model_file), device)
    images = sample_images(model, n, height, width, temperature, seed).cpu()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = out / f"sample_{seed}_{i:03d}.png"
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
        paths.append(path)
    return paths
