"""Options the codec's commands share (``compress``, ``decompress``, ``info``), spelled once so that they
read the same in every ``--help``."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import click

from vqcodec.threads import MAX_THREADS

F = TypeVar("F", bound=Callable[..., Any])
"""A click command function, as decorators take and return it."""


def size_parser(max_pixels: int, why: str) -> Callable[[click.Context, click.Parameter, str | None], Any]:
    """A click callback: WxH -> (width, height), None as is; refused while parsing unless both sides are
    positive, at most ``MAX_IMAGE_SIDE``, and the area at most ``max_pixels`` (``why``: what sets it)."""
    from vqcodec.imageio import MAX_IMAGE_SIDE

    def parse(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
        if value is None:
            return None
        try:
            width, height = (int(side) for side in value.lower().split("x"))
        except ValueError:
            raise click.BadParameter(f"{value!r} is not WIDTHxHEIGHT, e.g. 256x256") from None
        if min(width, height) <= 0:
            raise click.BadParameter(f"{value!r}: the sides must be positive")
        if max(width, height) > MAX_IMAGE_SIDE or width * height > max_pixels:
            raise click.BadParameter(
                f"{value!r} is too large (limits: {MAX_IMAGE_SIDE} px a side, {max_pixels} px in all: {why})"
            )
        return width, height

    return parse


def check_device(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Refuse an unknown or absent device while parsing: a usage error, before any work."""
    if value is None:
        return None
    from vqcodec.codec import check_device

    try:
        check_device(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from error
    return value


def model_option(default_help: str) -> Callable[[F], F]:
    """``--model``, whose default differs by command: compress's is fixed, decompress's is in the file."""
    return click.option(
        "--model",
        "-m",
        metavar="NAME|FILE",
        default=None,
        help=f"A bundled model's name (see `vqcodec models`) or a model file.  [default: {default_help}]",
    )


def device_option_saying(help: str) -> Callable[[F], F]:
    """``--device``, checked while parsing (``check_device``), with the command's own ``help``."""
    return click.option("--device", default=None, metavar="cpu|cuda", callback=check_device, help=help)


device_option = device_option_saying(
    "cpu or cuda: a .vqz file decodes to the same codes on both.  [default: cpu]"
)
threads_option = click.option(
    "--threads",
    "-j",
    type=click.IntRange(min=1, max=MAX_THREADS),
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


class FiniteFloatRange(click.FloatRange):
    """A FloatRange that also refuses nan and inf, which its bounds let through or treat as numbers."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value} is not a finite number", param, ctx)
        return number


# --device of the commands that default to CUDA when there is one (training, sampling), refused while
# parsing if unknown or absent here, as compress's is
cuda_first_device_option = device_option_saying("cpu, cuda or cuda:N  [default: cuda if available, else cpu]")

# a training run's folder, for the training stages after the first and for export
run_dir_option = click.option(
    "--run-dir",
    "--run",
    "run",
    type=click.Path(exists=True, file_okay=False),
    required=True,
    help="Run folder (after stage 1). --run is an alias that torchrun rejects (its own --run-path).",
)
