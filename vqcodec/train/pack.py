"""Pack an image folder into a small training set that travels (for example to a GPU machine).

Every image is downscaled so that its short side is ``short_side`` pixels (never upscaled) and
re-encoded as WebP. Downscaling also hides the faint JPEG artefacts of the source photographs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from PIL import Image
from tqdm import tqdm

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".ppm"}


def iter_images(folder: str | Path) -> Iterator[Path]:
    """Every image file under ``folder``, recursively, in a stable order."""
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            yield path


def pack_folder(src: str | Path, dst: str | Path, short_side: int = 288, quality: int = 90) -> int:
    """Write a downscaled WebP copy of every image of ``src`` into ``dst``; returns the byte count."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    total = 0
    for path in tqdm(list(iter_images(src)), desc="pack", unit="img"):
        with Image.open(path) as im:
            im = im.convert("RGB")
            scale = short_side / min(im.size)
            if scale < 1:
                size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
                im = im.resize(size, Image.Resampling.LANCZOS)
            out = dst / path.relative_to(src).with_suffix(".webp")
            out.parent.mkdir(parents=True, exist_ok=True)
            im.save(out, "WEBP", quality=quality, method=4)
            total += out.stat().st_size
    return total
