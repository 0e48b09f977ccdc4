"""The codec's commands that write files: ``compress`` (images to .vqz) and ``decompress`` (back).

A thin shell over ``vqcodec.api``: parse, call, write atomically, report. Every failure ends as one
line ``vqcodec: error: ...`` on stderr with the exit status of its kind (``vqcodec.cli_errors``), and
no output file (complete or partial) is left behind. Both take one input and one output, or several
inputs and an output folder (``-o``): the inputs are never written to (``vqcodec.cli_files``).
"""

from __future__ import annotations

import functools
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import click
from click.core import ParameterSource

from vqcodec.cli_errors import EXIT_STATUS, BadUsage, reports_errors
from vqcodec.cli_files import (
    Job,
    Output,
    check_output,
    codec_warnings,
    plan_jobs,
    progress_bar,
    read_vqz_input,
    run_jobs,
    stdin_or,
    write_output,
)
from vqcodec.cli_options import (
    FiniteFloatRange,
    device_option,
    force_option,
    model_option,
    out_dir_option,
    paths_argument,
    quiet_option,
    threads_option,
    verbose_option,
)
from vqcodec.coding.order import DEFAULT_TILE
from vqcodec.quality import DEFAULT_QUALITY, MAX_QUALITY, MIN_QUALITY, describe_qualities
from vqcodec.rdo import DEFAULT_EFFORT, EFFORTS
from vqcodec.threads import limited

if TYPE_CHECKING:
    from vqcodec.codec import Codec

LOSSY_FORMATS = frozenset({"JPEG", "WEBP", "AVIF", "HEIF"})
"""Image formats that lose detail of their own at a quality they take (``--image-quality``); the
others write the decoded pixels as they are, or say what they do to them (``imageio.pixel_fidelity``)."""
LOSSY_QUALITY = 95
"""The quality a lossy OUT format is written at unless --image-quality says otherwise."""

Targets = tuple[int | None, float | None, float | None]
"""--target-size, --target-bpp and --target-psnr: at most one is given."""


# --- compress --------------------------------------------------------------------------------------


@click.command(epilog=EXIT_STATUS)
@model_option("the bundled default model")
@click.option(
    "--quality",
    "-q",
    type=FiniteFloatRange(MIN_QUALITY, MAX_QUALITY),
    default=DEFAULT_QUALITY,
    show_default=True,
    help=f"Operating point, {MIN_QUALITY} (smallest file) to {MAX_QUALITY} (best), any number in between."
    f" Below {MAX_QUALITY} the image is coded at a smaller size and resized back on decoding:"
    f" {describe_qualities()}.",
)
@click.option(
    "--target-size",
    type=click.IntRange(min=1),
    default=None,
    metavar="BYTES",
    help="Instead of --quality: the best quality whose file is at most BYTES.",
)
@click.option(
    "--target-bpp",
    type=FiniteFloatRange(min=0, min_open=True),
    default=None,
    help="Instead of --quality: the best quality at most this many bits per pixel.",
)
@click.option(
    "--target-psnr",
    type=FiniteFloatRange(min=0, min_open=True),
    default=None,
    metavar="DB",
    help="Instead of --quality: the smallest file whose decoded image reaches this PSNR.",
)
@click.option(
    "--tile",
    type=click.IntRange(min=0),
    default=DEFAULT_TILE,
    show_default=True,
    help="Largest side in pixels of the tiles coded as independent images (at least 64, a multiple of the"
    " model's stride: 8 for the default model); the image is cut into as few tiles as evenly as it can,"
    " and their codes decode side by side, in fewer sequential steps. 0 codes the image whole: a little"
    " smaller, decoding more slowly.",
)
@click.option(
    "--metadata",
    default="all",
    show_default=True,
    metavar="all|none|KINDS",
    help="Metadata to keep: all, none, or some of exif, icc, xmp, comma-separated. EXIF's orientation"
    " is applied to the pixels and its tag reset.",
)
@click.option("--strip", is_flag=True, help="Keep no metadata (the same as --metadata none).")
@click.option(
    "--effort",
    "-e",
    type=click.IntRange(min(EFFORTS), max(EFFORTS)),
    default=DEFAULT_EFFORT,
    show_default=True,
    help="Rate-distortion code choice: at each position the encoder may take a codeword near the nearest"
    " that the prior finds cheaper. 0: always the nearest (fastest); 1: for the bottom level; 2: for"
    " every level (fewest bits at equal PSNR, though not at equal MS-SSIM). More effort encodes more"
    " slowly; decoding takes the same time at any effort.",
)
@click.option(
    "--format",
    "out_format",
    type=click.Choice(["vqz"]),
    default=None,
    help="Write to an OUT whose name does not end in .vqz (refused without it).",
)
@device_option
@threads_option
@force_option
@out_dir_option
@quiet_option
@verbose_option
@paths_argument
@reports_errors
def compress(
    paths: tuple[str, ...],
    out_dir: str | None,
    model: str | None,
    quality: float,
    target_size: int | None,
    target_bpp: float | None,
    target_psnr: float | None,
    tile: int,
    metadata: str,
    strip: bool,
    effort: int,
    out_format: str | None,
    device: str | None,
    threads: int | None,
    force: bool,
    quiet: bool,
    verbose: bool,
) -> None:
    """Compress the image IN to the .vqz file OUT, or several images into a folder (-o).

    IN may be any image Pillow reads (PNG, JPEG, WebP, TIFF, ...). Grayscale, alpha, ICC
    profiles, EXIF and XMP are kept; palette images become RGB. "-" reads stdin or writes stdout.
    The qualities run from 0 (the smallest file) to 4 (the best); their bits per pixel on Kodak
    are in benchmarks/results/kodak/results.md. Any quality in between, or a target size, bpp or
    PSNR, picks a point between those. On a terminal each file ends with a line: bytes, bits per pixel, time.

    \b
    Examples:
      vqcodec compress photo.png photo.vqz
      vqcodec compress --quality 1 photo.png small.vqz
      vqcodec compress --quality 2.5 photo.png medium.vqz
      vqcodec compress --target-size 10000 photo.png at-most-10kB.vqz
      vqcodec compress *.png -o compressed/         # compressed/NAME.vqz for each
      vqcodec compress --strip --tile 0 photo.jpg photo.vqz
      vqcodec compress --effort 2 photo.png small.vqz   # fewer bits at equal PSNR, slower
      vqcodec compress --model tiny.safetensors photo.jpg photo.vqz
      vqcodec compress - - < photo.png > photo.vqz
    """
    jobs = plan_jobs(paths, out_dir, ".vqz")
    targets = (target_size, target_bpp, target_psnr)
    _check_targets(targets)
    if len(jobs) == 1 and (out_dir is None or Path(out_dir).is_dir()):  # -o's folder is made below
        check_output(jobs[0], force)  # before the model loads: an existing OUT is the commonest mistake
    if out_dir is None and out_format is None:
        _check_vqz_name(jobs[0].target)
    with codec_warnings(quiet):
        keep = _parse_metadata("none" if strip else metadata)
        codec = open_checked_codec(model, device, tile or None)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    encoding = Encoding(quality, targets, tile or None, keep, effort, threads, quiet)
    work = functools.partial(_compress_file, codec=codec, encoding=encoding, force=force)
    run_jobs(jobs, work, Output(quiet, verbose), "compressed")


def _check_targets(targets: Targets) -> None:
    """At most one target, and no --quality beside it: a target picks the quality."""
    if sum(target is not None for target in targets) > 1:
        raise click.UsageError("give one of --target-size, --target-bpp and --target-psnr")
    quality_given = click.get_current_context().get_parameter_source("quality")
    if any(target is not None for target in targets) and quality_given == ParameterSource.COMMANDLINE:
        raise click.UsageError("a target picks the quality: give --quality or a target, not both")


def _check_vqz_name(target: str) -> None:
    """Refuse an OUT that does not say .vqz: ``compress -f *.png`` must not write over an image."""
    if target != "-" and Path(target).suffix.lower() != ".vqz":
        raise BadUsage(
            f"{target}: OUT must end in .vqz (to compress several images use -o FOLDER; to write .vqz"
            " data under another name, --format vqz)"
        )


def _parse_metadata(value: str) -> frozenset[str]:
    """The metadata kinds to keep; an unknown kind is a usage error of --metadata."""
    from vqcodec.metadata import parse_metadata

    try:
        return parse_metadata(value)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--metadata") from error


def open_checked_codec(model: str | None, device: str | None, tile: int | None) -> Codec:
    """The model, loaded once for every file, refusing a --tile it cannot code before any work."""
    from vqcodec.api import open_codec

    codec = open_codec(model, device)
    try:
        codec.order.check_tile(tile)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--tile") from error
    return codec


@dataclass(frozen=True)
class Encoding:
    """What ``compress`` was asked for, the same for every file."""

    quality: float
    targets: Targets
    tile: int | None
    metadata: frozenset[str]
    effort: int
    threads: int | None
    quiet: bool


def _compress_file(job: Job, codec: Codec, encoding: Encoding, force: bool) -> str:
    """Compress one image to its .vqz file; the summary line of the file."""
    check_output(job, force)
    from vqcodec.coding.container import VQZFile

    image = stdin_or(job.source)  # a pipe is read within imageio's limit
    start = time.perf_counter()
    data, reached = _encode(codec, image, encoding)
    write_output(job.target, data)
    file = VQZFile.from_bytes(data)
    bpp = 8 * len(data) / (file.width * file.height)
    return (
        f"{job.source} -> {job.target}: {len(data):,} bytes, {bpp:.3f} bpp"
        f" ({file.width}x{file.height}, {reached}), {time.perf_counter() - start:.1f} s"
    )


def _encode(codec: Codec, image: str | BinaryIO, encoding: Encoding) -> tuple[bytes, str]:
    """The .vqz bytes of ``image``, at the quality asked for or the one a target picks; and that quality
    (with a target, the size coded and the PSNR reached), in words."""
    from vqcodec.api import compress_result

    size, bpp, psnr = encoding.targets
    aimed = any(target is not None for target in encoding.targets)
    with progress_bar("searching" if aimed else "compressing", encoding.quiet) as progress:
        found = compress_result(
            image,
            codec,
            progress=progress,
            quality=None if aimed else encoding.quality,
            tile=encoding.tile,
            metadata=encoding.metadata,
            threads=encoding.threads,
            target_size=size,
            target_bpp=bpp,
            target_psnr=psnr,
            effort=encoding.effort,
        )
    if not aimed:
        return found.data, f"quality {found.quality:g}"
    reached = f"quality {found.quality:.3f}, coded at {found.coded_size[0]}x{found.coded_size[1]}"
    return found.data, reached + (f", {found.psnr:.2f} dB" if found.psnr else "")


# --- decompress ------------------------------------------------------------------------------------


@click.command(epilog=EXIT_STATUS)
@model_option("the bundled model each file names")
@click.option(
    "--format",
    "out_format",
    metavar="FORMAT",
    default=None,
    help="Image format to write: png, webp, jpg, tiff, ...  [default: OUT's extension; PNG for stdout,"
    " an OUT without extension and -o]",
)
@click.option(
    "--image-quality",
    type=click.IntRange(1, 100),
    default=None,
    help=f"Quality of a lossy image format (JPEG, WebP, AVIF), whose own loss adds to the codec's."
    f"  [default: {LOSSY_QUALITY}, with a warning]",
)
@device_option
@threads_option
@force_option
@out_dir_option
@quiet_option
@verbose_option
@paths_argument
@reports_errors
def decompress(
    paths: tuple[str, ...],
    out_dir: str | None,
    model: str | None,
    out_format: str | None,
    image_quality: int | None,
    device: str | None,
    threads: int | None,
    force: bool,
    quiet: bool,
    verbose: bool,
) -> None:
    """Decode the .vqz file IN to the image OUT, or several files into a folder (-o).

    OUT's extension names the format (PNG when it has none, or OUT is "-": stdout). A lossless
    format (PNG, TIFF, lossless WebP with --format webp --image-quality 100) keeps the decoded
    pixels as they are. Each file needs the model it was written with: a bundled one is found
    by the id in the file.

    \b
    Examples:
      vqcodec decompress photo.vqz photo.png
      vqcodec decompress *.vqz -o decoded/          # decoded/NAME.png for each
      vqcodec decompress --image-quality 90 photo.vqz photo.jpg
      vqcodec decompress --model tiny.safetensors photo.vqz photo.webp
      vqcodec decompress - - < photo.vqz > photo.png
    """
    from vqcodec.imageio import pixel_fidelity

    image_format = _image_format(out_format, "--format") if out_format else "PNG"
    extension = "." + (out_format or "png").lower().lstrip(".")
    jobs = plan_jobs(paths, out_dir, extension)  # as the user spells it
    if out_dir is None and out_format is None:
        image_format = _image_format_of_out(jobs[0].target)
        extension = "" if jobs[0].target == "-" else Path(jobs[0].target).suffix
    if len(jobs) == 1 and (out_dir is None or Path(out_dir).is_dir()):  # -o's folder is made below
        check_output(jobs[0], force)
    if image_format in LOSSY_FORMATS and image_quality is None and not quiet:
        click.echo(
            f"vqcodec: warning: {image_format} is lossy: written at quality {LOSSY_QUALITY}, its loss adds to"
            " the codec's (PNG keeps the decoded pixels; --image-quality chooses and silences this)",
            err=True,
        )
    elif image_format not in LOSSY_FORMATS and (fidelity := pixel_fidelity(image_format)) and not quiet:
        click.echo(
            f"vqcodec: warning: {image_format} {fidelity} (PNG keeps the decoded pixels as they are)",
            err=True,
        )
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    lossy_quality = (image_quality or LOSSY_QUALITY) if image_format in LOSSY_FORMATS else None
    decoding = Decoding(model, device, threads, image_format, extension, lossy_quality, quiet)
    work = functools.partial(_decompress_file, decoding=decoding, force=force)
    run_jobs(jobs, work, Output(quiet, verbose), "decompressed")


def _image_format(name: str, param_hint: str = "OUT") -> str:
    """``imageio.output_format`` as a usage error, checked before anything is decoded."""
    from vqcodec.imageio import output_format

    try:
        return output_format(name)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint=param_hint) from None


def _image_format_of_out(target: str) -> str:
    """The format a single OUT's extension names: PNG for stdout and a name without extension."""
    if target == "-" or not Path(target).suffix:
        return "PNG"
    return _image_format(Path(target).suffix)


@dataclass(frozen=True)
class Decoding:
    """What ``decompress`` was asked for, the same for every file."""

    model: str | None
    device: str | None
    threads: int | None
    image_format: str
    extension: str
    """OUT's extension, which can say more than the format (.pgm: grey PPM); "" for stdout."""
    lossy_quality: int | None
    """The quality of a lossy ``image_format``; None for a lossless one."""
    quiet: bool


def _decompress_file(job: Job, decoding: Decoding, force: bool) -> str:
    """Decode one .vqz file to its image file; the summary line of the file."""
    check_output(job, force)
    from vqcodec.api import decompress as api
    from vqcodec.imageio import save_image

    data = read_vqz_input(job.source)
    start = time.perf_counter()
    with progress_bar("decompressing", decoding.quiet) as progress, limited(decoding.threads):
        image = api(data, decoding.model, decoding.device, progress)
    encoded = io.BytesIO()
    save_image(image, encoded, decoding.image_format, decoding.lossy_quality, decoding.extension)
    write_output(job.target, encoded.getvalue())
    return (
        f"{job.source} -> {job.target}: {image.width}x{image.height} {image.mode} {decoding.image_format},"
        f" {time.perf_counter() - start:.1f} s"
    )
