"""A Pillow plugin, so that ``Image.open("photo.vqz")`` works once ``vqcodec`` is imported.

Opening reads and checks the container only (size, mode, ICC profile); the pixels are decoded on
``load()`` with the bundled model whose id the file carries. Writing ``.vqz`` goes through
``vqcodec.compress``, which needs to know the model.
"""

from __future__ import annotations

from PIL import Image, ImageFile

from vqcodec.coding.container import SIGNATURE, VQZFile

FORMAT = "VQZ"
MIME = "image/x-vqz"


def _accept(prefix: bytes) -> bool:
    return prefix[: len(SIGNATURE)] == SIGNATURE


class VQZImageFile(ImageFile.ImageFile):
    format = FORMAT
    format_description = "vqcodec learned lossy image"

    def _open(self) -> None:
        # Raises a VQZError on a damaged file: it does claim to be .vqz, so say what is wrong with it.
        self._vqz: VQZFile | None = VQZFile.from_bytes(self.fp.read())
        self._size = (self._vqz.width, self._vqz.height)
        self._mode = self._vqz.colour.name
        if self._vqz.icc is not None:
            self.info["icc_profile"] = self._vqz.icc

    def load(self) -> Image.core.PixelAccess | None:
        if self._vqz is not None:
            from vqcodec.codec import decompress  # torch is only needed once pixels are wanted

            self.im = decompress(self._vqz).im
            self._vqz = None
        return super().load()


def register() -> None:
    Image.register_open(FORMAT, VQZImageFile, _accept)
    Image.register_extension(FORMAT, ".vqz")
    Image.register_mime(FORMAT, MIME)
