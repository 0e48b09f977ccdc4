"""What the wavefront's causal attention window costs in bits, against the full raster context.

    python experiments/context_cost.py WINDOW.safetensors REFERENCE.safetensors [--data DIR] [--out DIR]

Wavefront decoding restricts only the top prior's attention: its 3x3 masked convolutions already
see exactly what a raster-order PixelCNN's do (mask "A" and "B" take the same offsets), but its
attention may look only at a causal window of ``attention_radius`` whose offsets satisfy
``dx + 2 dy <= 0``, where the PixelSNAIL paper's attention sees every earlier position in raster
order. The two model files must share the VQ-VAE and the bottom prior and differ only in the top
prior's ``attention_context`` ("window" against "raster"), trained the same way for the same steps:

    vqcodec train prior --run RUN --level top ...       # RUN/config.json: attention_context "window"
    vqcodec train prior --run REF --level top ...       # REF/config.json: attention_context "raster"

On every Kodak image (quality 4) both models' float priors give the ideal bits of the same codes,
``-sum log2 p``; the cost is the window's extra bits over the reference's, as a share of the
reference's total (top and bottom). Writes ``context_cost.json`` and ``context_cost.md``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vqcodec.imageio import pad_to_multiple
from vqcodec.models.model import CodecModel
from vqcodec.zoo.modelfile import read_model


def level_bits(model: CodecModel, codes: list[torch.Tensor]) -> list[float]:
    """Ideal bits of every level's codes [1, h, w] under the model's float priors, top first."""
    bits = []
    for level, prior in enumerate(model.priors):
        logits = prior(codes[level], cond_codes=codes[:level])
        bits.append(F.cross_entropy(logits, codes[level], reduction="sum").item() / math.log(2))
    return bits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("window", type=Path, help="model file whose top prior uses the causal window")
    parser.add_argument("reference", type=Path, help="the same model with a raster-context top prior")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/kodak"), help="the Kodak images")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/context"), help="results folder")
    args = parser.parse_args()

    window, _ = read_model(args.window)
    reference, _ = read_model(args.reference)
    contexts = [m.config.priors[0].attention_context for m in (window, reference)]
    if contexts != ["window", "raster"]:
        raise SystemExit(f"expected top priors with window and raster attention, got {contexts}")
    same = {k: torch.equal(v, reference.state_dict()[k]) for k, v in window.state_dict().items()}
    if not all(same[k] for k in same if not k.startswith("priors.0.")):
        raise SystemExit("the models must share the VQ-VAE and the lower priors")

    rows = []
    with torch.inference_mode():
        for path in sorted(args.data.glob("*.png")):
            rgb = pad_to_multiple(np.asarray(Image.open(path).convert("RGB")), window.config.vqvae.multiple)
            pixels = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0 - 0.5
            codes = window.vqvae.encode(pixels)
            rows.append(
                {
                    "image": path.stem,
                    "window": level_bits(window.eval(), codes),
                    "raster": level_bits(reference.eval(), codes),
                }
            )
            print(rows[-1], flush=True)
    top_w, top_r = (sum(r[k][0] for r in rows) for k in ("window", "raster"))
    total_r = sum(sum(r["raster"]) for r in rows)
    report = {
        "images": len(rows),
        "window_top_bits": top_w,
        "raster_top_bits": top_r,
        "raster_total_bits": total_r,
        "cost_percent_of_total": 100 * (top_w - top_r) / total_r,
        "cost_percent_of_top": 100 * (top_w - top_r) / top_r,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "context_cost.json").write_text(json.dumps(report, indent=2) + "\n")
    text = (
        "# The cost of the wavefront context\n\n"
        f"`python experiments/context_cost.py {args.window.name} {args.reference.name}` on {len(rows)} Kodak"
        " images (quality 4, float priors, ideal bits).\n\n"
        "| top prior | top-level bits | all bits |\n|---|---:|---:|\n"
        f"| raster context (reference) | {top_r:,.0f} | {total_r:,.0f} |\n"
        f"| causal window (decodable in wavefronts) | {top_w:,.0f} | {total_r + top_w - top_r:,.0f} |\n\n"
        f"The window costs {report['cost_percent_of_top']:+.2f} % of the top level's bits,"
        f" {report['cost_percent_of_total']:+.2f} % of all bits.\n"
    )
    (args.out / "context_cost.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
