"""The pipeline: image ⇄ code maps ⇄ ``.vqz`` bytes, one ``Codec`` per model.

Encoding (``Codec.compress``)::

    image ─read─▶ RGB ─resize (quality < 4)─▶ pad (edge) ─▶ exact VQ-VAE encoder ─▶ code maps, top first
          ─(effort > 0: rate-distortion choice of the codes, ``vqcodec.rdo``)─▶
          ─walk (``vqcodec.walk``): the exact priors' tables, step by step ─▶ range coder ─▶ payload
    header (model id, geometry, shapes, code checksum) + chunks (alpha, resample, tiles, ICC, EXIF, XMP)
        + payload ─▶ bytes (``vqcodec.coding.container``)

Decoding (``Codec.decompress``) runs the same walk with the range decoder in place of the encoder;
the exact priors give the decoder bit-identical tables, so it recovers the same codes. The code
checksum is checked before the pixel decoder runs: wrong codes never become an image. The pixels come
from the exact VQ-VAE decoder (``bitstream_spec/exact.md`` §10), the same on every platform.

The quality picks the operating point: below the top quality the image is coded at a smaller size
and resized back after decoding (as cjxl's ``--resampling``; ``vqcodec.quality``).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image

from vqcodec import rdo, zoo
from vqcodec.coding.container import ColourMode, Padding, VQZFile, code_checksum, model_id
from vqcodec.coding.entropy import RangeDecoder, RangeEncoder
from vqcodec.coding.order import DEFAULT_TILE, TILE_WAVE, CodingOrder
from vqcodec.errors import ModelFileError
from vqcodec.exact import ExactDecoder, ExactPrior
from vqcodec.exact.encoder import WHOLE_MAP_VALUES, ExactEncoder
from vqcodec.exact.gather import GEMM_CHUNK
from vqcodec.exact.quantise import ranges_under
from vqcodec.fileinfo import VQZInput, describe, read_vqz
from vqcodec.imageio import (
    MAX_IMAGE_PIXELS,
    SourceImage,
    check_size,
    crop,
    load_image,
    pad_to_multiple,
    resize,
    to_pil,
)
from vqcodec.metadata import parse_metadata
from vqcodec.models.model import CodecModel
from vqcodec.models.vqvae import Part, part_shape
from vqcodec.quality import DEFAULT_QUALITY, coded_size, scale
from vqcodec.walk import CodeStep, Progress, shifted, walk

ImageInput = str | os.PathLike[str] | bytes | BinaryIO | Image.Image | np.ndarray
"""What ``compress`` takes: a path, encoded bytes, a binary file, a Pillow image or a uint8 array."""


@dataclass(frozen=True)
class Budgets:
    """How much the codec computes at once (memory against speed), and the largest image it takes. No
    budget changes a byte or a pixel."""

    encode_part_codes: int = 2**16
    """Bottom-level codes the VQ-VAE encoder computes at once (plus its halo), in bands of rows or
    square blocks (``part_shape``): bounds the memory of encoding a large image instead of growing with
    its area."""
    render_part_codes: int = 2**14
    """Bottom-level codes the VQ-VAE decoder turns into pixels at once (plus its halo): smaller parts
    than the encoder's, whose halo is wider, since the decoder's pixel-sized maps outgrow the caches."""
    batch_rows: tuple[int, int] = (3 * TILE_WAVE, 32 * TILE_WAVE)
    """On the CPU and on a GPU, the pixel rows of the waves of the files that ``decode_many`` decodes
    together (``Codec.files_per_batch``): on 2 CPU cores more gain nothing; a GPU's throughput grows
    with them (``benchmarks/results/speed``)."""
    whole_map_values: int = WHOLE_MAP_VALUES
    """Largest tile (positions x codebook size) whose tables the encoder computes in one pass."""
    gemm_chunk: int = GEMM_CHUNK
    """Values the priors gather for one GEMM at most."""
    max_pixels: int = MAX_IMAGE_PIXELS
    """The largest image, in pixels, that the codec reads or decodes (``imageio.check_size``)."""


class ConversionWarning(UserWarning):
    """The input image lost something on its way into the codec (bit depth, frames, colour space)."""


def check_device(device: str | torch.device | None) -> torch.device:
    """The torch device for ``device`` (None: the CPU); ValueError if it is not usable here."""
    try:
        resolved = torch.device("cpu" if device is None else device)
    except RuntimeError as error:
        raise ValueError(f"invalid device {device!r}: use cpu, cuda or cuda:N") from error
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}: use cpu, cuda or cuda:N")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA is not available on this machine")
    return resolved


@dataclass(frozen=True)
class ExactModel:
    """A model's integer mirror (``vqcodec.exact``): what coding runs, on one device."""

    device: torch.device
    priors: list[ExactPrior]
    decoder: ExactDecoder
    encoder: ExactEncoder


_exact_models: weakref.WeakKeyDictionary[CodecModel, ExactModel] = weakref.WeakKeyDictionary()


def _exact(model: CodecModel, device: torch.device) -> ExactModel:
    """The exact integer priors and VQ-VAE of ``model``, built once per model (quantizing is slow)."""
    cached = _exact_models.get(model)
    if cached is None or cached.device != device:
        priors = [
            ExactPrior.from_float(prior, ranges_under(model.input_ranges, f"priors.{level}.")).to(device)
            for level, prior in enumerate(model.priors)
        ]
        decoder = ExactDecoder(model.vqvae, ranges_under(model.input_ranges, "vqvae.")).to(device)
        encoder = ExactEncoder(model.vqvae, ranges_under(model.input_ranges, "vqvae.")).to(device)
        cached = _exact_models[model] = ExactModel(device, priors, decoder, encoder)
    return cached


@dataclass(frozen=True)
class Decoded:
    """A file's decoded code maps, checked against its code checksum."""

    file: VQZFile
    codes: list[np.ndarray]
    """int64 [h, w] per level, top first."""
    level_bits: list[float]
    """Ideal bits of each level's codes under the prior's tables: ``-sum log2 p(code)``."""


class Codec:
    """A model ready to code: the CodecModel, the SHA-256 of its file, its exact priors and VQ-VAE, the
    coding order and the memory budgets."""

    def __init__(
        self,
        model: CodecModel,
        sha256: str,
        name: str | None = None,
        *,
        budgets: Budgets | None = None,
        coding_order: CodingOrder | None = None,
    ) -> None:
        self.model = model.eval()
        self.sha256 = sha256
        self.name = name
        """The bundled model's name, or None for a model file outside the zoo."""
        self.budgets = budgets or Budgets()
        self.order = coding_order or CodingOrder(model.config.vqvae.multiple)
        self.device = next(model.parameters()).device
        exact = _exact(model, self.device)
        chunk = self.budgets.gemm_chunk
        self.exact_priors = exact.priors  # shared by the codecs of one model, unless the budget differs
        if any(prior.chunk != chunk for prior in exact.priors):
            self.exact_priors = [dataclasses.replace(prior, chunk=chunk) for prior in exact.priors]
        self.exact_decoder, self.exact_encoder = exact.decoder, exact.encoder

    @classmethod
    def open(
        cls,
        name_or_path: str | os.PathLike[str] | None = None,
        device: Any = None,
        budgets: Budgets | None = None,
    ) -> Codec:
        """The codec of a bundled model (by name; None for the default) or of a model file."""
        path = zoo.resolve_model(name_or_path)
        model, sha256 = zoo.load_cached(path, check_device(device))
        try:
            return cls(model, sha256, zoo.model_name(path), budgets=budgets)
        except ValueError as e:  # a well-formed file whose weights or layers the integer engine refuses
            raise ModelFileError(f"{path}: the codec cannot run this model: {e}") from e

    def with_budgets(self, budgets: Budgets) -> Codec:
        """This codec with other memory budgets (the same model and integers)."""
        return Codec(self.model, self.sha256, self.name, budgets=budgets, coding_order=self.order)

    @property
    def model_id(self) -> bytes:
        """The 16-byte id that files written with this model carry."""
        return model_id(bytes.fromhex(self.sha256))

    @property
    def multiple(self) -> int:
        return self.model.config.vqvae.multiple

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The image size after padding to the model's multiple."""
        return -(-height // self.multiple) * self.multiple, -(-width // self.multiple) * self.multiple

    # --- encoding ----------------------------------------------------------------------------------

    def compress(
        self,
        image: ImageInput,
        progress: Progress | None = None,
        quality: float = DEFAULT_QUALITY,
        tile: int | None = DEFAULT_TILE,
        metadata: str | Iterable[str] = "all",
        effort: int = rdo.DEFAULT_EFFORT,
    ) -> bytes:
        """The ``.vqz`` bytes of ``image`` at ``quality`` (0 = smallest file to 4 = best and default, any
        number in between: ``vqcodec.quality``), its codes cut into tiles of at most ``tile`` pixels a
        side (None: whole maps, the fewest bits and the slowest decoding), keeping the ``metadata``
        kinds ("all", "none", or of "exif", "icc", "xmp": ``parse_metadata``), choosing the codes with
        ``effort`` 0 (the nearest codewords, fastest) to 2 (``vqcodec.rdo``)."""
        self.order.check_tile(tile)
        scale(quality)  # a bad quality fails before the image is read
        rdo.levels(effort, len(self.exact_priors))
        return self.encode(self.source(image, metadata), quality, tile, progress, effort=effort)[0]

    def source(self, image: ImageInput, metadata: str | Iterable[str] = "all") -> SourceImage:
        """``image`` read as the codec sees it, with the ``metadata`` kinds it keeps; lossy conversions
        of the input are ``ConversionWarning``s."""
        kinds = parse_metadata(metadata)  # a bad value fails before the image is read
        source = _read_image(image, self.budgets.max_pixels).with_metadata(kinds)
        for message in source.warnings:
            warnings.warn(message, ConversionWarning, stacklevel=3)
        return source

    def encode(
        self,
        source: SourceImage,
        quality: float = DEFAULT_QUALITY,
        tile: int | None = DEFAULT_TILE,
        progress: Progress | None = None,
        size: tuple[int, int] | None = None,
        effort: int = rdo.DEFAULT_EFFORT,
    ) -> tuple[bytes, list[np.ndarray]]:
        """The ``.vqz`` bytes of ``source`` at ``quality``, and the code maps they hold (top first);
        ``size``: the (width, height) to code it at instead of the quality's (at most the image's);
        ``effort``: which levels' codes are chosen for rate as well as distortion (``vqcodec.rdo``)."""
        chosen = rdo.levels(effort, len(self.exact_priors))
        size = size or coded_size(source.width, source.height, quality)
        if not (0 < size[0] <= source.width and 0 < size[1] <= source.height):
            raise ValueError(f"coded size {size} must lie within the image's {source.width}x{source.height}")
        rgb = source.rgb if size == (source.width, source.height) else resize(source.rgb, *size)
        maps = self.image_codes(rgb, rdo.CANDIDATES if chosen else 0)
        n = len(self.exact_priors)
        codes, ranked = maps[:n], maps[n:]
        tile_px = self.order.tile_size(*codes[0].shape, tile)
        shapes = [level.shape for level in codes]
        total = sum(self.order.n_steps(shapes, tile_px, [level]) for level in chosen) + self.order.n_steps(
            shapes, tile_px
        )
        done = 0
        for level in chosen:
            if level and level - 1 in chosen:  # the codes above changed: encode the levels below anew
                maps = self.image_codes(rgb, rdo.CANDIDATES, codes[:level])
                codes[level:], ranked = maps[level:n], maps[n:]
            report = None if progress is None else shifted(progress, done, total)
            self.choose_codes(codes, level, ranked[2 * level], ranked[2 * level + 1], tile_px, report)
            done += self.order.n_steps(shapes, tile_px, [level])
        report = None if progress is None else shifted(progress, done, total)
        return self.pack(source, codes, report, size, tile_px), codes

    def choose_codes(
        self,
        codes: list[np.ndarray],
        level: int,
        candidates: np.ndarray,
        distances: np.ndarray,
        tile: tuple[int, int] | None,
        progress: Progress | None = None,
    ) -> None:
        """The rate-distortion choice (``vqcodec.rdo``) of one level: replace its codes (in place) by the
        best of their ``candidates`` [h, w, M] at ``distances`` [h, w, M] under the tables the current
        codes give.

        The walk is fed the current codes, not the chosen ones (teacher forcing): a tile small enough
        for one pass has every table from them anyway, so a larger one, walked step by step, must get
        the same tables, whatever the budget (``Budgets.whole_map_values``)."""
        weight = rdo.rate_weight(level == len(codes) - 1)
        current, chosen = codes[level], codes[level].copy()

        def choose(freqs: np.ndarray, image: int, _level: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
            chosen[ys, xs] = rdo.choose(candidates[ys, xs], distances[ys, xs], freqs, weight)
            return current[ys, xs]

        self.walk([codes], choose, tile, known=True, levels=[level], progress=progress)
        codes[level] = chosen

    def image_codes(
        self, rgb: np.ndarray, candidates: int = 0, fixed: Sequence[np.ndarray] = ()
    ) -> list[np.ndarray]:
        """The exact VQ-VAE's code maps of uint8 RGB pixels (padded to the model's multiple), top level first:
        the same on every platform (exact.md §11). ``fixed``: the codes of the first levels, taken as
        they are. ``candidates`` M > 0 appends each level's M nearest codewords and their distances, each
        [h, w, M] (``ExactEncoder.encode``)."""
        padded = pad_to_multiple(rgb, self.multiple)
        pixels = torch.tensor(padded, device=self.device).permute(2, 0, 1)[None]
        stride = self.model.vqvae.config.bottom_stride
        map_size = (padded.shape[0] // stride, padded.shape[1] // stride)
        part = self._part(map_size, self.budgets.encode_part_codes, self.model.vqvae.encode_halo())
        upper = [torch.from_numpy(level)[None] for level in fixed]
        maps = [
            level[0].cpu().numpy() for level in self.exact_encoder.encode(pixels, part, candidates, upper)
        ]
        n = len(self.exact_priors)
        # [M, h, w] to [h, w, M]: a step's positions index them directly
        return maps[:n] + [np.ascontiguousarray(np.moveaxis(ranked, 0, -1)) for ranked in maps[n:]]

    def pack(
        self,
        source: SourceImage,
        codes: list[np.ndarray],
        progress: Progress | None = None,
        resampled: tuple[int, int] | None = None,
        tile: tuple[int, int] | None = None,
    ) -> bytes:
        """Range-code ``codes`` and wrap them with the metadata of ``source``; ``resampled`` is the
        (width, height) the codes describe when the image was resized before coding, ``tile`` the
        (width, height) in pixels of the tiles coded as independent images (``tile_size``)."""
        encoder = RangeEncoder()
        spans = min(prior.codebook_size for prior in self.exact_priors) >= 3  # ``encode_spans``
        walked: list[np.ndarray] = []  # the spans in coding order, coded in one call at the end

        def encode(freqs: np.ndarray, image: int, level: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
            symbols = codes[level][ys, xs]
            if spans:
                walked.append(freqs)
            else:
                encoder.encode(symbols, freqs, valid=True)  # the priors' tables (exact.md §7)
            return symbols

        self.walk([codes], encode, tile, known=True, spans=spans, progress=progress)
        if walked:
            encoder.encode_spans(np.concatenate(walked))
        alpha = None if source.alpha is None else np.ascontiguousarray(source.alpha, dtype=np.uint8).tobytes()
        return VQZFile(
            model_id=self.model_id,
            width=source.width,
            height=source.height,
            colour=ColourMode[source.mode],
            padding=Padding.EDGE,
            level_shapes=tuple(level.shape for level in codes),
            code_crc=code_checksum(codes),
            payload=encoder.finish(),
            icc=source.icc_profile,
            alpha=alpha,
            coded_size=None if resampled == (source.width, source.height) else resampled,
            tile=tile,
            exif=source.exif,
            xmp=source.xmp,
        ).to_bytes()

    # --- decoding ----------------------------------------------------------------------------------

    def decompress(self, data: bytes | VQZFile, progress: Progress | None = None) -> Image.Image:
        """The image in a ``.vqz`` file; raises a ``VQZError`` for any defect, before any pixel exists."""
        return self.render(self.decode_codes(data, progress))

    def decompress_many(
        self, datas: Sequence[bytes | VQZFile], progress: Progress | None = None
    ) -> list[Image.Image]:
        """The images of several files: those of one size are decoded together (``decode_many``)."""
        return [self.render(decoded) for decoded in self.decode_many(datas, progress)]

    def decode_codes(self, data: bytes | VQZFile, progress: Progress | None = None) -> Decoded:
        """Parse, check and entropy-decode a file into its code maps (checksum verified)."""
        return self.decode_many([data], progress)[0]

    def decode_many(
        self, datas: Sequence[bytes | VQZFile], progress: Progress | None = None
    ) -> list[Decoded]:
        """``decode_codes`` of several files. Files whose code maps have the same shapes and tiles are
        decoded together, every wavefront step evaluating the priors for all of them at once: the same codes
        as one by one, with the per-step overhead shared. Memory grows with the files decoded together,
        so they are taken ``files_per_batch`` at a time. Raises for the first defective file."""
        files = [data if isinstance(data, VQZFile) else VQZFile.from_bytes(data) for data in datas]
        groups: dict[tuple[tuple[tuple[int, int], ...], tuple[int, int] | None], list[int]] = {}
        for i, file in enumerate(files):
            file.check_model(bytes.fromhex(self.sha256))
            file.check_levels(self.model.code_shapes(*self.padded_size(file.coded_height, file.coded_width)))
            file.check_tile(self.multiple)
            check_size(file.width, file.height, "the .vqz file's image", self.budgets.max_pixels)
            groups.setdefault((file.level_shapes, file.tile), []).append(i)
        batches = []
        for key, members in groups.items():
            size, steps = self.files_per_batch(*key), self.order.n_steps(*key)
            batches += [(members[start : start + size], steps) for start in range(0, len(members), size)]
        total, done, decoded = sum(steps for _, steps in batches), 0, {}
        for members, steps in batches:
            report = None if progress is None else shifted(progress, done, total)
            decoded.update(zip(members, self._decode_group([files[i] for i in members], report), strict=True))
            done += steps
        return [decoded[i] for i in range(len(files))]

    def files_per_batch(self, shapes: Sequence[tuple[int, int]], tile: tuple[int, int] | None) -> int:
        """How many files with code maps of these shapes and tiles ``decode_many`` decodes together: as
        many as make waves of at most ``Budgets.batch_rows`` pixel rows (their tiles' heights added up, the
        steppers' caches growing with them), or one."""
        rows = self.multiple * max(
            sum(rect[2] for _, rect in wave) for wave in self.order.waves(shapes, 0, tile)
        )
        return max(1, self.budgets.batch_rows[self.device.type == "cuda"] // rows)

    def _decode_group(self, files: list[VQZFile], progress: Progress | None) -> list[Decoded]:
        """Decode checked files whose code maps have the same shapes and tiles, together."""
        decoders = [RangeDecoder(file.payload) for file in files]
        codes = [[np.zeros(shape, dtype=np.int64) for shape in file.level_shapes] for file in files]

        def decode(freqs: np.ndarray, image: int, *where: Any) -> np.ndarray:
            return decoders[image].decode(freqs, valid=True)  # the priors' tables (exact.md §7)

        level_bits = self.walk(codes, decode, files[0].tile, progress=progress)
        for file, decoder, maps in zip(files, decoders, codes, strict=True):
            decoder.check_exhausted()
            file.check_codes(maps)
        return [Decoded(*fields) for fields in zip(files, codes, level_bits, strict=True)]

    def _part(self, map_size: tuple[int, int], codes: int, halo: int) -> Part:
        """The VQ-VAE's part of a bottom-level map of ``map_size`` (``part_shape``)."""
        return part_shape(*map_size, codes, halo, self.multiple // self.model.vqvae.config.bottom_stride)

    def render(self, decoded: Decoded) -> Image.Image:
        """Run the exact VQ-VAE decoder (exact.md §10) on checked codes and restore the image's size, mode,
        alpha, ICC profile, EXIF and XMP."""
        file = decoded.file
        maps = [torch.from_numpy(level)[None] for level in decoded.codes]
        part = self._part(
            decoded.codes[-1].shape, self.budgets.render_part_codes, self.model.vqvae.decode_halo()
        )
        pixels = self.exact_decoder.decode(maps, part)[0].permute(1, 2, 0).cpu().numpy()
        rgb = np.ascontiguousarray(crop(pixels, file.coded_height, file.coded_width))
        if file.coded_size is not None:
            rgb = resize(rgb, file.width, file.height)
        alpha = None if file.alpha is None else np.frombuffer(file.alpha, np.uint8).reshape(rgb.shape[:2])
        return to_pil(rgb, file.colour.name, alpha, file.icc, file.exif, file.xmp)

    def walk(
        self,
        codes: list[list[np.ndarray]],
        code_step: CodeStep,
        tile: tuple[int, int] | None,
        *,
        known: bool = False,
        spans: bool = False,
        levels: Sequence[int] | None = None,
        progress: Progress | None = None,
    ) -> list[list[float]]:
        """``vqcodec.walk.walk`` with this codec's priors, coding order and budgets."""
        return walk(
            self.exact_priors,
            self.order,
            codes,
            code_step,
            tile,
            known=known,
            spans=spans,
            levels=levels,
            progress=progress,
            whole_map_values=self.budgets.whole_map_values,
        )

    # --- inspection --------------------------------------------------------------------------------

    def info(self, data: VQZInput, progress: Progress | None = None) -> dict[str, Any]:
        """``describe(data)`` plus what needs the model, from the decoded codes (no pixels): the ideal
        bits of every level and the coding overhead; ``data`` as ``read_vqz`` takes it."""
        data = read_vqz(data)
        decoded = self.decode_codes(data, progress)
        report = describe(data, decoded.file)
        report["model"] = self.name
        ideal = sum(decoded.level_bits)
        for level, bits in zip(report["levels"], decoded.level_bits, strict=True):
            level["ideal_bits"] = bits
            level["bits_per_code"] = bits / level["codes"]
        report["ideal_bits"] = ideal
        report["overhead_percent"] = 100.0 * (report["payload_bits"] / ideal - 1.0) if ideal else None
        return report


def _read_image(image: ImageInput, max_pixels: int) -> SourceImage:
    """``image`` as the codec reads it; a uint8 array must be [H, W], [H, W, 3] or [H, W, 4]."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
            raise ValueError(
                f"expected a uint8 [H, W], [H, W, 3] or [H, W, 4] array, got {image.dtype} {image.shape}"
            )
        if image.size == 0:
            raise ValueError(f"expected a non-empty image array, got shape {image.shape}")
        image = Image.fromarray(np.ascontiguousarray(image))
    return load_image(image, max_pixels)
