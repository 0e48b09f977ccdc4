"""The codecs a benchmark compares, behind one small interface: encode an RGB array, decode the bytes.

Each adapter has a list of settings (qualities, distances, models) that sweep its rate range on
photographs like Kodak's (about 0.1 to 2 bpp). Rates always come from the bytes a codec writes, with
its own container: a JPEG's JFIF headers, a WebP's RIFF, an AVIF's ISOBMFF boxes, a JPEG XL
codestream, a ``.vqz`` file. CompressAI counts only its entropy-coded strings, as its own evaluation
does. ``make_adapters`` builds the adapters that can run here and says why the others cannot.
"""

from __future__ import annotations

import importlib.util
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, features

CODECS = ("vqcodec", "jpeg", "webp", "avif", "jxl", "compressai")
"""Every adapter's key, in the order of the outputs (``--codecs`` takes any of them)."""

AVIF_SPEED = 6
"""libavif's default speed: slower ones cost several times the encode time for a fraction of a dB
(``benchmarks/README.md``, the codecs' table)."""

JXL_EFFORT = 7
"""libjxl's default effort."""

COMPRESSAI_ARCHITECTURES = ("bmshj2018-hyperprior", "mbt2018-mean")
"""CompressAI's MSE-optimised baselines (Ballé et al. 2018; Minnen et al. 2018), qualities 1 to 8."""


@dataclass
class Decoded:
    """A decoded image and what the codec reports about the file beside it."""

    rgb: np.ndarray
    """uint8 [H, W, 3]."""
    extra: dict[str, Any] = field(default_factory=dict)


class Adapter:
    """One codec: ``settings`` from lowest to highest rate, ``encode`` and ``decode`` for each."""

    key: str
    """Names the codec in ``--codecs`` and its output file (``KEY.json``)."""
    name: str
    description: str
    setting_name: str
    """What a setting is: "quality", "distance", "model"."""
    settings: Sequence[Any]

    def label(self, setting: Any) -> str:
        return str(setting)

    def encode(self, rgb: np.ndarray, setting: Any) -> bytes:
        raise NotImplementedError

    def decode(self, data: bytes, setting: Any) -> Decoded:
        raise NotImplementedError

    def rate_bytes(self, data: bytes) -> int:
        """The bytes that count towards the rate: the whole file, unless the codec says otherwise."""
        return len(data)

    def summarise(self, extras: list[dict[str, Any]]) -> dict[str, Any]:
        """Aggregate the images' ``Decoded.extra`` of one setting (nothing for most codecs)."""
        return {}


class PillowAdapter(Adapter):
    """JPEG, WebP or AVIF through Pillow, swept over its 0-100 quality."""

    setting_name = "quality"

    def __init__(
        self, key: str, name: str, fmt: str, settings: Sequence[int], options: dict[str, Any], library: str
    ) -> None:
        self.key, self.name, self.format = key, name, fmt
        self.settings = settings
        self.options = options
        shown = ", ".join(f"{k}={v}" for k, v in options.items())
        self.description = f"{name} ({library} via Pillow {Image.__version__}; {shown})"

    def encode(self, rgb: np.ndarray, setting: int) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, self.format, quality=setting, **self.options)
        return buffer.getvalue()

    def decode(self, data: bytes, setting: int) -> Decoded:
        with Image.open(io.BytesIO(data)) as image:
            return Decoded(np.asarray(image.convert("RGB")))


class JpegXLAdapter(Adapter):
    """JPEG XL through imagecodecs (libjxl), swept over the Butteraugli distance (lower: better)."""

    key, name, setting_name = "jxl", "JPEG XL", "distance"
    settings = (25.0, 15.0, 10.0, 7.0, 5.0, 3.5, 2.5, 1.8, 1.3, 1.0)

    def __init__(self) -> None:
        import imagecodecs

        self.codecs = imagecodecs
        self.description = (
            f"JPEG XL ({imagecodecs.jpegxl_version()} via imagecodecs {imagecodecs.__version__};"
            f" effort={JXL_EFFORT}, bare codestream)"
        )

    def encode(self, rgb: np.ndarray, setting: float) -> bytes:
        return self.codecs.jpegxl_encode(rgb, distance=setting, effort=JXL_EFFORT)

    def decode(self, data: bytes, setting: float) -> Decoded:
        return Decoded(self.codecs.jpegxl_decode(data))


class CompressAIAdapter(Adapter):
    """A CompressAI pretrained model, for the qualities whose weights are already in torch's hub cache.

    Never downloads: a quality whose weight file is not cached is left out.
    """

    setting_name = "quality"

    def __init__(self, architecture: str, settings: Sequence[int]) -> None:
        import compressai

        self.key = f"compressai-{architecture}"
        self.name = architecture
        self.architecture = architecture
        self.settings = settings
        self.description = (
            f"{architecture} (CompressAI {compressai.__version__} pretrained, MSE;"
            " rate of the entropy-coded strings only)"
        )
        self.models: dict[int, Any] = {}

    @staticmethod
    def cached_qualities(architecture: str) -> list[int]:
        """The qualities of ``architecture`` whose pretrained weights are in torch's hub cache."""
        import torch
        from compressai.zoo.image import model_urls

        cache = Path(torch.hub.get_dir()) / "checkpoints"
        urls = model_urls[architecture]["mse"]
        return [
            quality for quality, url in sorted(urls.items()) if (cache / url.rsplit("/", 1)[-1]).is_file()
        ]

    def _model(self, quality: int) -> Any:
        if quality not in self.models:
            from compressai.zoo import image_models

            model = image_models[self.architecture](quality=quality, metric="mse", pretrained=True).eval()
            model.update()
            self.models[quality] = model
        return self.models[quality]

    def encode(self, rgb: np.ndarray, setting: int) -> bytes:
        import torch

        height, width = rgb.shape[:2]
        x = torch.from_numpy(_pad(rgb, 64)).permute(2, 0, 1)[None].float() / 255.0
        with torch.inference_mode():
            out = self._model(setting).compress(x)
        strings = [group[0] for group in out["strings"]]
        shape = out["shape"]
        header = np.array([height, width, *shape, *(len(s) for s in strings)], dtype="<u4").tobytes()
        return header + b"".join(strings)

    def decode(self, data: bytes, setting: int) -> Decoded:
        import torch

        fields = np.frombuffer(data[:24], dtype="<u4")
        height, width, shape = int(fields[0]), int(fields[1]), [int(v) for v in fields[2:4]]
        split = int(fields[4])
        strings = [[data[24 : 24 + split]], [data[24 + split :]]]
        with torch.inference_mode():
            x = self._model(setting).decompress(strings, shape)["x_hat"]
        pixels = (x[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        return Decoded(np.ascontiguousarray(pixels[:height, :width]))

    def rate_bytes(self, data: bytes) -> int:
        """The entropy-coded strings' bytes, without the 24-byte header the adapter adds."""
        return len(data) - 24


class VQCodecAdapter(Adapter):
    """vqcodec: one setting per model and quality (an operating point), through the Python API.

    Decoding runs the decoder's two halves (``decode_codes``, then ``render``), which is exactly what
    ``vqcodec.decompress`` does, and keeps the bits of every level that ``vqcodec.info`` would report:
    those come from the same code walk, so each file is walked once instead of twice.
    """

    key, name, setting_name = "vqcodec", "vqcodec", "operating point"

    def __init__(
        self, label: str, codec: Any, qualities: Sequence[float], effort: int = 0, alone: bool = True
    ) -> None:
        """The model ``codec`` (a ``vqcodec.load_model`` result) named ``label``, at every quality and
        ``effort`` (the encoder's, ``vqcodec.rdo``, named in the labels unless it is 0). Beside other
        models (not ``alone``) its curve is keyed and named by its label: a curve is one model's."""
        import vqcodec

        tag = f" e{effort}" if effort else ""
        self.effort = effort
        if not alone:
            self.key, self.name = f"vqcodec-{label}", f"vqcodec ({label})"
        self.points = {f"{label}{tag} q{quality:g}": (codec, quality) for quality in qualities}
        self.settings = list(self.points)
        self.description = f"vqcodec {vqcodec.__version__} (VQ-VAE-2 codes, PixelSNAIL priors, range coder)"

    def encode(self, rgb: np.ndarray, setting: str) -> bytes:
        codec, quality = self.points[setting]
        return codec.compress(rgb, quality=quality, effort=self.effort)

    def decode(self, data: bytes, setting: str) -> Decoded:
        from vqcodec.models.config import level_names

        codec = self.points[setting][0]
        decoded = codec.decode_codes(data)
        rgb = np.asarray(codec.render(decoded).convert("RGB"))
        names = level_names(len(decoded.codes))
        return Decoded(
            rgb,
            {
                "level_bits": dict(zip(names, decoded.level_bits, strict=True)),
                "level_codes": {name: level.size for name, level in zip(names, decoded.codes, strict=True)},
                "raw_bits": sum(
                    level.size * math.log2(config.codebook_size)
                    for level, config in zip(decoded.codes, codec.model.config.vqvae.levels, strict=True)
                ),
                "file_bits": 8 * len(data),
                "payload_bits": 8 * len(decoded.file.payload),
                "dims": rgb.size,
            },
        )

    def summarise(self, extras: list[dict[str, Any]]) -> dict[str, Any]:
        """Bits per level, bits per code, bits per dimension, the priors' bits against the raw code
        bits (sum of log2 K over the codes) and the coding overhead of one operating point."""
        names = list(extras[0]["level_bits"])
        level_bits = {name: sum(e["level_bits"][name] for e in extras) for name in names}
        codes = {name: sum(e["level_codes"][name] for e in extras) for name in names}
        ideal = sum(level_bits.values())
        file_bits = sum(e["file_bits"] for e in extras)
        payload_bits = sum(e["payload_bits"] for e in extras)
        raw_bits = sum(e["raw_bits"] for e in extras)
        dims = sum(e["dims"] for e in extras)
        return {
            "bits_per_level": {name: bits / len(extras) for name, bits in level_bits.items()},
            "bits_per_code": {name: level_bits[name] / codes[name] for name in names},
            "bpd_file": file_bits / dims,
            "bpd_ideal": ideal / dims,
            "coder_overhead_percent": 100.0 * (payload_bits / ideal - 1.0),
            "prior_bits_of_raw_percent": 100.0 * ideal / raw_bits,
            "file_overhead_percent": 100.0 * (file_bits / ideal - 1.0),
        }


def load_models(names: Sequence[str]) -> list[tuple[str, Any]]:
    """(label, codec) for each vqcodec model, bundled name or file; every bundled model when none is named.

    A file's label is its stem, the name the tables show, unless two models would share it.
    """
    import vqcodec
    from vqcodec.zoo import list_models

    names = list(names) or [info.name for info in list_models()]
    if not names:
        raise ValueError("no bundled vqcodec models: name a model file with --model")
    loaded: list[tuple[str, Any]] = []
    for name in names:
        label = Path(name).stem if name.endswith(".safetensors") else name
        if any(label == other for other, _ in loaded):
            label = name
        loaded.append((label, vqcodec.load_model(name)))
    return loaded


def _pad(rgb: np.ndarray, multiple: int) -> np.ndarray:
    height, width = rgb.shape[:2]
    return np.pad(rgb, ((0, -height % multiple), (0, -width % multiple), (0, 0)), mode="edge")


def make_adapters(
    keys: Sequence[str], models: Sequence[tuple[str, Any]], qualities: Sequence[float], effort: int = 0
) -> tuple[list[Adapter], list[str]]:
    """The adapters for ``keys`` that can run here, and a note for each one that cannot; vqcodec runs
    each of ``models`` at ``qualities`` and ``effort``, one curve per model."""
    adapters: list[Adapter] = []
    notes: list[str] = []
    for key in keys:
        if key == "vqcodec":
            adapters += [VQCodecAdapter(*model, qualities, effort, len(models) == 1) for model in models]
        elif key == "jpeg":
            library = f"libjpeg-turbo {features.version('libjpeg_turbo')}"
            options = {"subsampling": "4:2:0", "optimize": True}
            adapters.append(
                PillowAdapter(
                    "jpeg", "JPEG", "JPEG", (3, 5, 10, 15, 20, 30, 40, 50, 70, 90), options, library
                )
            )
        elif key == "webp":
            if features.check("webp"):
                library = f"libwebp {features.version('webp')}"
                qualities = (0, 5, 10, 20, 30, 40, 50, 60, 75, 90)
                adapters.append(PillowAdapter("webp", "WebP", "WEBP", qualities, {"method": 6}, library))
            else:
                notes.append("WebP skipped: this Pillow was built without WebP.")
        elif key == "avif":
            if features.check("avif"):
                library = f"libavif {features.version('avif')}"
                qualities = (5, 10, 20, 30, 40, 50, 60, 70, 80)
                options = {"speed": AVIF_SPEED, "subsampling": "4:2:0"}
                adapters.append(PillowAdapter("avif", "AVIF", "AVIF", qualities, options, library))
            else:
                notes.append("AVIF skipped: this Pillow has no AVIF support (Pillow >= 11.2 with libavif).")
        elif key == "jxl":
            adapters.extend(_jpeg_xl(notes))
        elif key == "compressai":
            adapters.extend(_compressai(notes))
        else:
            raise ValueError(f"unknown codec {key!r}: choose from {', '.join(CODECS)}")
    return adapters, notes


def _jpeg_xl(notes: list[str]) -> list[Adapter]:
    if importlib.util.find_spec("imagecodecs") is None:
        notes.append("JPEG XL skipped: imagecodecs is not installed (pip install 'vqcodec[bench]').")
        return []
    import imagecodecs

    if not imagecodecs.JPEGXL.available:
        notes.append("JPEG XL skipped: this imagecodecs build has no JPEG XL codec.")
        return []
    return [JpegXLAdapter()]


def _compressai(notes: list[str]) -> list[Adapter]:
    if importlib.util.find_spec("compressai") is None:
        notes.append("CompressAI skipped: compressai is not installed.")
        return []
    adapters: list[Adapter] = []
    for architecture in COMPRESSAI_ARCHITECTURES:
        qualities = CompressAIAdapter.cached_qualities(architecture)
        if qualities:
            adapters.append(CompressAIAdapter(architecture, qualities))
        else:
            notes.append(
                f"CompressAI {architecture} skipped: no pretrained weights in torch's hub cache"
                " (the benchmark never downloads them)."
            )
    return adapters
