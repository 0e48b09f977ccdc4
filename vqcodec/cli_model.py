"""The commands on model files, as thin click shells: ``export`` (a run folder to a model file),
``calibrate`` (a model file's integer ranges, measured anew) and ``sample`` (images drawn from a model's
priors, ``vqcodec.sample``)."""

from __future__ import annotations

import click

from vqcodec.cli_errors import reports_errors
from vqcodec.cli_options import (
    FiniteFloatRange,
    cuda_first_device_option,
    force_option,
    run_dir_option,
    size_parser,
)
from vqcodec.imageio import MAX_IMAGE_SIDE
from vqcodec.sample import MAX_SAMPLE_PIXELS, MIN_TEMPERATURE

half_option = click.option(
    "--half", is_flag=True, help="Store the weights as float16 (half the size; bundled models)."
)


@click.command()
@run_dir_option
@click.option(
    "--out", type=click.Path(dir_okay=False), required=True, help="Model file to write (.safetensors)."
)
@click.option("--force", "-f", is_flag=True, help="Overwrite OUT if it exists.")
@click.option(
    "--allow-untrained-priors", is_flag=True, help="Export even if a level has no trained prior (testing)."
)
@half_option
@click.option(
    "--calibration-images",
    type=click.Path(exists=True, file_okay=False),
    help="Folder of images to measure the integer layers' input ranges on.  [default: the run's training"
    " images]",
)
@reports_errors
def export(
    run: str, out: str, force: bool, allow_untrained_priors: bool, half: bool, calibration_images: str | None
) -> None:
    """Write a run's VQ-VAE and priors to one model file; prints its SHA-256.

    The codec runs the model in 8-bit integers; the input range of each layer is measured on the
    first 8 training images and stored in the file (see `vqcodec calibrate`).

    Refuses a prior trained on the codes of an earlier VQ-VAE checkpoint (the VQ-VAE was trained
    further after it: retrain the prior), an existing OUT without --force, and an OUT that is one of
    the run's own files. OUT appears only when complete.

    \b
      vqcodec export --run-dir runs/a --out a.safetensors --half
    """
    from vqcodec.train.export import export as api

    click.echo(
        api(
            run,
            out,
            allow_untrained=allow_untrained_priors,
            half=half,
            force=force,
            calibration=calibration_images,
        )
    )


@click.command()
@click.option(
    "--model",
    "-m",
    "model_file",
    type=click.Path(exists=True, dir_okay=False),
    required=True,
    help="Model file to read (never changed).",
)
@click.option(
    "--images",
    type=click.Path(exists=True, file_okay=False),
    required=True,
    help="Folder of training images (never the benchmark's).",
)
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Model file to write.")
@click.option("--n", type=click.IntRange(min=1), default=8, help="Images to measure on (the first, by path).")
@half_option
@click.option("--force", "-f", is_flag=True, help="Overwrite OUT if it exists.")
@reports_errors
def calibrate(model_file: str, images: str, out: str, n: int, half: bool, force: bool) -> None:
    """Measure a model's input ranges on images; write it with them to OUT, print its SHA-256.

    The codec rounds the input of every layer to 8 bits (the priors and the pixel decoder) or 16
    (the encoder); a layer's range is the largest input the float model gives it on these images, and
    the ranges are part of the model file (its id changes). `vqcodec export` does this for a run;
    this command does it for a model file written before version 2 of the format, or to measure on
    other images.

    \b
      vqcodec calibrate -m old.safetensors --images photos/ --out new.safetensors --half
    """
    from vqcodec.train.export import calibrate_model_file

    click.echo(calibrate_model_file(model_file, images, out, n=n, half=half, force=force))


@click.command()
@click.option(
    "--model",
    "-m",
    metavar="NAME|FILE",
    default=None,
    help="A bundled model's name (see `vqcodec models`) or a model file.  [default: the bundled default]",
)
@click.option(
    "--n",
    type=click.IntRange(min=1),
    default=4,
    help=f"Number of images. They are drawn together, in memory at once: N x WIDTH x HEIGHT may be at"
    f" most {MAX_SAMPLE_PIXELS} (about 2 GB), e.g. N=64 at 256x256; run again with another --seed for"
    " more.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    required=True,
    help="Folder for the PNG files, sample_SEED_I.png (made if missing).",
)
@force_option
@cuda_first_device_option
@click.option(
    "--size",
    default="256x256",
    callback=size_parser(MAX_SAMPLE_PIXELS, "what one run draws"),
    help=f"WIDTHxHEIGHT, multiples of the model's top stride; at most {MAX_IMAGE_SIDE} a side and"
    f" {MAX_SAMPLE_PIXELS} pixels (see --n).",
)
@click.option(
    "--temperature",
    type=FiniteFloatRange(min=MIN_TEMPERATURE),
    default=1.0,
    help=f"Softmax temperature: below 1 the draws keep to likelier codes, above 1 they stray further; at"
    f" the least, {MIN_TEMPERATURE:g}, they are the most likely codes, whatever the --seed.",
)
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, help="Seed of the draws.")
@reports_errors
def sample(
    model: str | None,
    n: int,
    out: str,
    force: bool,
    device: str | None,
    size: tuple[int, int],
    temperature: float,
    seed: int,
) -> None:
    """Draw images from a model's priors and write them as PNG files.

    Without --force, refuses (before drawing anything) to overwrite a PNG file that exists; each file
    appears only when complete.

    \b
      vqcodec sample --n 4 --out samples/
      vqcodec sample --model a.safetensors --n 8 --out samples/ --size 256x256 --temperature 0.9
    """
    from vqcodec.sample import check_sample_size, sample_to_folder

    width, height = size
    try:
        check_sample_size(n, width, height)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="'--n'") from None
    paths = sample_to_folder(model, out, n, width, height, temperature, seed, device, force=force)
    for path in paths:
        click.echo(path)
