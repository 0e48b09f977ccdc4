"""``vqcodec bench``: the recurring measurements, one subcommand each, as thin click shells.

``rd`` (``vqcodec.bench.rd``): rate-distortion against classical codecs; ``speed``
(``vqcodec.bench.speed``): time and memory of the encoder and decoder; ``bpd`` (``vqcodec.bench.bpd``):
the priors' bits per dimension on training and validation crops.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import click
from click.decorators import FC

from vqcodec.bench.bpd import DEFAULT_IMAGES
from vqcodec.bench.codecs import CODECS
from vqcodec.cli_errors import one_line, reports_errors
from vqcodec.cli_options import check_device, size_parser
from vqcodec.coding.order import DEFAULT_TILE
from vqcodec.imageio import MAX_IMAGE_PIXELS
from vqcodec.quality import MAX_QUALITY, MIN_QUALITY, SWEEP_QUALITIES
from vqcodec.rdo import DEFAULT_EFFORT, EFFORTS


def shared_data(name: str) -> Path | None:
    """``../shared/data/NAME`` beside the working directory, else beside the repository; None if absent."""
    repository = Path(__file__).resolve().parents[2]
    for base in (Path.cwd(), repository):
        folder = base.parent / "shared" / "data" / name
        if folder.is_dir():
            return folder
    return None


def _codec_list(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    keys = [key.strip().lower() for key in value.split(",") if key.strip()]
    unknown = [key for key in keys if key not in CODECS]
    if unknown or not keys:
        raise click.BadParameter(f"{', '.join(unknown) or 'none given'}: choose from {','.join(CODECS)}")
    return list(dict.fromkeys(keys))


OUT = click.option("--out", type=click.Path(file_okay=False), required=True, help="Folder for the results.")


def prepare_out(out: str, *inputs: str | Path | None) -> None:
    """Make and check the results folder before any measurement (an error after the run lost it): never
    one of the ``inputs`` folders or inside one, where its files would join the test images."""
    folder = Path(out).resolve()
    for given in filter(None, inputs):
        source = Path(given).resolve()
        if folder == source or folder.is_relative_to(source):
            raise click.BadParameter(
                f"{out} is in the image folder {given}: its files would be read as images"
            )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise click.BadParameter(f"cannot make the folder: {one_line(error)}", param_hint="--out") from error
    if not os.access(folder, os.W_OK):
        raise click.BadParameter(f"{out}: cannot write there", param_hint="--out")


MODELS = click.option(
    "--model",
    "-m",
    "models",
    metavar="NAME|FILE",
    multiple=True,
    help="A vqcodec model (bundled name or file); repeatable.  [default: every bundled model]",
)


def folder_option(flag: str, what: str, default: str) -> Callable[[FC], FC]:
    return click.option(
        flag,
        type=click.Path(exists=True, file_okay=False),
        default=None,
        help=f"{what}.  [default: ../shared/data/{default}]",
    )


@click.group()
def bench() -> None:
    """Benchmarks: rate-distortion (rd), speed and memory (speed), the priors' bits per dimension (bpd).

    Each writes JSON and markdown to --out and prints the markdown; benchmarks/README.md says what
    each measures and where the committed runs are.
    """


@bench.command()
@folder_option("--data", "Folder of test images (searched recursively)", "kodak")
@OUT
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N images (sorted).")
@MODELS
@click.option(
    "--quality",
    "-q",
    "qualities",
    type=click.FloatRange(MIN_QUALITY, MAX_QUALITY),
    multiple=True,
    help="A vqcodec quality to run every model at (one operating point each); repeatable.  [default:"
    f" {', '.join(f'{quality:g}' for quality in SWEEP_QUALITIES)}]",
)
@click.option(
    "--effort",
    type=click.IntRange(min(EFFORTS), max(EFFORTS)),
    default=DEFAULT_EFFORT,
    show_default=True,
    help="vqcodec's encoder effort (compress --effort): its rate-distortion code choice.",
)
@click.option(
    "--codecs",
    default=",".join(CODECS),
    callback=_codec_list,
    help="Comma-separated codecs to run; those that cannot run here are skipped with a note.",
)
@reports_errors
def rd(
    data: str | None,
    out: str,
    limit: int | None,
    models: tuple[str, ...],
    qualities: tuple[float, ...],
    effort: int,
    codecs: list[str],
) -> None:
    """Rate-distortion of vqcodec against JPEG, WebP, AVIF, JPEG XL (and CompressAI).

    Every codec runs over its range of settings on every image; OUT gets one JSON file per codec
    (CompressAI's results format), results.md (all tables, BD-rates, the machine) and rd.png (PSNR and
    MS-SSIM against bpp). The markdown is also printed.

    \b
      vqcodec bench rd --out bench/ --limit 2
      vqcodec bench rd --data photos/ --out bench/ --model a.safetensors --model b.safetensors
      vqcodec bench rd --out bench/ --codecs vqcodec,jpeg,webp --quality 4
    """
    from vqcodec.bench.rd import format_markdown, run_rd

    folder = data or shared_data("kodak")
    if folder is None:
        raise click.UsageError("no ../shared/data/kodak here: give the test images with --data")
    prepare_out(out, folder)
    report = run_rd(
        folder, out, limit=limit, models=models, qualities=qualities, codecs=codecs, effort=effort
    )
    click.echo(format_markdown(report))
    click.echo("wrote " + ", ".join(str(path) for path in report.files), err=True)


@bench.command()
@folder_option("--data", "Folder of the Kodak PNGs (kodim05.png: the large images' source)", "kodak")
@OUT
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N Kodak images.")
@click.option(
    "--quality",
    type=click.FloatRange(MIN_QUALITY, MAX_QUALITY),
    default=MAX_QUALITY,
    show_default=True,
    help="vqcodec quality.",
)
@click.option(
    "--model", default=None, metavar="NAME|FILE", help="Bundled model or model file.  [default: default]"
)
@click.option(
    "--device",
    default="cpu",
    show_default=True,
    metavar="cpu|cuda",
    callback=check_device,
    help="cpu or cuda.",
)
@click.option(
    "--batch", type=click.IntRange(min=1), default=8, show_default=True, help="Files per batch decode."
)
@click.option(
    "--tile",
    type=click.IntRange(min=0),
    default=DEFAULT_TILE,
    show_default=True,
    help="Tile side in pixels (0: whole maps only); the images are also coded whole.",
)
@click.option(
    "--no-4k",
    "uhd",
    is_flag=True,
    flag_value=False,
    default=True,
    show_default=False,
    help="Skip the 3840x2160 image (run by default).",
)
@click.option(
    "--load",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="Busy processes for the threads' test (0: no threads' test).",
)
@click.option("--only-load", is_flag=True, help="Only the threads under a parallel load (threads.md).")
@click.option(
    "--only-large",
    metavar="WxH",
    callback=size_parser(MAX_IMAGE_PIXELS, "what the codec codes by default"),
    default=None,
    help="Only kodim05 resized to WxH (large.md).",
)
@reports_errors
def speed(
    data: str | None,
    out: str,
    limit: int | None,
    quality: float,
    model: str | None,
    device: str,
    batch: int,
    tile: int,
    uhd: bool,
    load: int,
    only_load: bool,
    only_large: tuple[int, int] | None,
) -> None:
    """Speed and peak memory of the encoder and decoder on Kodak and on a 3840x2160 image.

    Each timing runs in a fresh process. OUT gets speed.json and results.md (with CompressAI or its
    transforms, batch decoding, the tiles' cost and the compute floor) and, on the CPU, threads.json
    and threads.md. The markdown is also printed.

    \b
      vqcodec bench speed --out bench/speed --limit 4 --no-4k
      vqcodec bench speed --out bench/speed --device cuda --batch 24
      vqcodec bench speed --out bench/speed --only-large 9600x6400
    """
    from vqcodec.bench.child import Settings
    from vqcodec.bench.speed import THREADS_IMAGES, run_large, run_speed, run_threads
    from vqcodec.cli_codec import open_checked_codec

    folder = Path(data) if data else shared_data("kodak")
    kodak = sorted(folder.glob("*.png"))[: limit or (THREADS_IMAGES if only_load else None)] if folder else []
    if not kodak:
        raise click.UsageError(f"no Kodak PNGs in {folder or '../shared/data/kodak'}: give them with --data")
    if only_load and not load:
        raise click.BadParameter(
            "the threads' test needs busy processes (--load 1 or more)", param_hint="--load"
        )
    open_checked_codec(model, device, tile or None)  # a model, device or tile the children could not use: now
    prepare_out(out, folder)
    settings = Settings(quality, model, device, batch, tile)
    if only_load:
        text, files = run_threads(kodak, Path(out), settings, load)
    elif only_large:
        text, files = run_large(folder / "kodim05.png", *only_large, Path(out), settings)
    else:
        text, files = run_speed(kodak, Path(out), settings, folder / "kodim05.png" if uhd else None, load)
    click.echo(text)
    click.echo("wrote " + ", ".join(str(path) for path in files), err=True)


@bench.command()
@OUT
@MODELS
@click.option(
    "--images",
    type=click.IntRange(min=1),
    default=DEFAULT_IMAGES,
    show_default=True,
    help="Images of each folder, one crop each.",
)
@folder_option("--train-data", "Training images", "train")
@folder_option("--val-data", "Validation images", "val")
@reports_errors
def bpd(out: str, models: tuple[str, ...], images: int, train_data: str | None, val_data: str | None) -> None:
    """The priors' NLL in bits per dimension (per code) on crops of training and validation images.

    The VQ-VAE-2 paper's Table 1: a gap between train and val is the priors' overfitting. OUT gets
    bpd.json and results.md; the markdown is also printed.

    \b
      vqcodec bench bpd --out bench/bpd
      vqcodec bench bpd --out bench/bpd --model a.safetensors --images 64
    """
    from vqcodec.bench.bpd import markdown, run_bpd

    train, val = train_data or shared_data("train"), val_data or shared_data("val")
    if train is None and val is None:
        raise click.UsageError("no ../shared/data/train or val here: give them with --train-data, --val-data")
    prepare_out(out, train, val)
    report, files = run_bpd(out, train, val, models, images)
    click.echo(markdown(report))
    click.echo("wrote " + ", ".join(str(path) for path in files), err=True)


def register(group: click.Group) -> None:
    """Add ``bench`` to ``group`` (the ``vqcodec`` command line)."""
    group.add_command(bench)
