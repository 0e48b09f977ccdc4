"""What a ``.vqz`` file says about itself, read from its header: no model, no torch.

``vqcodec info`` without ``--bits`` needs nothing more, so it answers without importing torch, which
takes longer than everything else it does.
"""

from __future__ import annotations

import os
from typing import Any, BinaryIO

from vqcodec import zoo
from vqcodec.coding.container import VQZFile, read_stream
from vqcodec.models.config import level_names

VQZInput = str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO
"""What ``decompress`` and ``info`` take: a path (a ``str`` is always a path, never data), the file's
bytes, or a binary file object (``read_vqz``)."""


def read_vqz(data: VQZInput) -> bytes:
    """The bytes of a ``.vqz`` file given as a path (``str`` or ``os.PathLike``: a ``str`` is always a
    path), as ``bytes``, ``bytearray`` or ``memoryview``, or as a binary file object. A path or file is
    read only as far as the file's header and chunks declare (``container.read_stream``): what is not a
    .vqz file, however large, is refused after its first bytes."""
    if isinstance(data, (str, os.PathLike)):
        with open(data, "rb") as f:
            return read_stream(f)
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    read = getattr(data, "read", None)
    if read is None:
        raise TypeError(f"expected a path, bytes or a binary file object, got {type(data).__name__}")
    if not isinstance(read(0), (bytes, bytearray, memoryview)):  # a text file: read(0) decodes nothing
        raise TypeError(f"expected a file opened in binary mode, got {type(data).__name__}")
    return read_stream(data)


def describe(data: bytes, file: VQZFile | None = None) -> dict[str, Any]:
    """What a file says about itself, without a model: geometry, mode, model id, shapes, sizes."""
    file = file or VQZFile.from_bytes(data)
    names = level_names(len(file.level_shapes))
    pixels = file.width * file.height
    bundled = zoo.find_by_id(file.model_id)
    return {
        "file_bytes": len(data),
        "width": file.width,
        "height": file.height,
        "coded_width": file.coded_width,
        "coded_height": file.coded_height,
        "tile": file.tile,
        "colour": file.colour.name,
        "padding": file.padding.name.lower(),
        "model_id": file.model_id.hex(),
        "model": bundled.name if bundled else None,
        "icc_bytes": len(file.icc) if file.icc else 0,
        "exif_bytes": len(file.exif) if file.exif else 0,
        "xmp_bytes": len(file.xmp) if file.xmp else 0,
        "alpha": file.alpha is not None,
        "levels": [
            {"name": name, "shape": [h, w], "codes": h * w, "ideal_bits": None, "bits_per_code": None}
            for name, (h, w) in zip(names, file.level_shapes, strict=True)
        ],
        "payload_bytes": len(file.payload),
        "payload_bits": 8 * len(file.payload),
        "container_bytes": len(data) - len(file.payload),
        "bpp": 8 * len(data) / pixels,
        "ideal_bits": None,
        "overhead_percent": None,
    }
