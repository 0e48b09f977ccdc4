"""What smaller tiles for the bottom level would cost in bits, and what they would save in steps.

    python experiments/tile_cost.py [--model FILE] [--data DIR] [--images 24] [--repeats 5] [--out DIR]

A decode takes as many sequential wavefront steps as its largest tile has (``order.n_steps``): 94 for
a 256-pixel tile's 32 x 32 top codes, 190 for its 64 x 64 bottom codes. The bottom level's tiles
could be smaller than the top level's, and conditioned either on the top codes under them (as a
``.vqz`` tile is, an independent image) or on the conditioning features of the whole top map, which
the decoder knows before it starts the bottom level. For every Kodak image (quality 4: the image as
it is), this script takes the ideal bits ``-sum log2 p`` of its codes under the model's float priors
for several such layouts on a grid from the top-left corner, with the top level always in 256-pixel
tiles, and compares them with whole maps, the context the issue's 1 % budget is measured against,
and with the tiles of the format. It also times, on the last image, the exact bottom prior's walk
over all its tiles of each shape at once (``ExactPrior.batch_stepper``, the median of ``--repeats``
walks, the shapes taken in turn; the conditioning does not change the time). Writes
``tile_cost.json`` and ``tile_cost.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vqcodec.codec import Codec
from vqcodec.coding import order
from vqcodec.models.pixelsnail import PixelSNAILPrior

TOP_TILE = 32
"""Top-level codes a side of a 256-pixel tile."""

LAYOUTS: dict[str, tuple[tuple[int, int] | None, bool]] = {
    "whole maps": (None, True),
    "256-pixel tiles (the format)": ((64, 64), False),
    "256-pixel tiles, bottom conditioned on the whole top map": ((64, 64), True),
    "bottom tiles 256 wide, 128 tall": ((32, 64), False),
    "bottom tiles 256 wide, 128 tall, whole-map conditioning": ((32, 64), True),
    "bottom tiles of 128 pixels": ((32, 32), False),
    "bottom tiles of 128 pixels, whole-map conditioning": ((32, 32), True),
}
"""Per layout: the bottom level's tiles (rows, columns) in bottom codes (None: the whole map), and
whether they are conditioned on the whole top map (else on the top codes under each tile)."""


def bits(prior: PixelSNAILPrior, codes: torch.Tensor, **condition: object) -> float:
    """Ideal bits of codes [h, w] under ``prior``, conditioned as ``PixelSNAILPrior.forward`` takes it."""
    logits = prior(codes[None], **condition)
    return F.cross_entropy(logits, codes[None], reduction="sum").item() / math.log(2)


def windows(height: int, width: int, tile: tuple[int, int]) -> list[tuple[slice, slice]]:
    """The tiles of a grid of ``tile`` (rows, columns) from the top-left corner, the last ones cut."""
    return [
        (slice(y, y + tile[0]), slice(x, x + tile[1]))
        for y in range(0, height, tile[0])
        for x in range(0, width, tile[1])
    ]


def top_under(top: torch.Tensor, rows: slice, cols: slice) -> torch.Tensor:
    """The top-level codes under a bottom-level tile (half its rows and columns, rounded outwards)."""
    return top[rows.start // 2 : -(-rows.stop // 2), cols.start // 2 : -(-cols.stop // 2)]


def level_bits(codec: Codec, top: torch.Tensor, bottom: torch.Tensor) -> dict[str, tuple[float, float]]:
    """(top bits, bottom bits) of one image's codes in every layout."""
    top_prior, bottom_prior = codec.model.priors
    top_tiled = sum(bits(top_prior, top[w]) for w in windows(*top.shape, (TOP_TILE, TOP_TILE)))
    whole_condition = bottom_prior.condition([top[None]], size=tuple(bottom.shape))[0]
    result = {}
    for name, (tile, whole) in LAYOUTS.items():
        if tile is None:
            result[name] = (
                bits(top_prior, top),
                bits(bottom_prior, bottom, cond_features=whole_condition[None]),
            )
            continue
        total = 0.0
        for rows, cols in windows(*bottom.shape, tile):
            if whole:
                total += bits(
                    bottom_prior, bottom[rows, cols], cond_features=whole_condition[None, :, rows, cols]
                )
            else:
                above = top_under(top, rows, cols)[None]
                total += bits(bottom_prior, bottom[rows, cols], cond_codes=[above])
        result[name] = (top_tiled, total)
    return result


def bottom_walk_seconds(
    codec: Codec, top: torch.Tensor, bottom: torch.Tensor, tile: tuple[int, int]
) -> float:
    """Seconds of the exact bottom prior's walk over all of an image's tiles of ``tile`` side by side, as
    a decoder would take it (codes entered from the known map), without the range coder."""
    start = time.perf_counter()
    cuts = windows(*bottom.shape, tile)
    above = [[top_under(top, rows, cols)] for rows, cols in cuts]
    stepper = codec.exact_priors[1].batch_stepper(*tile, above, [bottom[cut].shape for cut in cuts])
    padded = torch.zeros(len(cuts), *tile, dtype=torch.int64)
    for i, cut in enumerate(cuts):
        padded[i, : bottom[cut].shape[0], : bottom[cut].shape[1]] = bottom[cut]
    for t in range(stepper.n_steps):
        stepper.freqs(t)
        ys, xs = stepper.positions(t)
        stepper.set_codes(t, padded[:, ys, xs].T)  # position by position, tile by tile within each
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default=None, help="model file or bundled name (default: the default model)"
    )
    parser.add_argument("--data", type=Path, default=Path("../shared/data/kodak"), help="the Kodak images")
    parser.add_argument("--images", type=int, default=24, help="how many of them, in name order")
    parser.add_argument("--repeats", type=int, default=5, help="timed walks of each tile shape")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/context"), help="results folder")
    args = parser.parse_args()

    codec = Codec.open(args.model, device="cpu")
    totals = dict.fromkeys(LAYOUTS, 0.0)
    paths = sorted(args.data.glob("*.png"))[: args.images]
    if not paths:
        raise SystemExit(f"no PNG images in {args.data}")
    with torch.inference_mode():
        for path in paths:
            top, bottom = (
                torch.from_numpy(c) for c in codec.image_codes(np.asarray(Image.open(path).convert("RGB")))
            )
            for name, (top_bits, bottom_bits) in level_bits(codec, top, bottom).items():
                totals[name] += top_bits + bottom_bits
            print(path.stem, flush=True)
        walks: dict[tuple[int, int], list[float]] = {tile: [] for tile, _ in LAYOUTS.values() if tile}
        for _ in range(args.repeats):  # the shapes in turn, so that the machine's drift hits them alike
            for tile, times in walks.items():
                times.append(bottom_walk_seconds(codec, top, bottom, tile))
        seconds = {tile: statistics.median(times) for tile, times in walks.items()}
    rows = table_rows(totals, seconds)
    write_results(args.out, rows, len(paths), paths[-1].stem, args.repeats)


def table_rows(totals: dict[str, float], seconds: dict[tuple[int, int], float]) -> list[dict]:
    """One row per layout: its bits against whole maps and the format's tiles, steps and walk time."""
    whole, format_tiles = totals["whole maps"], totals["256-pixel tiles (the format)"]
    rows = []
    for name, (tile, _) in LAYOUTS.items():
        if tile is None:  # a 768 x 512 image's maps
            steps = order.n_steps(64, 96) + order.n_steps(128, 192)
        else:
            steps = order.n_steps(TOP_TILE, TOP_TILE) + order.n_steps(*tile)
        rows.append(
            {
                "layout": name,
                "bits": totals[name],
                "against_whole_percent": 100 * (totals[name] / whole - 1),
                "against_format_tiles_percent": 100 * (totals[name] / format_tiles - 1),
                "steps": steps,
                "bottom_walk_seconds": None if tile is None else seconds[tile],
            }
        )
    return rows


def write_results(out: Path, rows: list[dict], images: int, timed: str, repeats: int) -> None:
    """tile_cost.json and tile_cost.md in ``out``; ``timed`` names the image whose walks were timed."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "tile_cost.json").write_text(json.dumps({"images": images, "rows": rows}, indent=2) + "\n")
    threads = torch.get_num_threads()
    text = (
        "# Smaller bottom-level tiles: bits, steps and time\n\n"
        f"`python experiments/tile_cost.py` on {images} Kodak images (quality 4, float priors, ideal"
        " bits; the top level in tiles of 256 pixels except for whole maps; the steps of a 768 x 512 image;"
        f" the exact bottom prior's walk over {timed}'s tiles on the CPU, {threads} threads, the"
        f" median of {repeats}).\n\n"
        "| layout | bits | against whole maps | against the format's tiles | sequential steps"
        " | bottom walk (s) |\n|---|---:|---:|---:|---:|---:|\n"
        + "".join(
            f"| {r['layout']} | {r['bits']:,.0f} | {r['against_whole_percent']:+.2f} % |"
            f" {r['against_format_tiles_percent']:+.2f} % | {r['steps']} |"
            f" {'' if r['bottom_walk_seconds'] is None else format(r['bottom_walk_seconds'], '.2f')} |\n"
            for r in rows
        )
    )
    (out / "tile_cost.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
