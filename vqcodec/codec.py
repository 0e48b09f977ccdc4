"""The pipeline: image ⇄ code maps ⇄ ``.vqz`` bytes.

Encoding::

    image ─load_image─▶ RGB ─resize (quality < 4)─▶ pad (edge) ─▶ VQ-VAE encoder ─▶ code maps, top first
    for each level, top first, for each wavefront step t, for each tile:
        f = exact prior's integer tables for the step's positions (given earlier steps, upper levels)
        range-code the step's codes with f
    header (model id, geometry, shapes, code checksum) + chunks (alpha, resample, tiles, ICC, EXIF, XMP)
        + payload ─▶ bytes

Decoding runs the same walk with the range decoder in place of the encoder; the exact priors give
the decoder bit-identical tables, so it recovers the same codes. The code checksum is checked
before the VQ-VAE decoder runs: wrong codes never become an image. Only the code maps have to be
bit-exact; the pixels come from the float VQ-VAE decoder.

The code maps are cut into tiles (``DEFAULT_TILE`` pixels, the crops the priors are trained on),
coded as independent images: their wavefronts run side by side.

The quality picks the operating point: below the top quality the image is coded at a smaller size
and resized back after decoding (as cjxl's ``--resampling``), for 1/4 to 2/3 of the bits.
"""

from __future__ import annotations

import functools
import itertools
import operator
import os
import warnings
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image

from vqcodec import rdo, zoo
from vqcodec.coding.container import MIN_TILE, ColourMode, Padding, VQZFile, code_checksum, model_id
from vqcodec.coding.entropy import Decoder, Encoder, coded_bits
from vqcodec.exact import ExactDecoder, ExactPrior, ExactStepper
from vqcodec.exact.encoder import ExactEncoder, KnownCodes, encoder_stepper
from vqcodec.errors import ModelMismatchError
from vqcodec.fileinfo import VQZInput, describe, read_vqz
from vqcodec.imageio import (
    SourceImage,
    check_size,
    crop,
    load_image,
    pad_to_multiple,
    parse_metadata,
    resize,
    to_pil,
)
from vqcodec.models import order
from vqcodec.models.model import CodecModel
from vqcodec.quality import DEFAULT_QUALITY, DEFAULT_TILE, coded_size, scale
from vqcodec.threads import check_threads, limited

ImageInput = str | os.PathLike[str] | bytes | BinaryIO | Image.Image | np.ndarray
"""What ``compress`` takes: a path, encoded bytes, a binary file, a Pillow image or a uint8 array."""

Progress = Callable[[int, int], None]
"""Called after every wavefront step with (steps done, steps in all)."""


ENCODE_BAND_CODES = 2**16
"""Bottom-level codes the VQ-VAE encoder computes at once (plus its halo, ``VQVAE.encode_halo``): bounds
the memory of encoding a large image (a 3840x2160 one in 8 bands) instead of growing with its area. The
exact encoder's float64 maps take twice the float32 ones' memory; larger bands were not faster."""

RENDER_BAND_CODES = 2**16
"""Bottom-level codes the VQ-VAE decoder turns into pixels at once (plus its halo): bounds the memory
of decoding a large image (a few hundred MB) instead of growing with its area."""


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
        priors = [ExactPrior.from_float(prior).to(device) for prior in model.priors]
        decoder, encoder = ExactDecoder(model.vqvae).to(device), ExactEncoder(model.vqvae).to(device)
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
    """A model ready to code: the CodecModel, the SHA-256 of its file, its exact priors and VQ-VAE."""

    def __init__(self, model: CodecModel, sha256: str, name: str | None = None) -> None:
        self.model = model.eval()
        self.sha256 = sha256
        self.name = name
        """The bundled model's name, or None for a model file outside the zoo."""
        self.device = next(model.parameters()).device
        exact = _exact(model, self.device)
        self.exact_priors, self.exact_decoder, self.exact_encoder = exact.priors, exact.decoder, exact.encoder

    @classmethod
    def open(cls, name_or_path: str | os.PathLike[str] | None = None, device: Any = None) -> Codec:
        """The codec of a bundled model (by name; None for the default) or of a model file."""
        path = zoo.resolve_model(name_or_path)
        model, sha256 = zoo.load_cached(path, check_device(device))
        return cls(model, sha256, zoo.model_name(path))

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
        self.check_tile(tile)
        scale(quality)  # a bad quality fails before the image is read
        rdo.levels(effort, len(self.exact_priors))
        return self.encode(self.source(image, metadata), quality, tile, progress, effort=effort)[0]

    def source(self, image: ImageInput, metadata: str | Iterable[str] = "all") -> SourceImage:
        """``image`` read as the codec sees it, with the ``metadata`` kinds it keeps; lossy conversions
        of the input are ``ConversionWarning``s."""
        kinds = parse_metadata(metadata)  # a bad value fails before the image is read
        source = _source(image).with_metadata(kinds)
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
        tile_px = self.tile_size(*codes[0].shape, tile)
        shapes = [level.shape for level in codes]
        total = sum(self._n_steps(shapes, tile_px, [level]) for level in chosen) + self._n_steps(
            shapes, tile_px
        )
        done = 0
        for level in chosen:
            if level and level - 1 in chosen:  # the codes above changed: encode the levels below anew
                maps = self.image_codes(rgb, rdo.CANDIDATES, codes[:level])
                codes[level:], ranked = maps[level:n], maps[n:]
            report = None if progress is None else _shifted(progress, done, total)
            self.choose_codes(codes, level, ranked[2 * level], ranked[2 * level + 1], tile_px, report)
            done += self._n_steps(shapes, tile_px, [level])
        report = None if progress is None else _shifted(progress, done, total)
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
        codes give."""
        weight = rdo.rate_weight(level == len(codes) - 1)

        def choose(freqs: np.ndarray, image: int, _level: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
            return rdo.choose(candidates[ys, xs], distances[ys, xs], freqs, weight)

        self._walk([codes], choose, progress, tile, known=True, levels=[level])

    def check_tile(self, tile: int | None) -> None:
        """Raise ValueError unless ``tile`` is None or a multiple of the model's multiple, at least
        ``2 * MIN_TILE``."""
        if tile is not None and (tile < 2 * MIN_TILE or tile % self.multiple):
            raise ValueError(
                f"tile side must be a multiple of {self.multiple} pixels, at least {2 * MIN_TILE}, got {tile}"
            )

    def tile_size(self, top_height: int, top_width: int, tile: int | None) -> tuple[int, int] | None:
        """The (width, height) of the tiles that cut an image of this top-level map as evenly as
        possible into as few tiles as tiles of ``tile`` pixels a side would; None: one tile."""
        if tile is None:
            return None
        sides = []
        for codes in (top_width, top_height):
            cells = tile // self.multiple  # a tile's side in top-level codes, at most
            count = -(-codes // cells)
            sides.append(-(-codes // count) * self.multiple)  # at least tile / 2 when count > 1
        whole = sides == [top_width * self.multiple, top_height * self.multiple]
        return None if whole else (sides[0], sides[1])

    def image_codes(
        self, rgb: np.ndarray, candidates: int = 0, fixed: Sequence[np.ndarray] = ()
    ) -> list[np.ndarray]:
        """The exact VQ-VAE's code maps of uint8 RGB pixels (padded to the model's multiple), top level first:
        the same on every platform (exact.md §11). ``fixed``: the codes of the first levels, taken as
        they are. ``candidates`` M > 0 appends each level's M nearest codewords and their distances, each
        [h, w, M] (``ExactEncoder.encode``)."""
        padded = pad_to_multiple(rgb, self.multiple)
        pixels = torch.tensor(padded, device=self.device).permute(2, 0, 1)[None]
        band_rows = max(1, ENCODE_BAND_CODES * self.model.vqvae.config.bottom_stride // padded.shape[1])
        upper = [torch.from_numpy(level)[None] for level in fixed]
        maps = [
            level[0].cpu().numpy() for level in self.exact_encoder.encode(pixels, band_rows, candidates, upper)
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
        encoder = Encoder()

        def encode(freqs: np.ndarray, image: int, level: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
            symbols = codes[level][ys, xs]
            encoder.encode(symbols, freqs)
            return symbols

        self._walk([codes], encode, progress, tile, known=True)
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
            check_size(file.width, file.height, "the .vqz file's image")
            groups.setdefault((file.level_shapes, file.tile), []).append(i)
        batches = []
        for key, members in groups.items():
            size, steps = self.files_per_batch(*key), self._n_steps(*key)
            batches += [(members[start : start + size], steps) for start in range(0, len(members), size)]
        total, done, decoded = sum(steps for _, steps in batches), 0, {}
        for members, steps in batches:
            report = None if progress is None else _shifted(progress, done, total)
            decoded.update(zip(members, self._decode_group([files[i] for i in members], report), strict=True))
            done += steps
        return [decoded[i] for i in range(len(files))]

    def files_per_batch(self, shapes: Sequence[tuple[int, int]], tile: tuple[int, int] | None) -> int:
        """How many files with code maps of these shapes and tiles ``decode_many`` decodes together: as
        many as make waves of at most ``BATCH_ROWS`` pixel rows (their tiles' heights added up, the
        steppers' caches growing with them), or one."""
        rows = self.multiple * max(sum(rect[2] for _, rect in wave) for wave in self._waves(shapes, 0, tile))
        return max(1, BATCH_ROWS[self.device.type == "cuda"] // rows)

    def _decode_group(self, files: list[VQZFile], progress: Progress | None) -> list[Decoded]:
        """Decode checked files whose code maps have the same shapes and tiles, together."""
        decoders = [Decoder(file.payload) for file in files]
        codes = [[np.zeros(shape, dtype=np.int64) for shape in file.level_shapes] for file in files]

        def decode(freqs: np.ndarray, image: int, *where: Any) -> np.ndarray:
            return decoders[image].decode(freqs)

        level_bits = self._walk(codes, decode, progress, files[0].tile)
        for file, decoder, maps in zip(files, decoders, codes, strict=True):
            decoder.check_exhausted()
            file.check_codes(maps)
        return [Decoded(*fields) for fields in zip(files, codes, level_bits, strict=True)]

    def render(self, decoded: Decoded) -> Image.Image:
        """Run the exact VQ-VAE decoder (exact.md §10) on checked codes and restore the image's size, mode,
        alpha, ICC profile, EXIF and XMP."""
        file = decoded.file
        maps = [torch.from_numpy(level)[None] for level in decoded.codes]
        band_rows = max(1, RENDER_BAND_CODES // decoded.codes[-1].shape[1])
        pixels = self.exact_decoder.decode(maps, band_rows)[0].permute(1, 2, 0).cpu().numpy()
        rgb = np.ascontiguousarray(crop(pixels, file.coded_height, file.coded_width))
        if file.coded_size is not None:
            rgb = resize(rgb, file.width, file.height)
        alpha = None if file.alpha is None else np.frombuffer(file.alpha, np.uint8).reshape(rgb.shape[:2])
        return to_pil(rgb, file.colour.name, alpha, file.icc, file.exif, file.xmp)

    def _walk(
        self,
        codes: list[list[np.ndarray]],
        code_step: Callable[[np.ndarray, int, int, np.ndarray, np.ndarray], np.ndarray],
        progress: Progress | None,
        tile: tuple[int, int] | None,
        known: bool = False,
        levels: Sequence[int] | None = None,
    ) -> list[list[float]]:
        """Visit every level top first, wavefront by wavefront, as encoder and decoder both must, for
        one or more images whose code maps ``codes[image][level]`` have the same shapes and are cut
        into tiles of ``tile`` (width, height) pixels (None: whole maps).

        ``code_step(freqs, image, level, ys, xs)`` codes one image's step at positions (ys, xs) with
        the tables ``freqs`` (tile by tile, each tile's positions by increasing row) and returns its
        codes, which are stored in ``codes`` and fed back to the priors. ``known``: one image whose
        ``codes`` already hold every code (encoding), so the priors may compute the tables of a whole
        level in one pass; they are the same integers either way. ``levels``: visit only these (with
        ``known``). Returns the ideal bits of each image's levels visited.
        """
        shapes = [level.shape for level in codes[0]]
        levels = range(len(shapes)) if levels is None else levels
        total, done = self._n_steps(shapes, tile, levels), 0
        level_bits = [[] for _ in codes]
        for level in levels:
            bits = np.zeros(len(codes))
            for wave in self._waves(shapes, level, tile):
                groups = self._tile_groups(codes, level, wave, known)
                for t in range(_wave_steps(wave)):
                    step = _Step([group for group in groups if t < group.stepper.n_steps], t, len(codes))
                    step_codes = np.empty(len(step.images), dtype=np.int64)
                    coded = []
                    for image, where in enumerate(step.by_image):
                        ys, xs, tables = step.ys[where], step.xs[where], step.freqs[where]
                        symbols = code_step(tables, image, level, ys, xs)
                        step_codes[where] = symbols
                        coded.append((ys, xs, tables, symbols))
                    step.set_codes(step_codes)  # a GPU starts on the next step: store and count meanwhile
                    for image, (ys, xs, tables, symbols) in enumerate(coded):
                        codes[image][level][ys, xs] = symbols
                        bits[image] += coded_bits(symbols, tables)
                    done += 1
                    if progress is not None:
                        progress(done, total)
            for image_bits, level_total in zip(level_bits, bits.tolist(), strict=True):
                image_bits.append(level_total)
        return level_bits

    def _waves(
        self, shapes: Sequence[tuple[int, int]], level: int, tile: tuple[int, int] | None
    ) -> list[list[_Rect]]:
        """A level's tiles (rank, (y, x, h, w)) in raster order, in the waves that are walked one after
        the other (one wave of the whole map without tiles)."""
        height, width = shapes[level]
        if tile is None:
            return [[(0, (0, 0, height, width))]]
        scale = height // shapes[0][0]  # this level's codes per top-level code, a side
        tile_width, tile_height = (side // self.multiple * scale for side in tile)
        rects = list(enumerate(order.tiles(height, width, tile_height, tile_width)))
        size = tiles_per_wave(tile[1])
        return [rects[start : start + size] for start in range(0, len(rects), size)]

    def _n_steps(
        self,
        shapes: Sequence[tuple[int, int]],
        tile: tuple[int, int] | None,
        levels: Sequence[int] | None = None,
    ) -> int:
        """The sequential steps of the walk of maps of these shapes (of ``levels``, default all): of each
        wave, its largest tile's."""
        levels = range(len(shapes)) if levels is None else levels
        return sum(_wave_steps(wave) for level in levels for wave in self._waves(shapes, level, tile))

    def _crop(self, codes: np.ndarray, y: int, x: int, h: int, w: int, ratio: int = 1) -> torch.Tensor:
        """The codes of a level ``ratio`` times coarser under the h x w tile at (y, x), on the device."""
        rows, cols = slice(y // ratio, -(-(y + h) // ratio)), slice(x // ratio, -(-(x + w) // ratio))
        return torch.from_numpy(codes[rows, cols]).to(self.device)

    def _tile_groups(
        self, codes: list[list[np.ndarray]], level: int, wave: list[_Rect], known: bool
    ) -> list[_TileGroup]:
        """A wave of a level's tiles of every image, evaluated together: by one stepper on the CPU,
        the smaller tiles inside the largest one's map; else one stepper (or one pass of the known
        codes) for all those of a size."""
        prior, height = self.exact_priors[level], codes[0][level].shape[0]
        tiles = [(image, rank, *rect) for image in range(len(codes)) for rank, rect in wave]
        one_size = known or self.device.type == "cuda"
        sizes: dict[tuple[int, int], list[tuple[int, ...]]] = {}
        for tile in tiles:
            sizes.setdefault(tile[4:] if one_size else (0, 0), []).append(tile)
        groups = []
        for members in sizes.values():
            h, w = (max(tile[i] for tile in members) for i in (4, 5))
            upper = [
                [
                    self._crop(codes[image][k], y, x, th, tw, height // codes[image][k].shape[0])
                    for k in range(level)
                ]
                for image, _, y, x, th, tw in members
            ]
            if known:
                maps = [self._crop(codes[image][level], y, x, h, w) for image, _, y, x, _, _ in members]
                stepper = encoder_stepper(prior, maps, upper)
            else:
                stepper = prior.batch_stepper(h, w, upper, [tile[4:] for tile in members])
            groups.append(_TileGroup(stepper, *np.array(members, dtype=np.int64)[:, :4].T))
        return groups

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


_Rect = tuple[int, tuple[int, int, int, int]]
"""A tile: its rank in raster order, and its top-left code's row and column and its height and width."""

TILE_WAVE = 4096
"""The tiles of a level are walked in waves of ``TILE_WAVE // H`` tiles H pixels tall, one wave after
the other (``bitstream_spec/vqz.md`` §7): the wave's tiles together are at most as tall as a
4096-pixel image, which bounds the memory of the decoder's caches."""


BATCH_ROWS = (3 * TILE_WAVE, 32 * TILE_WAVE)
"""On the CPU and on a GPU, the pixel rows of the waves of the files that ``decode_many`` decodes
together (``Codec.files_per_batch``): 8 Kodak files on the CPU (0.15 GB each; 2 cores gain nothing
from more), 85 on a GPU (smaller caches; throughput grows up to about 32)."""


def tiles_per_wave(tile_height: int) -> int:
    """How many tiles ``tile_height`` pixels tall a wave holds."""
    return max(1, TILE_WAVE // tile_height)


def _wave_steps(wave: list[_Rect]) -> int:
    """The steps of a wave of tiles: up to the last of its largest tile's."""
    return max(order.n_steps(h, w) for _, (_, _, h, w) in wave)


@dataclass(frozen=True)
class _TileGroup:
    """Tiles of a level's wave, of every image walked, evaluated together by one stepper: those of
    one size, or on the CPU all of them (``Codec._tile_groups``)."""

    stepper: ExactStepper | KnownCodes
    images: np.ndarray
    """The image of each tile (the stepper's images, in order)."""
    ranks: np.ndarray
    """Each tile's place in its image's tiles (raster order)."""
    ys: np.ndarray
    """The map row and column of each tile's top-left code."""
    xs: np.ndarray


class _Step:
    """One wavefront step of a level's tile groups: their tables, and where each lies in the coding
    order (by image, then tile, then row) and in the maps."""

    def __init__(self, groups: list[_TileGroup], t: int, batch: int) -> None:
        self._groups, self._t, self._counts, self._on_map = groups, t, [], []
        freqs, images, ranks, rows, ys, xs = [], [], [], [], [], []
        for group in groups:
            local_ys, local_xs = _positions(t, group.stepper.height, group.stepper.width)
            n, tiles = len(local_ys), len(group.images)
            tile_rows = np.repeat(local_ys, tiles)
            parts = [
                group.stepper.freqs(t),  # position by position, tile by tile within each
                np.tile(group.images, n),
                np.tile(group.ranks, n),
                tile_rows,
                tile_rows + np.tile(group.ys, n),
                np.repeat(local_xs, tiles) + np.tile(group.xs, n),
            ]
            on_map = group.stepper.on_map(t)
            if on_map is not None:  # a smaller tile's positions outside it
                parts = [part[on_map] for part in parts]
            self._counts.append(n * tiles)
            self._on_map.append(on_map)
            for part, into in zip(parts, (freqs, images, ranks, rows, ys, xs), strict=True):
                into.append(part)
        join = np.concatenate if len(groups) > 1 else operator.itemgetter(0)  # spares copying the tables
        self.freqs, self.images, self.ys, self.xs = join(freqs), join(images), join(ys), join(xs)
        coding_order = np.lexsort((join(rows), join(ranks), self.images))
        bounds = np.searchsorted(self.images[coding_order], np.arange(batch + 1))
        self.by_image = [coding_order[lo:hi] for lo, hi in itertools.pairwise(bounds)]
        """Per image, the indices of its tables and positions in coding order."""

    def set_codes(self, codes: np.ndarray) -> None:
        """Enter the step's codes, in the order of its tables, into the groups' steppers."""
        start = 0
        for group, count, on_map in zip(self._groups, self._counts, self._on_map, strict=True):
            if on_map is None:
                group.stepper.set_codes(self._t, codes[start : start + count])
                start += count
            else:  # the positions outside their tile get code 0, which the stepper keeps as padding
                coded = int(on_map.sum())
                step_codes = np.zeros(count, dtype=np.int64)
                step_codes[on_map] = codes[start : start + coded]
                group.stepper.set_codes(self._t, step_codes)
                start += coded


@functools.lru_cache(maxsize=4096)
def _positions(t: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``order.wavefront`` as (read-only) NumPy arrays, computed once for the many steps of the many
    tiles of one size that a decode walks."""
    ys, xs = (index.numpy() for index in order.wavefront(t, height, width))
    ys.flags.writeable = xs.flags.writeable = False
    return ys, xs


def _shifted(progress: Progress, done: int, total: int) -> Progress:
    """A part's progress reported as the progress of the whole: ``done`` steps before it, ``total`` in all."""
    return lambda step, _part_total: progress(done + step, total)


ModelArg = Codec | str | os.PathLike[str] | None
"""What ``model=`` takes: a Codec, a bundled model's name, a model file's path, or None (the default)."""


def _source(image: ImageInput) -> SourceImage:
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
            raise ValueError(
                f"expected a uint8 [H, W], [H, W, 3] or [H, W, 4] array, got {image.dtype} {image.shape}"
            )
        image = Image.fromarray(np.ascontiguousarray(image))
    return load_image(image)


def _vqz_file(data: VQZInput | VQZFile) -> VQZFile:
    return data if isinstance(data, VQZFile) else VQZFile.from_bytes(read_vqz(data))


def open_codec(model: ModelArg = None, device: Any = None) -> Codec:
    """A Codec for ``model=`` arguments: a Codec as is, else a bundled model's name or a model file."""
    if isinstance(model, Codec):
        return model
    return Codec.open(model, device)


def codec_for(file: VQZFile, model: ModelArg = None, device: Any = None) -> Codec:
    """The codec to decode ``file``: ``model`` if given, else the bundled model whose id it carries."""
    if model is not None:
        return open_codec(model, device)
    bundled = zoo.find_by_id(file.model_id)
    if bundled is None:
        raise ModelMismatchError(
            f"file needs model {file.model_id.hex()}, which is not bundled; give its model file explicitly"
        )
    return Codec.open(bundled.path, device)


def compress(
    image: ImageInput,
    model: ModelArg = None,
    device: Any = None,
    progress: Progress | None = None,
    quality: float = DEFAULT_QUALITY,
    tile: int | None = DEFAULT_TILE,
    *,
    metadata: str | Iterable[str] = "all",
    threads: int | None = None,
    target_size: int | None = None,
    target_bpp: float | None = None,
    target_psnr: float | None = None,
    effort: int = rdo.DEFAULT_EFFORT,
) -> bytes:
    """Compress ``image`` with ``model`` (default: the bundled default model) to ``.vqz`` bytes, at
    ``quality`` 0 (smallest file) to 4 (best, the default), in tiles of at most ``tile`` pixels a side
    (None: whole maps), keeping the ``metadata`` that ``Codec.compress`` names; ``threads``: the CPU
    threads torch may use for the call (None: torch's setting, the number of cores). One of
    ``target_size`` (bytes), ``target_bpp`` or ``target_psnr`` (dB) picks the quality instead
    (``vqcodec.rate``). ``effort`` 0 (default) to 2: the rate-distortion code choice (``vqcodec.rdo``)."""
    targets = (target_size, target_bpp, target_psnr)
    with limited(threads):
        codec = open_codec(model, device)
        if all(target is None for target in targets):
            return codec.compress(image, progress, quality, tile, metadata=metadata, effort=effort)
        from vqcodec.rate import Target, compress_to_target

        return compress_to_target(codec, image, Target(*targets), tile, metadata, progress, effort).data


def decompress(
    data: VQZInput | VQZFile,
    model: ModelArg = None,
    device: Any = None,
    progress: Progress | None = None,
    *,
    threads: int | None = None,
) -> Image.Image:
    """Decode a ``.vqz`` file (a path, its bytes, a binary file or a parsed ``VQZFile``); without
    ``model``, with the bundled model whose id the file carries; ``threads`` as for ``compress``."""
    with limited(threads):
        file = _vqz_file(data)
        return codec_for(file, model, device).decompress(file, progress)


def decompress_many(
    datas: Sequence[VQZInput | VQZFile],
    model: ModelArg = None,
    device: Any = None,
    progress: Progress | None = None,
    *,
    threads: int | None = None,
) -> list[Image.Image]:
    """Decode several ``.vqz`` files of one model (each one as ``decompress`` takes it), those of one
    size together (``Codec.decode_many``); without ``model``, with the bundled model that the first
    file names; ``threads`` as for ``compress``."""
    if isinstance(datas, (str, os.PathLike, bytes, bytearray, memoryview, VQZFile)):
        raise TypeError("decompress_many takes a sequence of files; decompress takes one")
    with limited(threads):
        files = [_vqz_file(data) for data in datas]
        if not files:
            return []
        return codec_for(files[0], model, device).decompress_many(files, progress)


def info(
    data: VQZInput,
    model: ModelArg = None,
    device: Any = None,
    progress: Progress | None = None,
    *,
    bits: bool = False,
    threads: int | None = None,
) -> dict[str, Any]:
    """A file's geometry, mode, model, levels and sizes (``describe``), from its header: no model, no
    decoding. With ``bits`` and the file's model available (given, or bundled), the codes are decoded
    (no pixels) to add the ideal bits of every level and the range coder's overhead over them; they
    stay None without. ``model``, ``device``, ``progress`` and ``threads`` only matter with ``bits``."""
    check_threads(threads)
    data = read_vqz(data)
    file = VQZFile.from_bytes(data)
    if not bits or (model is None and zoo.find_by_id(file.model_id) is None):
        return describe(data, file)
    with limited(threads):
        return codec_for(file, model, device).info(data, progress)
