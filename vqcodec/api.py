"""The Python API: what ``import vqcodec`` offers, one function per thing a user does.

Each function takes what a user has (paths, bytes, file objects, Pillow images, arrays; a model name,
a model file or a ``Codec``) and hands the work to a ``Codec`` (``vqcodec.codec``), inside the
thread limit the user asked for. torch is imported only by the functions that need it, so that reading
a file's header (``info``) stays fast.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from vqcodec.coding.order import DEFAULT_TILE
from vqcodec.quality import DEFAULT_QUALITY
from vqcodec.rdo import DEFAULT_EFFORT
from vqcodec.threads import check_threads, limited

if TYPE_CHECKING:
    from PIL import Image

    from vqcodec.codec import Codec, ImageInput
    from vqcodec.coding.container import VQZFile
    from vqcodec.fileinfo import VQZInput
    from vqcodec.rate import Reached
    from vqcodec.walk import Progress


def compress(
    image: ImageInput,
    model: Codec | str | os.PathLike[str] | None = None,
    device: str | None = None,
    progress: Progress | None = None,
    quality: float | None = None,
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
    (best; None, the default, is 4), any number in between; below 4 the image is coded at a smaller
    size (``vqcodec.quality``). ``target_size`` (bytes), ``target_bpp`` or ``target_psnr`` (dB): one of
    them picks the quality instead: the best file no larger, or the smallest at least as good
    (``vqcodec.rate``; ValueError if no quality meets it, or if a quality is given too).
    ``tile``: the largest side in pixels of the tiles coded as independent images, at least 64 and
    a multiple of the model's multiple (8 for the default), the image cut into as few tiles as evenly
    as it can be; None codes whole code maps: a few fewer bits, decoding in more sequential steps.
    ``metadata``: the image metadata the file keeps: "all" (the default), "none", or some of "exif",
    "icc", "xmp" (a comma-separated string or an iterable; ``Codec.compress``). ``threads``: the CPU
    threads torch may use for the call (None: torch's setting, which is the number of cores).
    ``effort``: 0 (the default) takes the nearest codewords; 1 and 2 choose the codes for rate too,
    fewer bits at equal PSNR for a slower encode (``vqcodec.rdo``).
    """
    return compress_result(
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
    ).data


def compress_result(
    image: ImageInput,
    model: Codec | str | os.PathLike[str] | None = None,
    device: str | None = None,
    progress: Progress | None = None,
    quality: float | None = None,
    tile: int | None = DEFAULT_TILE,
    *,
    metadata: str | Iterable[str] = "all",
    threads: int | None = None,
    target_size: int | None = None,
    target_bpp: float | None = None,
    target_psnr: float | None = None,
    effort: int = DEFAULT_EFFORT,
) -> Reached:
    """``compress``, and what it settled on (``vqcodec.rate.Reached``): the bytes (``.data``), the
    quality (the one given, or the one a target picked), the (width, height) the image was coded at
    and, for a PSNR target, the PSNR reached."""
    from vqcodec.coding.container import VQZFile
    from vqcodec.rate import Reached, Target, compress_to_target

    targets = (target_size, target_bpp, target_psnr)
    aimed = any(target is not None for target in targets)
    if aimed and quality is not None:
        raise ValueError("a target picks the quality: give a quality or a target, not both")
    with limited(threads):
        codec = open_codec(model, device)
        if aimed:
            return compress_to_target(codec, image, Target(*targets), tile, metadata, progress, effort)
        quality = DEFAULT_QUALITY if quality is None else quality
        data = codec.compress(image, progress, quality, tile, metadata=metadata, effort=effort)
        file = VQZFile.from_bytes(data)
        return Reached(data, quality, (file.coded_width, file.coded_height), None)


def decompress(
    data: VQZInput | VQZFile,
    model: Codec | str | os.PathLike[str] | None = None,
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
    with limited(threads):
        file = _vqz_file(data)
        return codec_for(file, model, device).decompress(file, progress)


def decompress_many(
    datas: Sequence[VQZInput | VQZFile],
    model: Codec | str | os.PathLike[str] | None = None,
    device: str | None = None,
    progress: Progress | None = None,
    *,
    threads: int | None = None,
) -> list[Image.Image]:
    """Decode several ``.vqz`` files of one model (each a path, bytes or a binary file, as for
    ``decompress``) to PIL images, in order. Files of the same size are decoded together, every
    wavefront step running the priors for all of them at once: the same images as one by one, in less
    time per image on a GPU, where one file leaves most of it idle (on the CPU hardly less:
    ``vqcodec bench speed``), and more memory (``Budgets.batch_rows`` bounds how many go together).
    """
    from vqcodec.coding.container import VQZFile

    if isinstance(datas, (str, os.PathLike, bytes, bytearray, memoryview, VQZFile)) or hasattr(datas, "read"):
        raise TypeError("decompress_many takes a sequence of files; decompress takes one")
    with limited(threads):
        files = [_vqz_file(data) for data in datas]
        if not files:
            return []
        return codec_for(files[0], model, device).decompress_many(files, progress)


def info(
    data: VQZInput,
    model: Codec | str | os.PathLike[str] | None = None,
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
    without ``bits``, or when the model is not available. A ``model`` given is checked against the
    file's (``ModelMismatchError``) with or without ``bits``; ``device``, ``progress`` and ``threads``
    only matter with ``bits``.
    """
    from vqcodec import zoo
    from vqcodec.coding.container import VQZFile
    from vqcodec.fileinfo import describe, read_vqz

    check_threads(threads)
    data = read_vqz(data)
    file = VQZFile.from_bytes(data)
    if not bits and model is not None:  # a model file's id is its bytes' digest: hashed, not loaded
        if isinstance(model, (str, os.PathLike)):
            file.check_model(bytes.fromhex(zoo.sha256_of(zoo.resolve_model(model))))
        else:
            file.check_model(bytes.fromhex(model.sha256))
    if not bits or (model is None and zoo.find_by_id(file.model_id) is None):
        return describe(data, file)
    with limited(threads):
        return codec_for(file, model, device).info(data, progress)


def load_model(name_or_path: str | os.PathLike[str] | None = None, device: str | None = None) -> Codec:
    """A codec for a bundled model's name or a model file, to pass as ``model=`` (loaded once)."""
    from vqcodec.codec import Codec

    return Codec.open(name_or_path, device)


def open_codec(model: Codec | str | os.PathLike[str] | None = None, device: Any = None) -> Codec:
    """A Codec for ``model=`` arguments: a Codec as is, else a bundled model's name or a model file."""
    from vqcodec.codec import Codec, check_device

    if not isinstance(model, Codec):
        return Codec.open(model, device)
    if device is not None:
        wanted = check_device(device)
        if wanted.type != model.device.type or wanted.index not in (None, model.device.index):
            raise ValueError(f"the model given is on {model.device}, not {device}: load it there")
    return model


def codec_for(
    file: VQZFile, model: Codec | str | os.PathLike[str] | None = None, device: Any = None
) -> Codec:
    """The codec to decode ``file``: ``model`` if given, else the bundled model whose id it carries."""
    from vqcodec import zoo
    from vqcodec.errors import ModelMismatchError

    if model is not None:
        return open_codec(model, device)
    bundled = zoo.find_by_id(file.model_id)
    retired = zoo.RETIRED_MODELS.get(file.model_id.hex())
    if bundled is None and retired is not None:
        raise ModelMismatchError(
            f"file needs model {file.model_id.hex()}, the default model of vqcodec {retired}, which this"
            f" version no longer bundles: decode it with that version (pip install 'vqcodec=={retired}')"
            " or give its model file explicitly"
        )
    if bundled is None:
        raise ModelMismatchError(
            f"file needs model {file.model_id.hex()}, which is not bundled; give its model file explicitly"
        )
    return open_codec(bundled.path, device)


def _vqz_file(data: VQZInput | VQZFile) -> VQZFile:
    from vqcodec.coding.container import VQZFile
    from vqcodec.fileinfo import read_vqz

    return data if isinstance(data, VQZFile) else VQZFile.from_bytes(read_vqz(data))
