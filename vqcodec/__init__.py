"""vqcodec: a learned lossy image codec built on VQ-VAE-2 and PixelSNAIL priors.

    import vqcodec
    data = vqcodec.compress("photo.png")            # .vqz bytes, with the bundled default model
    small = vqcodec.compress("photo.png", quality=1)  # the smallest operating point (1 to 4)
    image = vqcodec.decompress(data)                # a PIL image (the bundled model the file names)
    image = vqcodec.decompress("photo.vqz")         # a path (a str is a path; bytes are data) or a file
    images = vqcodec.decompress_many([a, b, c])     # several files: same-size ones decode together
    vqcodec.info("photo.vqz")                       # geometry, model, levels, sizes: the header only
    vqcodec.info("photo.vqz", bits=True)            # also the bits of every level (decodes the codes)
    codec = vqcodec.load_model("tiny.safetensors")  # a model file, or a bundled model's name
    data = vqcodec.compress(image, model=codec, threads=1, metadata="none")

``compress``, ``decompress``, ``decompress_many`` and ``info`` take ``threads=``: the CPU threads torch
may use for the call (None: torch's setting, the number of cores; ``vqcodec.threads``). A damaged or
unsuitable file raises a ``vqcodec.errors.VQZError``, which is an ``OSError`` as Pillow's errors are.

Importing the package registers a Pillow plugin (``Image.open("photo.vqz")``, ``image.save("x.vqz")``)
and asks OpenMP for short spins of torch's idle threads (``GOMP_SPINCOUNT``, unless it or
``OMP_WAIT_POLICY`` is set, and only if torch is not imported yet), so that a busy machine does not
slow vqcodec down many times over (``vqcodec.threads``). torch is imported only when a function that
needs it is first called.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from vqcodec import pillow_plugin, threads
from vqcodec.quality import DEFAULT_QUALITY, DEFAULT_TILE
from vqcodec.rdo import DEFAULT_EFFORT

if TYPE_CHECKING:
    from PIL import Image

    from vqcodec.codec import Codec, ImageInput, ModelArg, Progress
    from vqcodec.coding.container import VQZFile
    from vqcodec.fileinfo import VQZInput

__version__ = "0.1.0"

__all__ = ["compress", "decompress", "decompress_many", "info", "load_model"]

threads.spin_briefly()
pillow_plugin.register()


def compress(
    image: ImageInput,
    model: ModelArg = None,
    device: str | None = None,
    progress: Progress | None = None,
    quality: float = DEFAULT_QUALITY,
    tile: int | None = DEFAULT_TILE,
    *,
    metadata: str | Iterable[str] = "all",
    threads: int | None = None,
    target_size: int | None = None,
    target_bpp: float | None = None,
    target_psnr: float | None = None,
    effort: int = DEFAULT_EFFORT,
) -> bytes:
    """Compress an image (path, bytes, binary file, PIL image or uint8 array) to ``.vqz`` bytes.

    ``model``: a bundled model's name, a model file, or a ``load_model`` result; None for the
    bundled default. ``device``: "cpu" (default) or "cuda". ``quality``: 0 (smallest file) to 4
    (best, the default), any number in between; below 4 the image is coded at a smaller size
    (``vqcodec.quality``). ``target_size`` (bytes), ``target_bpp`` or ``target_psnr`` (dB): one of
    them picks the quality instead: the best file no larger, or the smallest at least as good
    (``vqcodec.rate``; ValueError if no quality meets it).
    ``tile``: the largest side in pixels of the tiles coded as independent images, at least 64 and
    a multiple of the model's multiple (8 for the default), the image cut into as few tiles as evenly
    as it can be; None codes whole code maps: about 1 % fewer bits, decoding in more sequential steps.
    ``metadata``: the image metadata the file keeps: "all" (the default), "none", or some of "exif",
    "icc", "xmp" (a comma-separated string or an iterable; ``Codec.compress``). ``threads``: the CPU
    threads torch may use for the call (None: torch's setting, which is the number of cores).
    ``effort``: 0 (the default) takes the nearest codewords; 1 and 2 choose the codes for rate too,
    fewer bits at equal PSNR for a slower encode (``vqcodec.rdo``).
    """
    from vqcodec import codec

    return codec.compress(
        image,
        model,
        device,
        progress,
        quality,
        tile,
        metadata=metadata,
        threads=threads,
        target_size=target_size,
        target_bpp=target_bpp,
        target_psnr=target_psnr,
        effort=effort,
    )


def decompress(
    data: VQZInput | VQZFile,
    model: ModelArg = None,
    device: str | None = None,
    progress: Progress | None = None,
    *,
    threads: int | None = None,
) -> Image.Image:
    """Decode a ``.vqz`` file to a PIL image; without ``model``, with the bundled model the file names.

    ``data``: a path (``str`` or ``os.PathLike``: a ``str`` is always a path, never the file's
    content), the file's ``bytes``, ``bytearray`` or ``memoryview``, or a binary file object (read to
    its end). ``threads``: the CPU threads torch may use (None: torch's setting). Raises a
    ``vqcodec.errors.VQZError`` subclass (an ``OSError``) for any damaged or unsuitable file.
    """
    from vqcodec import codec

    return codec.decompress(data, model, device, progress, threads=threads)


def decompress_many(
    datas: Sequence[VQZInput | VQZFile],
    model: ModelArg = None,
    device: str | None = None,
    progress: Progress | None = None,
    *,
    threads: int | None = None,
) -> list[Image.Image]:
    """Decode several ``.vqz`` files of one model (each a path, bytes or a binary file, as for
    ``decompress``) to PIL images, in order. Files of the same size are decoded together, every
    wavefront step running the priors for all of them at once: the same images as one by one, in less
    time per image (and more memory: on the CPU, up to 8 Kodak files at a time, 1.6 GB).
    """
    from vqcodec import codec

    return codec.decompress_many(datas, model, device, progress, threads=threads)


def info(
    data: VQZInput,
    model: ModelArg = None,
    device: str | None = None,
    *,
    bits: bool = False,
    progress: Progress | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """What a ``.vqz`` file (a path, bytes or a binary file, as for ``decompress``) holds: geometry,
    colour mode, model, code-map shapes and sizes, read from its header alone (fast: no model).

    ``bits=True`` also decodes the codes (no pixels) with the file's model, given or bundled, to fill
    in the ideal bits of every level and the range coder's overhead over them; those fields are None
    without ``bits``, or when the model is not available. ``model``, ``device``, ``progress`` and
    ``threads`` only matter with ``bits``.
    """
    if not bits:  # the header alone: no torch to import
        from vqcodec.fileinfo import describe, read_vqz
        from vqcodec.threads import check_threads

        check_threads(threads)
        return describe(read_vqz(data))
    from vqcodec import codec

    return codec.info(data, model, device, progress, bits=True, threads=threads)


def load_model(name_or_path: str | os.PathLike[str] | None = None, device: str | None = None) -> Codec:
    """A codec for a bundled model's name or a model file, to pass as ``model=`` (loaded once)."""
    from vqcodec import codec

    return codec.Codec.open(name_or_path, device)
