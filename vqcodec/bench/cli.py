"""``vqcodec bench``: a thin click shell over ``vqcodec.bench.run.run_benchmark``."""

from __future__ import annotations

import click

from vqcodec.bench.run import CODECS, DEFAULT_NLL_IMAGES
from vqcodec.quality import MAX_QUALITY, MIN_QUALITY, SWEEP_QUALITIES
from vqcodec.rdo import DEFAULT_EFFORT, EFFORTS


def _codec_list(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    keys = [key.strip().lower() for key in value.split(",") if key.strip()]
    unknown = [key for key in keys if key not in CODECS]
    if unknown or not keys:
        raise click.BadParameter(f"{', '.join(unknown) or 'none given'}: choose from {','.join(CODECS)}")
    return list(dict.fromkeys(keys))


@click.command()
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Folder of test images (searched recursively).  [default: ../shared/data/kodak]",
)
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Folder for the results.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N images (sorted).")
@click.option(
    "--model",
    "-m",
    "models",
    metavar="NAME|FILE",
    multiple=True,
    help="A vqcodec model (bundled name or file); repeatable.  [default: every bundled model]",
)
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
@click.option(
    "--nll-images",
    type=click.IntRange(min=0),
    default=DEFAULT_NLL_IMAGES,
    help="Training and validation images whose crops measure the priors' NLL (0: none).",
)
@click.option(
    "--train-data",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Training images for the NLL table.  [default: ../shared/data/train]",
)
@click.option(
    "--val-data",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Validation images for the NLL table.  [default: ../shared/data/val]",
)
def bench(
    data: str | None,
    out: str,
    limit: int | None,
    models: tuple[str, ...],
    qualities: tuple[float, ...],
    effort: int,
    codecs: list[str],
    nll_images: int,
    train_data: str | None,
    val_data: str | None,
) -> None:
    """Rate-distortion benchmark of vqcodec against JPEG, WebP, AVIF, JPEG XL (and CompressAI).

    Every codec runs over its range of settings on every image; OUT gets one JSON file per codec
    (CompressAI's results format), results.md (all tables, BD-rates, the priors' NLL, the machine)
    and rd.png (PSNR and MS-SSIM against bpp). The markdown is also printed.

    \b
      vqcodec bench --out bench/ --limit 2
      vqcodec bench --data photos/ --out bench/ --model a.safetensors --model b.safetensors
      vqcodec bench --out bench/ --codecs vqcodec,jpeg,webp --nll-images 0 --quality 4
    """
    from vqcodec.bench.run import format_markdown, run_benchmark, shared_data
    from vqcodec.cli_codec import errors

    folder = data or shared_data("kodak")
    if folder is None:
        raise click.UsageError("no ../shared/data/kodak here: give the test images with --data")
    with errors():
        report = run_benchmark(
            folder, out, limit, models, qualities, codecs, nll_images, train_data, val_data, True, effort
        )
    click.echo(format_markdown(report))
    click.echo("wrote " + ", ".join(str(path) for path in report.files), err=True)


def register(group: click.Group) -> None:
    """Add ``bench`` to ``group`` (the ``vqcodec`` command line)."""
    group.add_command(bench)
