"""The codec's commands: ``compress``, ``decompress``, ``info`` and ``models`` (``register`` adds them).

A thin shell over ``vqcodec.codec``: parse, call, write atomically, report. Every failure ends as
one line ``vqcodec: error: ...`` on stderr with the exit status of its kind (``EXIT_STATUS``), and
no output file (complete or partial) is left behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import click
from PIL import Image

from vqcodec.errors import ModelMismatchError, VQZError
from vqcodec.quality import DEFAULT_QUALITY, DEFAULT_TILE, QUALITY_SCALES, describe_qualities

EXIT_BAD_INPUT = 1
EXIT_USAGE = 2  # click's own status for usage errors
EXIT_MODEL = 3
EXIT_OUTPUT_EXISTS = 4
EXIT_INTERNAL = 5

EXIT_STATUS = """\b
Exit status:
  0  success
  1  bad input: not a readable image, a damaged or invalid .vqz file, an I/O error
  2  usage error: bad option or argument, unknown output extension, bad device
  3  model problem: unknown name, bad model file, no bundled default model, or
     the file needs a model that is not available
  4  the output exists (give --force), or is the input itself
  5  internal error (a bug: please report it)"""

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
def _reporting() -> Iterator[None]:
    """Map exceptions to one-line errors and exit statuses; show the codec's own warnings as lines."""
    from vqcodec.zoo.modelfile import ModelFileError

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        except (click.ClickException, click.Abort):
            raise
        except (ModelMismatchError, ModelFileError) as error:
            raise CommandError(_one_line(error), EXIT_MODEL) from error
        except (VQZError, OSError, ValueError) as error:
            raise CommandError(_one_line(error), EXIT_BAD_INPUT) from error
        except MemoryError as error:
            raise CommandError("out of memory", EXIT_BAD_INPUT) from error
        except Exception as error:
            message = f"internal error: {type(error).__name__}: {_one_line(error)}"
            raise CommandError(message, EXIT_INTERNAL) from error
        finally:
            for warning in caught:  # torch's and other libraries' warnings are not the user's business
                if Path(warning.filename).resolve().is_relative_to(_PACKAGE_DIR):
                    click.echo(f"vqcodec: warning: {warning.message}", err=True)


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


def _image_format(target: str) -> str:
    """The Pillow format to write for ``target``: from its extension, PNG if none or stdout."""
    extension = "" if target == "-" else Path(target).suffix.lower()
    if not extension:
        return "PNG"
    Image.init()
    fmt = Image.registered_extensions().get(extension)
    if fmt is None or fmt not in Image.SAVE:
        raise click.BadParameter(
            f"cannot write images with extension {extension!r} (use e.g. .png, .webp, .jpg)", param_hint="OUT"
        )
    return fmt


@contextlib.contextmanager
def _progress(description: str) -> Iterator[Callable[[int, int], None] | None]:
    """A tqdm bar over wavefront steps on an interactive terminal; no output otherwise."""
    if not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    with tqdm(desc=description, unit="step", leave=False, dynamic_ncols=True) as bar:

        def update(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        yield update


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
force_option = click.option("--force", "-f", is_flag=True, help="Overwrite OUT if it exists.")
source_argument = click.argument("source", metavar="IN", type=click.Path(dir_okay=False, allow_dash=True))
target_argument = click.argument("target", metavar="OUT", type=click.Path(dir_okay=False, allow_dash=True))


@click.command(epilog=EXIT_STATUS)
@model_option("the bundled default model")
@click.option(
    "--quality",
    "-q",
    type=click.IntRange(min(QUALITY_SCALES), max(QUALITY_SCALES)),
    default=DEFAULT_QUALITY,
    show_default=True,
    help="Operating point, 1 (smallest file) to 4 (best). Below 4 the image is coded at a smaller size"
    f" and resized back on decoding: {describe_qualities()}.",
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
@device_option
@force_option
@source_argument
@target_argument
def compress(
    source: str, target: str, model: str | None, quality: int, tile: int, device: str | None, force: bool
) -> None:
    """Compress the image IN to the .vqz file OUT.

    IN may be any image Pillow reads (PNG, JPEG, WebP, TIFF, ...). Grayscale, alpha and ICC
    profiles are kept; palette images become RGB. "-" reads stdin or writes stdout.
    On Kodak the qualities 1 to 4 give about 0.11, 0.18, 0.26 and 0.39 bits per pixel
    (benchmarks/results/kodak).

    \b
    Examples:
      vqcodec compress photo.png photo.vqz
      vqcodec compress --quality 1 photo.png small.vqz
      vqcodec compress --tile 0 photo.png whole.vqz
      vqcodec compress --model tiny.safetensors photo.jpg photo.vqz
      vqcodec compress - - < photo.png > photo.vqz
    """
    with _reporting():
        _check_output(source, target, force)
        from vqcodec.codec import compress as api

        image = _read(source) if source == "-" else source
        with _progress("compressing") as progress:
            data = api(image, model, device, progress, quality, tile or None)
        _write(target, data)


@click.command(epilog=EXIT_STATUS)
@model_option("the bundled model the file names")
@device_option
@force_option
@source_argument
@target_argument
def decompress(source: str, target: str, model: str | None, device: str | None, force: bool) -> None:
    """Decode the .vqz file IN to the image OUT.

    OUT's extension names the format; PNG when it has none or OUT is "-" (stdout). The model
    must be the one the file was written with.

    \b
    Examples:
      vqcodec decompress photo.vqz photo.png
      vqcodec decompress --model tiny.safetensors photo.vqz photo.webp
      vqcodec decompress - - < photo.vqz > photo.png
    """
    with _reporting():
        fmt = _image_format(target)
        _check_output(source, target, force)
        from vqcodec.codec import decompress as api
        from vqcodec.imageio import save_image

        data = _read(source)
        with _progress("decompressing") as progress:
            image = api(data, model, device, progress)
        encoded = io.BytesIO()
        save_image(image, encoded, format=fmt)
        _write(target, encoded.getvalue())


@click.command(epilog=EXIT_STATUS)
@model_option("the bundled model the file names")
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.argument("source", metavar="FILE", type=click.Path(dir_okay=False, allow_dash=True))
def info(source: str, model: str | None, device: str | None, as_json: bool) -> None:
    """Describe a .vqz file: image, model, levels, bits.

    Shows the image, its model, the code maps and where the bits go.
    The bits of every level and the coder's overhead need the file's model (bundled, or given
    with --model): the codes are decoded, but no pixels.

    \b
    Examples:
      vqcodec info photo.vqz
      vqcodec info --model tiny.safetensors --json photo.vqz
    """
    with _reporting():
        from vqcodec.codec import info as api

        data = _read(source)
        with _progress("decoding codes") as progress:
            report = api(data, model, device, progress)
        click.echo(json.dumps(report, indent=2) if as_json else _format_info(source, report))


def _format_info(source: str, r: dict[str, Any]) -> str:
    model = r["model"] or "not bundled"
    extras = [f"ICC profile {r['icc_bytes']} bytes"] if r["icc_bytes"] else []
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
        bits = "-" if level["ideal_bits"] is None else f"{level['ideal_bits']:.1f}"
        per_code = "-" if level["bits_per_code"] is None else f"{level['bits_per_code']:.3f}"
        lines.append(
            f"          {level['name']:<10} {f'{h} x {w}':<15} {level['codes']:>6} {bits:>12} {per_code:>10}"
        )
    lines.append(f"payload   {r['payload_bytes']} bytes = {r['payload_bits']} bits")
    if r["ideal_bits"] is None:
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
