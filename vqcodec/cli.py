"""The ``vqcodec`` command line: a thin click shell over the Python API (no logic lives here).

Commands are grouped by what they work on: training a run folder (``train vqvae``, ``train
prior``), and model files (``export``, ``sample``); the codec's commands live in ``cli_codec`` and
``cli_info``. Every command wears ``vqcodec.cli_errors.reports_errors``: an error ends as one line on
stderr and the exit status of its kind. Commands import their API module when they run, so that
``--help`` does not wait for torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from vqcodec.allocator import keep_freed_memory
from vqcodec.bench import cli as bench_cli
from vqcodec.cli_codec import compress, decompress
from vqcodec.cli_errors import EXIT_STATUS, Group, reports_errors
from vqcodec.cli_info import info, models
from vqcodec.cli_options import F, FiniteFloatRange, device_option_saying, force_option, size_parser
from vqcodec.imageio import MAX_IMAGE_SIDE
from vqcodec.models.config import PRESETS

MAX_SAMPLE_PIXELS = 2**22
"""The most pixels ``sample`` draws in one run, all its images together: they are drawn and decoded as
one batch, untiled, at about 0.5 KB a pixel (the codec tiles, and needs 1.5 GB for its largest
images), so the peak stays near 2 GB; e.g. 64 images of 256x256, or one of 2048x2048."""

MIN_TEMPERATURE = 1e-6
"""The lowest softmax temperature ``sample`` takes: there the draws are the most likely codes, whatever
the seed (lower changes nothing; at 1e-3 near-ties are still drawn at random), while logits would have
to exceed 1e32 to overflow float32 (near 1e-38 they do, and the draw fails)."""

# --device of the commands that default to CUDA when there is one (training, sampling), refused while
# parsing if unknown or absent here, as compress's is
cuda_first_device_option = device_option_saying("cpu, cuda or cuda:N  [default: cuda if available, else cpu]")


def _print_version(ctx: click.Context) -> None:
    from importlib.metadata import version

    from vqcodec.exact import fused  # imports torch: only when asked

    click.echo(f"vqcodec, version {version('vqcodec')}\n{fused.describe()}")
    ctx.exit()


@click.group(
    cls=Group,
    epilog=EXIT_STATUS,
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=lambda ctx, _param, value: _print_version(ctx) if value else None,
    help="Show the version, and whether the compiled kernels are in use, and exit.",
)
def main() -> None:
    """vqcodec: a learned lossy image codec (hierarchical VQ-VAE codes + PixelSNAIL priors).

    \b
    Train a model in a run folder (here with the bundled model's steps and batch sizes), export it
    to a model file, and use the model file:
      vqcodec train vqvae --data photos/ --val val/ --out runs/a --steps 7000 --batch-size 32 --crop 256
      vqcodec train prior --run-dir runs/a --level top --steps 3750 --batch-size 32
      vqcodec train prior --run-dir runs/a --level bottom --steps 13000 --batch-size 32
      vqcodec export --run-dir runs/a --out a.safetensors --half
      vqcodec sample --model a.safetensors --n 8 --out samples/
      vqcodec compress --model a.safetensors photo.png photo.vqz
      vqcodec decompress --model a.safetensors photo.vqz photo.png
    """
    keep_freed_memory()  # the process ends with the command (vqcodec.allocator)


# --- training: a run folder -----------------------------------------------------------------------


@main.group()
def train() -> None:
    """Train a model: stage 1 (the VQ-VAE), then stage 2 (one prior per level, top first).

    Stage 1b (train decoder) refines the decoder of a trained VQ-VAE, at any time after stage 1.

    \b
    Several GPUs: launch the same command with torchrun, e.g.
      torchrun --nproc-per-node 8 -m vqcodec train vqvae --data photos/ --out runs/a --steps 7000
      torchrun --nproc-per-node 8 -m vqcodec train prior --run-dir runs/a --level top --steps 3750
    (spell the run folder --run-dir: torchrun rejects --run as an ambiguous abbreviation of its
    own --run-path). --batch-size is the global batch, split over the GPUs (it must divide evenly).
    A run resumes from its checkpoint automatically (and continues exactly as an uninterrupted
    run would); --no-resume starts over, --resume insists on a checkpoint.
    """


def common_training_options(lr: float = 3e-4) -> Callable[[F], F]:
    """The options every training stage shares; ``lr`` is the stage's default learning rate."""
    options = [
        click.option("--steps", type=click.IntRange(min=1), required=True, help="Total steps of the run."),
        cuda_first_device_option,
        click.option(
            "--lr", type=FiniteFloatRange(min=0, min_open=True), default=lr, help="Adam learning rate."
        ),
        click.option(
            "--seed",
            type=click.IntRange(0, 2**63 - 1),
            default=0,
            help="Seeds initialisation, data stream and dropout.",
        ),
        click.option("--val-every", type=click.IntRange(min=1), default=1000, help="Validate every N steps."),
        click.option(
            "--ckpt-every", type=click.IntRange(min=1), default=1000, help="Checkpoint every N steps."
        ),
        click.option(
            "--log-every", type=click.IntRange(min=1), default=10, help="Log metrics every N steps."
        ),
        click.option(
            "--workers",
            type=click.IntRange(min=0),
            default=None,
            help="Data loading processes [default: 4 on CUDA, 0 on CPU].",
        ),
        click.option(
            "--precision",
            type=click.Choice(["fp32", "bf16", "fp16"]),
            default=None,
            help="Autocast precision [default: bf16 on CUDA, fp32 on CPU]; fp16 uses loss scaling.",
        ),
        click.option(
            "--resume/--no-resume",
            default=None,
            help="Resume from the checkpoint [default: when one exists].",
        ),
    ]

    def decorate(f: F) -> F:
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


# options that several training commands share
run_dir_option = click.option(
    "--run-dir",
    "--run",
    "run",
    type=click.Path(exists=True, file_okay=False),
    required=True,
    help="Run folder (after stage 1). --run is an alias that torchrun rejects (its own --run-path).",
)
training_images_option = click.option(
    "--data", type=click.Path(exists=True, file_okay=False), required=True, help="Folder of training images."
)
half_option = click.option(
    "--half", is_flag=True, help="Store the weights as float16 (half the size; bundled models)."
)
validation_images_option = click.option(
    "--val", "val_data", type=click.Path(exists=True, file_okay=False), help="Folder of validation images."
)


@train.command("vqvae")
@training_images_option
@click.option(
    "--out", "run", type=click.Path(file_okay=False), required=True, help="Run folder to create or resume."
)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, help="Images per step (global).")
@click.option(
    "--crop", type=click.IntRange(min=1), default=256, help="Side of the square training crops (px)."
)
@click.option(
    "--preset",
    type=click.Choice(list(PRESETS)),
    default=None,
    help="Model configuration [default: the run's own when resuming, else default].",
)
@validation_images_option
@common_training_options()
@reports_errors
def train_vqvae(data: str, run: str, preset: str | None, **options: Any) -> None:
    """Stage 1: train the VQ-VAE on random crops of the images under --data.

    \b
    Writes RUN/config.json, RUN/vqvae/checkpoint.safetensors and RUN/metrics.jsonl, e.g. with
    the bundled model's settings, then a quick CPU run of the tiny preset:
      vqcodec train vqvae --data photos/ --val val/ --out runs/a --steps 7000 --batch-size 32 --crop 256
      vqcodec train vqvae --data photos/ --out runs/tiny --steps 200 --batch-size 8 --crop 64 \\
          --preset tiny --device cpu --val val/
    """
    from vqcodec.train.stage1 import train_vqvae as api

    api(data, run, config=preset, **options)


@train.command("pack")
@click.option("--data", type=click.Path(exists=True, file_okay=False), required=True, help="Image folder.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Folder for the packed copies.")
@click.option("--short-side", type=click.IntRange(min=8), default=288, help="Downscale to this short side.")
@click.option("--quality", type=click.IntRange(1, 100), default=90, help="WebP quality of the copies.")
@force_option
@reports_errors
def train_pack(data: str, out: str, short_side: int, quality: int, force: bool) -> None:
    """Pack an image folder small enough to travel (e.g. to a GPU machine): downscaled WebP copies.

    The images are read as training reads them (turned upright by their EXIF orientation). Nothing
    is written when OUT is, holds or lies in the image folder, when two images would give one copy
    (a.jpg and a.png), or when copies exist already (unless --force).

    \b
      vqcodec train pack --data ../shared/data/train --out packed/train
    """
    from vqcodec.train.pack import pack_folder

    click.echo(f"{pack_folder(data, out, short_side, quality, force=force)} bytes written to {out}")


@train.command("from-model")
@click.option(
    "--model", "-m", "model", default=None, help="Bundled model name or model file [default: default]."
)
@click.option("--out", type=click.Path(file_okay=False), required=True, help="New run folder.")
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="LEVEL.KEY=VALUE",
    help="Change a prior's configuration, e.g. top.channels=64 (repeatable).",
)
@reports_errors
def train_from_model(model: str | None, out: str, settings: tuple[str, ...]) -> None:
    """Start a run from a trained model: new priors, or a refined decoder, for the same codes.

    \b
    The priors decide how fast files decode; their size can change without retraining the VQ-VAE:
      vqcodec train from-model --out runs/small --set top.channels=32 --set bottom.channels=32
      vqcodec train prior --run-dir runs/small --level top --data photos/ --val val/ --steps 3750
      vqcodec train prior --run-dir runs/small --level bottom --steps 13000
      vqcodec export --run-dir runs/small --out small.safetensors --half
    The priors whose configuration no --set changes are the model's own; with no --set, refine
    the decoder (the codes, and so the bits, stay the same):
      vqcodec train from-model --out runs/refined
      vqcodec train decoder --run-dir runs/refined --data photos/ --val val/ --steps 10000
      vqcodec export --run-dir runs/refined --out refined.safetensors --half
    """
    from vqcodec.train.from_model import run_from_model

    run_from_model(model, out, list(settings))
    if settings:
        click.echo(f"{out} is ready: next, vqcodec train prior --run-dir {out} --level top --data IMAGES")
    else:
        click.echo(f"{out} is ready: next, vqcodec train decoder --run-dir {out} --data IMAGES")


@train.command("prior")
@run_dir_option
@click.option("--level", required=True, help="top, middle, bottom, or a level index (0 = top).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, help="Code maps per step (global).")
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False),
    help="Training images [default: the cached codes', else stage 1's].",
)
@click.option(
    "--val",
    "val_data",
    type=click.Path(exists=True, file_okay=False),
    help="Validation images [default: the cached codes', else stage 1's].",
)
@click.option(
    "--crops-per-image",
    type=click.IntRange(min=1),
    default=None,
    help="Random crops encoded per image [default: the cached codes', else 8].",
)
@click.option(
    "--crop",
    type=click.IntRange(min=1),
    default=None,
    help="Crop side for the codes [default: the cached codes', else stage 1's].",
)
@click.option(
    "--quantised",
    is_flag=True,
    help="Fine-tune the run's prior through the integer prior's roundings (8-bit inputs and weights;"
    " its checkpoint is replaced), the learning rate decaying along a cosine: quantisation-aware"
    " training on the input ranges of the model the run came from (else measured as export measures"
    " them), which export keeps.",
)
@common_training_options()
@reports_errors
def train_prior(run: str, level: str, **options: Any) -> None:
    """Stage 2: train the prior of one level on codes of the trained VQ-VAE.

    The first prior to train extracts the codes of many random crops into RUN/codes/, and the
    others reuse them; the levels can be trained in any order. Reports the NLL in bits per code on
    training and validation codes.

    \b
      vqcodec train prior --run-dir runs/a --level top --steps 3750 --batch-size 32
      vqcodec train prior --run-dir runs/a --level bottom --steps 13000 --batch-size 32

    With --quantised the trained prior (or a model's own, after train from-model) learns the
    roundings of the integer prior that codes the files:

    \b
      vqcodec train prior --run-dir runs/a --level bottom --quantised --steps 1200 --lr 2e-5
    """
    from vqcodec.train.stage2 import train_prior as api

    api(run, level, **options)


@train.command("decoder")
@run_dir_option
@training_images_option
@validation_images_option
@click.option("--batch-size", type=click.IntRange(min=1), default=8, help="Images per step (global).")
@click.option(
    "--crop", type=click.IntRange(min=1), default=128, help="Side of the square training crops (px)."
)
@click.option(
    "--quantised",
    is_flag=True,
    help="Learn through the integer decoder's roundings (8-bit inputs and weights): quantisation-aware"
    " training on the input ranges of the model the run came from (else measured on the first --data"
    " images), which export keeps.",
)
@common_training_options(lr=1e-4)
@reports_errors
def train_decoder(run: str, data: str, **options: Any) -> None:
    """Stage 1b: refine the VQ-VAE's decoder for its frozen codes (PSNR up, bits unchanged).

    The encoder and the codebooks stay as they are, so every code and every prior stays valid; the
    learning rate (--lr) decays to zero along a cosine over --steps. Small enough for a CPU. Writes
    RUN/decoder/checkpoint.safetensors, which export then uses:

    \b
      vqcodec train from-model --out runs/refined
      vqcodec train decoder --run-dir runs/refined --data photos/ --val val/ --steps 10000 --device cpu
      vqcodec export --run-dir runs/refined --out refined.safetensors --half

    With --quantised it learns what the integer decoder draws, the pixels a file decodes to.
    """
    from vqcodec.train.decoder import train_decoder as api

    api(run, data, **options)


# --- model files -----------------------------------------------------------------------------------


@main.command()
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


@main.command()
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


@main.command()
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
    width, height = size
    if n * width * height > MAX_SAMPLE_PIXELS:
        raise click.BadParameter(
            f"{n} images of {width}x{height} are {n * width * height} pixels, more than one run draws"
            f" ({MAX_SAMPLE_PIXELS})",
            ctx=click.get_current_context(),
            param_hint="'--n'",
        )
    from vqcodec.sample import sample_to_folder
    from vqcodec.train.run import default_device

    paths = sample_to_folder(
        model, out, n, width, height, temperature, seed, device or default_device(), force=force
    )
    for path in paths:
        click.echo(path)


# --- codecs: compress, decompress (vqcodec/cli_codec.py), info, models (vqcodec/cli_info.py) ------

for command in (compress, decompress, info, models):
    main.add_command(command)
bench_cli.register(main)
