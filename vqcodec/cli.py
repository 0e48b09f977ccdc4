"""The ``vqcodec`` command line: a thin click shell over the Python API (no logic lives here).

Commands are grouped by what they work on, one module each: images and .vqz files (``cli_codec``:
``compress``, ``decompress``; ``cli_info``: ``info``, ``models``), a run folder (``cli_train``: ``train
vqvae``, ``prior``, ...), model files (``cli_model``: ``export``, ``calibrate``, ``sample``) and the
measurements (``vqcodec.bench.cli``). Every command wears ``vqcodec.cli_errors.reports_errors``: an
error ends as one line on stderr and the exit status of its kind. Commands import their API module
when they run, so that ``--help`` does not wait for torch.
"""

from __future__ import annotations

import click

from vqcodec.allocator import keep_freed_memory
from vqcodec.bench import cli as bench_cli
from vqcodec.cli_codec import compress, decompress
from vqcodec.cli_errors import EXIT_STATUS, Group
from vqcodec.cli_info import info, models
from vqcodec.cli_model import calibrate, export, sample
from vqcodec.cli_train import train


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


for command in (compress, decompress, info, models, train, export, calibrate, sample):
    main.add_command(command)
bench_cli.register(main)
