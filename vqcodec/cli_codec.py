"""The codec's commands: ``compress``, ``decompress``, ``info`` and ``models`` (``register`` adds them).

A thin shell over ``vqcodec.codec``: parse, call, write atomically, report. Every failure ends as
one line ``vqcodec: error: ...`` on stderr with the exit status of its kind (``EXIT_STATUS``), and
no output file (complete or partial) is left behind. ``compress`` and ``decompress`` take one input
and one output, or several inputs and an output folder (``-o``): the inputs are never written to.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import click
from click.core import ParameterSource
from PIL import Image

from vqcodec.errors import ModelFileError, ModelMismatchError, VQZError
from vqcodec.quality import DEFAULT_QUALITY, DEFAULT_TILE, MAX_QUALITY, MIN_QUALITY, describe_qualities
from vqcodec.rdo import DEFAULT_EFFORT, EFFORTS
from vqcodec.threads import limited

EXIT_BAD_INPUT = 1
EXIT_USAGE = 2  # click's own status for usage errors
EXIT_MODEL = 3
EXIT_OUTPUT_EXISTS = 4
EXIT_INTERNAL = 5
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a process ended by Ctrl-C

EXIT_STATUS = """\b
Exit status:
  0    success
  1    bad input: not a readable image, a damaged or invalid .vqz file, an I/O error
  2    usage error: bad option or argument, an OUT whose extension does not fit
  3    model problem: unknown name, bad model file, no bundled default model, or
       the file needs a model that is not available
  4    the output exists (give --force), or is the input itself
  5    internal error (a bug: please report it)
  130  interrupted (Ctrl-C)
With several inputs, every file is tried and the status is the first failure's."""

LOSSY_FORMATS = frozenset({"JPEG", "WEBP", "AVIF", "JPEG2000", "HEIF"})
"""Image formats that lose detail of their own when the decoded image is written in them."""
LOSSY_QUALITY = 95
"""The quality a lossy OUT format is written at unless --image-quality says otherwise."""

_PACKAGE_DIR = Path(__file__).resolve().parent


class CommandError(click.ClickException):
    """A failure reported as one ``vqcodec: error:`` line with its own exit status."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"vqcodec: error: {self.format_message()}", err=True)


def _one_line(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        where = error.filename if error.filename is not None else ""
        return f"{where}: {error.strerror}" if where else error.strerror
    return " ".join(str(error).split()) or type(error).__name__


@contextlib.contextmanager
def errors() -> Iterator[None]:
    """Map an exception to one ``vqcodec: error:`` line and the exit status of its kind."""
    try:
        yield
    except (click.ClickException, click.Abort, KeyboardInterrupt):
        raise
    except (ModelMismatchError, ModelFileError) as error:
        raise CommandError(_one_line(error), EXIT_MODEL) from error
    except FileExistsError as error:  # an API refusing to replace a file (e.g. export without force)
        raise CommandError(_one_line(error), EXIT_OUTPUT_EXISTS) from error
    except (VQZError, OSError, ValueError) as error:
        raise CommandError(_one_line(error), EXIT_BAD_INPUT) from error
    except MemoryError as error:
        raise CommandError("out of memory", EXIT_BAD_INPUT) from error
    except Exception as error:
        message = f"internal error: {type(error).__name__}: {_one_line(error)}"
        raise CommandError(message, EXIT_INTERNAL) from error


@contextlib.contextmanager
def _reporting(quiet: bool = False) -> Iterator[None]:
    """``errors()``, and the codec's own warnings shown as ``vqcodec: warning:`` lines (unless quiet)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with errors():
                yield
        finally:
            for warning in caught:  # torch's and other libraries' warnings are not the user's business
                if not quiet and Path(warning.filename).resolve().is_relative_to(_PACKAGE_DIR):
                    click.echo(f"vqcodec: warning: {warning.message}", err=True)


def interrupted() -> None:
    """End the process as Ctrl-C should: one line and status 130 (click's own says 'Aborted!', 1)."""
    click.echo("\nvqcodec: interrupted", err=True)
    sys.exit(EXIT_INTERRUPTED)


# --- files -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One input and the output it becomes."""

    source: str
    target: str


def _jobs(paths: Sequence[str], out_dir: str | None, suffix: str) -> list[Job]:
    """IN OUT, or with ``out_dir`` every path an input whose output is ``out_dir/<stem><suffix>``."""
    if out_dir is None:
        if len(paths) != 2:
            got = "no IN" if not paths else "no OUT" if len(paths) == 1 else f"{len(paths)} paths"
            raise click.UsageError(f"{got}: give IN and OUT, or several inputs and -o FOLDER")
        return [Job(*paths)]
    if not paths:
        raise click.UsageError("no input files")
    if "-" in paths:
        raise click.UsageError("'-' (stdin) needs a single IN and OUT, not -o FOLDER")
    jobs = [Job(path, str(Path(out_dir) / (Path(path).stem + suffix))) for path in paths]
    targets: dict[str, str] = {}
    for job in jobs:
        if job.target in targets:
            raise click.UsageError(
                f"{targets[job.target]} and {job.source} would both be written to {job.target}"
            )
        targets[job.target] = job.source
    return jobs


def _check_output(source: str, target: str, force: bool) -> None:
    """Refuse to overwrite an existing output without --force, and the input itself ever."""
    if target == "-":
        if sys.stdout.isatty():
            raise click.UsageError("refusing to write binary data to a terminal; redirect stdout")
        return
    out = Path(target)
    if source != "-" and (out.resolve() == Path(source).resolve() or _same_file(out, Path(source))):
        raise CommandError(f"{target} is the input file; refusing to overwrite it", EXIT_OUTPUT_EXISTS)
    if out.exists() and not force:
        raise CommandError(f"{target} exists (use --force to overwrite it)", EXIT_OUTPUT_EXISTS)
    if not out.parent.is_dir():
        raise CommandError(f"{out.parent}: no such folder for the output", EXIT_BAD_INPUT)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _read(source: str) -> bytes:
    if source == "-":
        return sys.stdin.buffer.read()
    return Path(source).read_bytes()


def _write(target: str, data: bytes) -> None:
    """Write ``data`` to stdout or, through a temporary file in the same folder, atomically to a file."""
    if target == "-":
        stream = sys.stdout.buffer
        stream.write(data)
        stream.flush()
        return
    out = Path(target)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make the output private
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _image_format(name: str) -> str:
    """The Pillow format that a file name's extension or a format's name (``png``, ``.webp``) says."""
    extension = "." + name.lower().lstrip(".")
    Image.init()
    fmt = Image.registered_extensions().get(extension)
    if fmt is None or fmt not in Image.SAVE or fmt == "VQZ":
        raise click.BadParameter(
            f"cannot write images with extension {extension!r} (use e.g. .png, .webp, .jpg)", param_hint="OUT"
        )
    return fmt


@contextlib.contextmanager
def _progress(description: str, quiet: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A tqdm bar over wavefront steps on an interactive terminal; no output otherwise."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    with tqdm(desc=description, unit="step", leave=False, dynamic_ncols=True) as bar:

        def update(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        yield update


@dataclass(frozen=True)
class Output:
    """How much a command says: ``quiet`` nothing but errors, ``verbose`` a summary even off a terminal."""

    quiet: bool
    verbose: bool

    @property
    def summaries(self) -> bool:
        return not self.quiet and (self.verbose or sys.stderr.isatty())

    def say(self, line: str) -> None:
        if self.summaries:
            click.echo(line, err=True)


def _run_jobs(jobs: list[Job], work: Callable[[Job], str], output: Output, verb: str) -> None:
    """Do every job, each inside its own error report; with several, carry on past failures, sum up at
    the end and exit with the first failure's status."""
    if len(jobs) == 1:
        with _reporting(output.quiet):
            output.say(work(jobs[0]))
        return
    failed: list[int] = []
    for job in jobs:
        try:
            with _reporting(output.quiet):
                output.say(work(job))
        except CommandError as error:
            message = error.format_message()
            if not message.startswith(job.source):
                error.message = f"{job.source}: {message}"
            error.show()
            failed.append(error.exit_code)
    if not output.quiet:
        done = len(jobs) - len(failed)
        click.echo(f"vqcodec: {done} of {len(jobs)} files {verb}, {len(failed)} failed", err=True)
    if failed:
        sys.exit(failed[0])


# --- options ---------------------------------------------------------------------------------------


def _check_device(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    from vqcodec.codec import check_device

    try:
        check_device(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from error
    return value


def model_option(default_help: str) -> Any:
    return click.option(
        "--model",
        "-m",
        metavar="NAME|FILE",
        default=None,
        help=f"A bundled model's name (see `vqcodec models`) or a model file.  [default: {default_help}]",
    )


device_option = click.option(
    "--device",
    default=None,
    metavar="cpu|cuda",
    callback=_check_device,
    help="cpu or cuda: a .vqz file decodes to the same codes on both.  [default: cpu]",
)
threads_option = click.option(
    "--threads",
    "-j",
    type=click.IntRange(min=1),
    default=None,
    help="CPU threads; when several vqcodec processes run side by side, give each 1.  [default: one per"
    " core, spinning only briefly when idle, so that a busy machine does not slow it down many times"
    " over]",
)
force_option = click.option("--force", "-f", is_flag=True, help="Overwrite outputs that exist.")
out_dir_option = click.option(
    "--out-dir",
    "-o",
    metavar="FOLDER",
    type=click.Path(file_okay=False),
    default=None,
    help="Write one output per input into FOLDER (made if missing), named after the input: then every"
    " path given is an input.",
)
quiet_option = click.option("--quiet", is_flag=True, help="Print nothing but errors.")
verbose_option = click.option(
    "--verbose", "-v", is_flag=True, help="Print the summary of each file even when stderr is not a terminal."
)
paths_argument = click.argument("paths", metavar="IN... OUT", nargs=-1, type=click.Path(allow_dash=True))


def _check_vqz_name(target: str) -> None:
    """Refuse an OUT that does not say .vqz: ``compress -f *.png`` must not write over an image."""
    if target != "-" and Path(target).suffix.lower() != ".vqz":
        raise CommandError(
            f"{target}: OUT must end in .vqz (to compress several images use -o FOLDER; to write .vqz"
            " data under another name, --format vqz)",
            EXIT_USAGE,
        )


# --- commands --------------------------------------------------------------------------------------


@click.command(epilog=EXIT_STATUS)
@model_option("the bundled default model")
@click.option(
    "--quality",
    "-q",
    type=click.FloatRange(MIN_QUALITY, MAX_QUALITY),
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
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Instead of --quality: the best quality at most this many bits per pixel.",
)
@click.option(
    "--target-psnr",
    type=click.FloatRange(min=0, min_open=True),
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
    " and their codes decode side by side, in fewer sequential steps. 0 codes the image whole: about"
    " 1 % smaller, decoding more slowly.",
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
    On Kodak the qualities 0 to 4 give about 0.03, 0.11, 0.18, 0.26 and 0.39 bits per pixel
    (benchmarks/results/kodak); any quality in between, or a target size, bpp or PSNR, picks a
    point between those. On a terminal each file ends with a line: bytes, bits per pixel, time.

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
    output = Output(quiet, verbose)
    jobs = _jobs(paths, out_dir, ".vqz")
    targets = (target_size, target_bpp, target_psnr)
    if sum(target is not None for target in targets) > 1:
        raise click.UsageError("give one of --target-size, --target-bpp and --target-psnr")
    quality_given = click.get_current_context().get_parameter_source("quality")
    if any(target is not None for target in targets) and quality_given == ParameterSource.COMMANDLINE:
        raise click.UsageError("a target picks the quality: give --quality or a target, not both")
    if len(jobs) == 1:  # before the model loads: an existing OUT is the most common mistake
        _check_output(jobs[0].source, jobs[0].target, force)
    if out_dir is None and out_format is None:
        _check_vqz_name(jobs[0].target)
    with _reporting(quiet):
        from vqcodec.codec import open_codec
        from vqcodec.imageio import parse_metadata

        try:
            keep = parse_metadata("none" if strip else metadata)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--metadata") from error
        codec = open_codec(model, device)
        try:
            codec.check_tile(tile or None)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--tile") from error
        if out_dir is not None:
            Path(out_dir).mkdir(parents=True, exist_ok=True)

    def work(job: Job) -> str:
        _check_output(job.source, job.target, force)
        from vqcodec.coding.container import VQZFile

        image = _read(job.source) if job.source == "-" else job.source
        start = time.perf_counter()
        reached = f"quality {quality:g}"
        if all(target is None for target in targets):
            with _progress("compressing", quiet) as progress, limited(threads):
                data = codec.compress(image, progress, quality, tile or None, metadata=keep, effort=effort)
        else:
            from vqcodec.rate import Target, compress_to_target

            with _progress("searching", quiet) as progress, limited(threads):
                found = compress_to_target(
                    codec, image, Target(*targets), tile or None, keep, progress, effort
                )
            data = found.data
            reached = f"quality {found.quality:.3f}, coded at {found.coded_size[0]}x{found.coded_size[1]}"
            reached += f", {found.psnr:.2f} dB" if found.psnr else ""
        _write(job.target, data)
        file = VQZFile.from_bytes(data)
        bpp = 8 * len(data) / (file.width * file.height)
        return (
            f"{job.source} -> {job.target}: {len(data):,} bytes, {bpp:.3f} bpp"
            f" ({file.width}x{file.height}, {reached}), {time.perf_counter() - start:.1f} s"
        )

    _run_jobs(jobs, work, output, "compressed")


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
    output = Output(quiet, verbose)
    fmt = _image_format(out_format) if out_format else "PNG"
    jobs = _jobs(paths, out_dir, "." + (out_format or "png").lower().lstrip("."))  # as the user spells it
    if out_dir is None and out_format is None and jobs[0].target != "-" and Path(jobs[0].target).suffix:
        fmt = _image_format(Path(jobs[0].target).suffix)
    if fmt in LOSSY_FORMATS and image_quality is None and not quiet:
        click.echo(
            f"vqcodec: warning: {fmt} is lossy: written at quality {LOSSY_QUALITY}, its loss adds to the"
            " codec's (PNG keeps the decoded pixels; --image-quality chooses and silences this)",
            err=True,
        )
    with _reporting(quiet):
        if len(jobs) == 1:
            _check_output(jobs[0].source, jobs[0].target, force)
        if out_dir is not None:
            Path(out_dir).mkdir(parents=True, exist_ok=True)

    def work(job: Job) -> str:
        _check_output(job.source, job.target, force)
        from vqcodec.codec import decompress as api
        from vqcodec.imageio import save_image

        data = _read(job.source)
        start = time.perf_counter()
        with _progress("decompressing", quiet) as progress, limited(threads):
            image = api(data, model, device, progress)
        encoded = io.BytesIO()
        lossy_quality = (image_quality or LOSSY_QUALITY) if fmt in LOSSY_FORMATS else None
        save_image(image, encoded, format=fmt, quality=lossy_quality)
        _write(job.target, encoded.getvalue())
        return (
            f"{job.source} -> {job.target}: {image.width}x{image.height} {image.mode} {fmt},"
            f" {time.perf_counter() - start:.1f} s"
        )

    _run_jobs(jobs, work, output, "decompressed")


@click.command(epilog=EXIT_STATUS)
@model_option("the bundled model the file names")
@click.option(
    "--bits",
    is_flag=True,
    help="Also decode the codes (with the file's model: bundled, or --model) to count the ideal bits of"
    " every level and the range coder's overhead.",
)
@device_option
@threads_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.argument("source", metavar="FILE", type=click.Path(dir_okay=False, allow_dash=True))
def info(
    source: str, model: str | None, bits: bool, device: str | None, threads: int | None, as_json: bool
) -> None:
    """Describe a .vqz file: image, model, code maps and, with --bits, where the bits go.

    Without --bits only the header is read: no model, no decoding.

    \b
    Examples:
      vqcodec info photo.vqz
      vqcodec info --bits photo.vqz
      vqcodec info --bits --model tiny.safetensors --json photo.vqz
    """
    with _reporting():
        import vqcodec

        data = _read(source)
        with _progress("decoding codes", quiet=not bits) as progress, limited(threads):
            report = vqcodec.info(data, model, device, bits=bits, progress=progress)
        click.echo(json.dumps(report, indent=2) if as_json else _format_info(source, report, bits))


def _format_info(source: str, r: dict[str, Any], bits: bool) -> str:
    model = r["model"] or "not bundled"
    extras = [
        f"{kind} {r[key]} bytes"
        for kind, key in (("ICC profile", "icc_bytes"), ("EXIF", "exif_bytes"), ("XMP", "xmp_bytes"))
        if r.get(key)
    ]
    extras += ["alpha plane"] if r["alpha"] else []
    lines = [
        f"file      {source}: {r['file_bytes']} bytes, {r['bpp']:.4f} bpp",
        f"image     {r['width']}x{r['height']} (WxH) {r['colour']}"
        f" (padding: {r['padding']}){'; ' + ', '.join(extras) if extras else ''}",
        *(
            [f"coded     {r['coded_width']}x{r['coded_height']} (WxH), resized to the image on decoding"]
            if (r["coded_width"], r["coded_height"]) != (r["width"], r["height"])
            else []
        ),
        *(
            [f"tiles     {r['tile'][0]}x{r['tile'][1]} (WxH) pixels, coded as independent images"]
            if r["tile"]
            else []
        ),
        f"model     {r['model_id']} ({model})",
        "levels    name       shape (h x w)   codes   ideal bits  bits/code",
    ]
    for level in r["levels"]:
        h, w = level["shape"]
        ideal = "-" if level["ideal_bits"] is None else f"{level['ideal_bits']:.1f}"
        per_code = "-" if level["bits_per_code"] is None else f"{level['bits_per_code']:.3f}"
        lines.append(
            f"          {level['name']:<10} {f'{h} x {w}':<15} {level['codes']:>6} {ideal:>12} {per_code:>10}"
        )
    lines.append(f"payload   {r['payload_bytes']} bytes = {r['payload_bits']} bits")
    if not bits:
        lines.append("ideal     not counted: --bits decodes the codes to count them")
    elif r["ideal_bits"] is None:
        lines.append("ideal     unknown: the file's model is not available (give it with --model)")
    else:
        lines.append(
            f"ideal     {r['ideal_bits']:.1f} bits; the payload is {r['overhead_percent']:+.3f} % over"
        )
    lines.append(f"container {r['container_bytes']} bytes (header, chunks, CRCs)")
    return "\n".join(lines)


@click.command()
def models() -> None:
    """List the bundled models.

    Prints each one's name, SHA-256 and size.
    A .vqz file names its model by the first 32 hex digits of the SHA-256.
    """
    with _reporting():
        from vqcodec.zoo import ZOO_DIR, list_models

        found = list_models()
        if not found:
            click.echo(f"no bundled models (none in {ZOO_DIR})", err=True)
        for model in found:
            description = f"  {model.description}" if model.description else ""
            click.echo(f"{model.name:<16} {model.sha256}  {model.size / 1e6:8.2f} MB{description}")
        if found:
            click.echo(f"qualities (vqcodec compress --quality N), for every model: {describe_qualities()}")


COMMANDS = (compress, decompress, info, models)


def register(group: click.Group) -> None:
    """Add the codec's commands to ``group`` (the ``vqcodec`` command line)."""
    for command in COMMANDS:
        group.add_command(command)
