"""Sampling: draw images from a model file's priors and write them as PNG files."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from vqcodec.models.model import sample_images
from vqcodec.zoo import resolve_model
from vqcodec.zoo.modelfile import atomic_path, read_model


def sample_to_folder(
    model_file: str | Path | None,
    out: str | Path,
    n: int,
    width: int = 256,
    height: int = 256,
    temperature: float = 1.0,
    seed: int = 0,
    device: str = "cpu",
    force: bool = False,
) -> list[Path]:
    """Write ``n`` sampled ``width`` x ``height`` images as ``out/sample_<seed>_<i>.png``; return paths.

    ``model_file``: a bundled model's name or a model file; None for the bundled default. Every target is
    checked before the (slow) draws: an existing one is FileExistsError unless ``force``. Each file is
    written atomically, so an interrupted run leaves no partial PNG.
    """
    model_path = resolve_model(model_file)
    paths = [Path(out) / f"sample_{seed}_{i:03d}.png" for i in range(n)]
    for path in paths:
        _check_target(path, model_path, force)
    model, _ = read_model(model_path, device)
    images = sample_images(model, n, height, width, temperature, seed).cpu()
    Path(out).mkdir(parents=True, exist_ok=True)
    for path, image in zip(paths, images, strict=True):
        with atomic_path(path) as tmp:
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp, format="PNG")
    return paths


def _check_target(path: Path, model_path: Path, force: bool) -> None:
    """Refuse a target that is a folder or the model file read (even with ``force``), or that exists."""
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder")
    if path.exists() and os.path.samefile(path, model_path):
        raise FileExistsError(f"{path} is the model file; refusing to overwrite it")
    if (path.exists() or path.is_symlink()) and not force:
        raise FileExistsError(f"{path} exists (use --force to overwrite it)")
