"""vqcodec: a learned lossy image codec built on VQ-VAE-2 and PixelSNAIL priors.

    import vqcodec
    data = vqcodec.compress("photo.png")            # .vqz bytes, with the bundled default model
    small = vqcodec.compress("photo.png", quality=1)  # the smallest operating point (1 to 4)
    image = vqcodec.decompress(data)                # a PIL image (the bundled model the file names)
    images = vqcodec.decompress_many([a, b, c])     # several files: same-size ones decode together
    vqcodec.info(data)                              # geometry, model, levels, bits
    codec = vqcodec.load_model("tiny.safetensors")  # a model file, or a bundled model's name
    data = vqcodec.compress(image, model=codec)

Importing the package registers a Pillow plugin (``Image.open("photo.vqz")``); torch is imported
only when a function that needs it is first called.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from vqcodec import pillow_plugin, threads
from vqcodec.quality import DEFAULT_QUALITY, DEFAULT_TILE

if TYPE_CHECKING:
    from PIL import Image

    from vqcodec.codec import Codec, ImageInput, ModelArg, Progress

__version__ = "0.1.0"

__all__ = ["compress", "decompress", "decompress_many", "info", "load_model"]

threads.wait_passively()
pillow_plugin.register()


def compress(
    image: ImageInput,
    model: ModelArg = None,
    device: str | None = None,
    progress: Progress | None = None,
    quality: int = DEFAULT_QUALITY,
    tile: int | None = DEFAULT_TILE,
) -> bytes:
    """Compress an image (path, bytes, binary file, PIL image or uint8 array) to ``.vqz`` bytes.

    ``model``: a bundled model's name, a model file, or a ``load_model`` result; None for the
    bundled default. ``device``: "cpu" (default) or "cuda". ``quality``: 1 (smallest file) to 4
    (best, the default); below 4 the image is coded at a smaller size (``vqcodec.quality``).
    ``tile``: the largest side in pixels of the tiles coded as independent images, at least 64 and
    a multiple of the model's multiple (8 for the default), the image cut into as few tiles as evenly
    as it can be; None codes whole code maps: about 1 % fewer bits, decoding in more sequential steps.
    """
    from vqcodec import codec

    return codec.compress(image, model, device, progress, quality, tile)


def decompress(
    data: bytes, model: ModelArg = None, device: str | None = None, progress: Progress | None = None
) -> Image.Image:
    """Decode ``.vqz`` bytes to a PIL image; without ``model``, with the bundled model the file names.

    Raises a ``vqcodec.errors.VQZError`` subclass for any damaged or unsuitable file.
    """
    from vqcodec import codec

    return codec.decompress(data, model, device, progress)


def decompress_many(
    datas: Sequence[bytes],
    model: ModelArg = None,
    device: str | None = None,
    progress: Progress | None = None,
) -> list[Image.Image]:
    """Decode several ``.vqz`` files of one model to PIL images, in order. Files of the same size are
    decoded together, every wavefront step running the priors for all of them at once: the same
    images as one by one, in less time per image (and more memory: on the CPU, up to 8 Kodak files
    at a time, 1.6 GB).
    """
    from vqcodec import codec

    return codec.decompress_many(datas, model, device, progress)


def info(data: bytes, model: ModelArg = None, device: str | None = None) -> dict[str, Any]:
    """What a ``.vqz`` file holds; with its model available, also the bits of every level."""
    from vqcodec import codec

    return codec.info(data, model, device)


def load_model(name_or_path: str | os.PathLike[str] | None = None, device: str | None = None) -> Codec:
    """A codec for a bundled model's name or a model file, to pass as ``model=`` (loaded once)."""
    from vqcodec import codec

    return codec.Codec.open(name_or_path, device)
