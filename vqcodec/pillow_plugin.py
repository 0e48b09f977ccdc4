"""A Pillow plugin, so that ``Image.open("photo.vqz")`` and ``image.save("photo.vqz")`` work once
``vqcodec`` is imported.

Opening reads and checks the container only (size, mode, ICC profile); the pixels are decoded on
``load()`` with the bundled model whose id the file carries. Saving goes through ``vqcodec.compress``
with the encoder options given as save parameters::

    image.save("photo.vqz")                                   # the bundled default model, quality 4
    image.save(fp, format="VQZ", quality=3, model="default", tile=256, threads=1, metadata="none")

``model`` (a bundled model's name, a model file or a ``vqcodec.load_model`` result), ``device``,
``quality``, ``tile``, ``threads``, ``metadata`` and ``effort`` are those of ``vqcodec.compress``; other
parameters are ignored, as Pillow's own plugins do. Modes other than those the codec keeps or
converts exactly (``SAVE_MODES``) are refused with an ``OSError``, as Pillow refuses a mode a format
cannot hold: convert the image first. torch is imported only once pixels are decoded or encoded.
"""

from __future__ import annotations

from typing import IO, Any

from PIL import Image, ImageFile

from vqcodec.coding.container import SIGNATURE, VQZFile, read_stream
from vqcodec.metadata import pil_info

FORMAT = "VQZ"
MIME = "image/x-vqz"

SAVE_MODES = ("L", "LA", "RGB", "RGBA", "1", "La", "P", "PA", "RGBa", "RGBX")
"""The modes ``image.save`` writes: the four the codec keeps, and those it converts to them exactly."""
SAVE_OPTIONS = (
    "model",
    "device",
    "quality",
    "tile",
    "threads",
    "metadata",
    "effort",
    "target_size",
    "target_bpp",
    "target_psnr",
)
"""The save parameters passed on to ``vqcodec.compress``."""


def _accept(prefix: bytes) -> bool:
    return prefix[: len(SIGNATURE)] == SIGNATURE


class VQZImageFile(ImageFile.ImageFile):
    format = FORMAT
    format_description = "vqcodec learned lossy image"

    def _open(self) -> None:
        # Raises a VQZError on a damaged file: it does claim to be .vqz, so say what is wrong with it.
        self._vqz: VQZFile | None = VQZFile.from_bytes(read_stream(self.fp))  # no further than it declares
        self._size = (self._vqz.width, self._vqz.height)
        self._mode = self._vqz.colour.name
        self.info.update(pil_info(self._vqz.icc, self._vqz.exif, self._vqz.xmp))

    def load(self) -> Image.core.PixelAccess | None:
        if self._vqz is not None:
            from vqcodec.api import decompress  # torch is only needed once pixels are wanted

            self.im = decompress(self._vqz).im
            self._vqz = None
            # _open read every byte: let the file go as Pillow's own decoders do after loading
            if self._exclusive_fp and self._close_exclusive_fp_after_loading and self.fp is not None:
                self.fp.close()
            self.fp = None
        return super().load()


def _save(image: Image.Image, fp: IO[bytes], filename: str | bytes) -> None:
    if image.mode not in SAVE_MODES:
        raise OSError(
            f"cannot write mode {image.mode} as {FORMAT}; convert the image to RGB, RGBA, L or LA first"
        )
    from vqcodec.api import compress  # torch is only needed once pixels are coded

    given = image.encoderinfo
    options: dict[str, Any] = {key: given[key] for key in SAVE_OPTIONS if key in given}
    fp.write(compress(image, **options))


def register() -> None:
    Image.register_open(FORMAT, VQZImageFile, _accept)
    Image.register_save(FORMAT, _save)
    Image.register_extension(FORMAT, ".vqz")
    Image.register_mime(FORMAT, MIME)
