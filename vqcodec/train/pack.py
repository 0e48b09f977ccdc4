"""Pack an image folder into a small training set that travels (for example to a GPU machine).

Every image is read as training reads it (``vqcodec.imageio.load_image``: turned upright by its EXIF
orientation, refused over the size limits), downscaled so that its short side is ``short_side`` pixels
(never upscaled) and re-encoded as WebP. Downscaling also hides the faint JPEG artefacts of the source
photographs. The whole plan is checked before anything is written, and each copy is written atomically.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from vqcodec.imageio import load_image
from vqcodec.zoo.modelfile import atomic_path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".ppm"}
PACKED_SUFFIX = ".webp"


def iter_images(folder: str | Path) -> Iterator[Path]:
    """Every image file under ``folder``, recursively, in a stable order."""
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            yield path


def plan_pack(src: Path, dst: Path, force: bool = False) -> dict[Path, Path]:
    """Each copy to write under ``dst`` and the image of ``src`` it is made from.

    Refused before anything is written, so that a bad plan leaves every file as it was: a ``dst`` that is
    ``src``, lies inside it or holds it (a copy could replace an image; FileExistsError), a folder with no
    images and two images that would become one copy (``b.jpg`` and ``b.png``; ValueError),
    and copies that exist already, unless ``force``.
    """
    if not src.is_dir():
        raise NotADirectoryError(f"{src} is not a folder of images")
    images, out = src.resolve(), dst.resolve()
    if out == images:
        raise FileExistsError(f"{dst} is the image folder itself: write the packed copies elsewhere")
    if out.is_relative_to(images):
        raise FileExistsError(f"{dst} lies inside the image folder {src}: write the packed copies elsewhere")
    if images.is_relative_to(out):
        raise FileExistsError(f"{dst} holds the image folder {src}: write the packed copies elsewhere")
    sources = list(iter_images(src))
    if not sources:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {src}")
    copies: dict[Path, Path] = {}
    for source in sources:
        target = dst / source.relative_to(src).with_suffix(PACKED_SUFFIX)
        if target in copies:
            raise ValueError(f"{copies[target]} and {source} would both be written to {target}")
        if target.resolve().is_relative_to(images):  # through a symbolic link under dst
            raise FileExistsError(f"{target} lies inside the image folder {src}: refusing to write it")
        if target.is_dir():
            raise IsADirectoryError(f"{target} is a folder")
        copies[target] = source
    existing = [target for target in copies if target.exists() or target.is_symlink()]
    if existing and not force:
        more = f" and {len(existing) - 1} more copies exist" if existing[1:] else " exists"
        raise FileExistsError(f"{existing[0]}{more} (use --force to overwrite)")
    return copies


def pack_folder(
    src: str | Path, dst: str | Path, short_side: int = 288, quality: int = 90, force: bool = False
) -> int:
    """Write a downscaled WebP copy of every image of ``src`` into ``dst``; returns the byte count.

    Existing copies are replaced only with ``force``; see ``plan_pack`` for what is refused.
    """
    copies = plan_pack(Path(src), Path(dst), force)
    total = 0
    for target, source in tqdm(copies.items(), desc="pack", unit="img"):
        image = Image.fromarray(load_image(source).rgb)
        scale = short_side / min(image.size)
        if scale < 1:
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.LANCZOS)
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            image.save(tmp, "WEBP", quality=quality, method=4)
        total += target.stat().st_size
    return total
