"""``vqcodec train``: the stages that train a model in a run folder (``vqcodec.train``), as thin click
shells: stage 1 (``vqvae``), 1b (``decoder``), 2 (``prior``), and the folders they start from
(``pack``: images that travel; ``from-model``: a trained model's VQ-VAE)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from vqcodec.cli_errors import reports_errors
from vqcodec.cli_options import F, FiniteFloatRange, cuda_first_device_option, force_option, run_dir_option
from vqcodec.models.config import PRESETS


@click.group()
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
training_images_option = click.option(
    "--data", type=click.Path(exists=True, file_okay=False), required=True, help="Folder of training images."
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
