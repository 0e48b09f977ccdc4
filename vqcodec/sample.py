"""Sampling: draw images from a model file's priors and write them as PNG files.

torch is imported when images are drawn, so that the command line reads the limits below at once."""

from __future__ import annotations

import math
import os
from pathlib import Path

from PIL import Image

from vqcodec.imageio import MAX_IMAGE_SIDE
from vqcodec.zoo import resolve_model

MAX_SAMPLE_PIXELS = 2**22
"""The most pixels one call draws, all its images together: they are drawn and decoded as one batch,
untiled, at about 0.5 KB a pixel (the codec tiles, and needs 1.5 GB for its largest images), so the
peak stays near 2 GB; e.g. 64 images of 256x256, or one of 2048x2048."""

MIN_TEMPERATURE = 1e-6
"""The lowest softmax temperature: there the draws are the most likely codes, whatever the seed (lower
changes nothing; at 1e-3 near-ties are still drawn at random), while logits would have to exceed 1e32
to overflow float32 (near 1e-38 they do, and the draw fails)."""


def sample_to_folder(
    model_file: str | Path | None,
    out: str | Path,
    n: int,
    width: int = 256,
    height: int = 256,
    temperature: float = 1.0,
    seed: int = 0,
    device: str | None = None,
    force: bool = False,
) -> list[Path]:
    """Write ``n`` sampled ``width`` x ``height`` images as ``out/sample_<seed>_<i>.png``; return paths.

    ``model_file``: a bundled model's name or a model file; None for the bundled default. ``device``:
    None for CUDA where there is one, else the CPU. ValueError beyond ``MAX_SAMPLE_PIXELS`` in all,
    ``MAX_IMAGE_SIDE`` a side, or below ``MIN_TEMPERATURE``. Every target is checked before the (slow)
    draws: an existing one is FileExistsError unless ``force``. Each file is written atomically, so an
    interrupted run leaves no partial PNG.
    """
    check_sample_size(n, width, height)
    if not (math.isfinite(temperature) and temperature >= MIN_TEMPERATURE):
        raise ValueError(f"the temperature must be a finite number of at least {MIN_TEMPERATURE:g}")
    from vqcodec.models.model import sample_images
    from vqcodec.train.run import default_device
    from vqcodec.zoo.modelfile import atomic_path, read_model

    model_path = resolve_model(model_file)
    paths = [Path(out) / f"sample_{seed}_{i:03d}.png" for i in range(n)]
    for path in paths:
        _check_target(path, model_path, force)
    model, _ = read_model(model_path, device or default_device())
    images = sample_images(model, n, height, width, temperature, seed).cpu()
    Path(out).mkdir(parents=True, exist_ok=True)
    for path, image in zip(paths, images, strict=True):
        with atomic_path(path) as tmp:
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp, format="PNG")
    return paths


def check_sample_size(n: int, width: int, height: int) -> None:
    """ValueError unless ``n`` images of ``width`` x ``height`` are within what one call draws."""
    if min(n, width, height) < 1 or max(width, height) > MAX_IMAGE_SIDE:
        raise ValueError(
            f"{n} images of {width}x{height}: give at least one, of 1 to {MAX_IMAGE_SIDE} a side"
        )
    if n * width * height > MAX_SAMPLE_PIXELS:
        raise ValueError(
            f"{n} images of {width}x{height} are {n * width * height} pixels, more than one run draws"
            f" ({MAX_SAMPLE_PIXELS})"
        )


def _check_target(path: Path, model_path: Path, force: bool) -> None:
    """Refuse a target that is a folder or the model file read (even with ``force``), or that exists."""
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder")
    if path.exists() and os.path.samefile(path, model_path):
        raise FileExistsError(f"{path} is the model file; refusing to overwrite it")
    if (path.exists() or path.is_symlink()) and not force:
        raise FileExistsError(f"{path} exists (use --force to overwrite it)")
