"""The priors' bits per dimension: each prior's NLL on crops of training and validation images.

The VQ-VAE-2 paper's Table 1. The crops are drawn as training draws its code caches, so the two
columns compare as the paper's do: a gap between train and val is the priors' overfitting. One
dimension is one code, so bits per dimension are bits per code.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vqcodec.bench.codecs import load_models
from vqcodec.bench.report import machine_info, number, run_line, save, table

DEFAULT_IMAGES = 16
CROP = 256
"""Side of the square crops whose codes the priors' NLL is measured on."""


@dataclass
class NLLRow:
    """A prior's mean NLL in bits per code on crops of the training and the validation images."""

    model: str
    level: str
    train: float | None
    val: float | None


def run_bpd(
    out: str | os.PathLike[str],
    train_data: str | os.PathLike[str] | None,
    val_data: str | os.PathLike[str] | None,
    models: Sequence[str] = (),
    n_images: int = DEFAULT_IMAGES,
) -> tuple[dict[str, Any], list[Path]]:
    """Measure every prior of ``models`` (none: every bundled model) on ``n_images`` crops of each folder.

    A folder that is None leaves its column empty. Writes ``bpd.json`` and ``results.md`` to ``out``;
    returns the report and the files.
    """
    from vqcodec.models.config import level_names

    folders = {"train": train_data, "val": val_data}
    rows = []
    for label, codec in load_models(models):
        bits = {split: prior_nll(codec, Path(f), n_images) if f else None for split, f in folders.items()}
        for level, name in enumerate(level_names(len(codec.model.priors))):
            train, val = (None if bits[split] is None else bits[split][level] for split in folders)
            rows.append(NLLRow(label, name, train, val))
    report = {
        "images": n_images,
        "crop": CROP,
        "train_data": None if train_data is None else str(train_data),
        "val_data": None if val_data is None else str(val_data),
        "machine": machine_info(),
        "rows": [asdict(row) for row in rows],
    }
    return report, save(out, {"bpd.json": report, "results.md": markdown(report)})


def prior_nll(codec: Any, folder: Path, n_images: int, batch_size: int = 4) -> list[float]:
    """Each prior's mean float NLL in bits per code on one seeded random crop of ``n_images`` images.

    The images are spread evenly over the folder's sorted list; the crops are drawn as the training
    code caches draw theirs (random scale in [0.5, 1], position and flip).
    """
    import torch

    from vqcodec.train.data import ImageFolder, derive_seed
    from vqcodec.train.dist import Dist
    from vqcodec.train.evaluate import nll_bits

    dataset = ImageFolder(folder, CROP)
    indices = np.linspace(0, len(dataset) - 1, min(n_images, len(dataset))).round().astype(int)
    keys = [(int(i), derive_seed("bench-nll", int(i))) for i in indices]
    model = codec.model
    levels: list[list[torch.Tensor]] = [[] for _ in model.priors]
    with torch.inference_mode():
        for start in range(0, len(keys), batch_size):
            batch = torch.stack([dataset[key] for key in keys[start : start + batch_size]]).to(codec.device)
            for level, codes in enumerate(model.vqvae.encode(batch)):
                levels[level].append(codes)
    codes = [torch.cat(level) for level in levels]
    rows = torch.arange(len(keys))
    env = Dist(0, 1, codec.device)
    bits = []
    for level, prior in enumerate(model.priors):
        bits.append(nll_bits(prior, codes[: level + 1], rows, batch_size, env, "fp32"))
    return bits


def markdown(report: dict[str, Any]) -> str:
    """The NLL table, with the run's machine and folders."""
    folders = [
        f"{split} `{report[f'{split}_data']}`" for split in ("train", "val") if report[f"{split}_data"]
    ]
    rows = [[r["model"], r["level"], number(r["train"], 4), number(r["val"], 4)] for r in report["rows"]]
    lines = [
        "# Priors: NLL in bits per code (the paper's Table 1)",
        "",
        f"{run_line(report['machine'])}; `vqcodec bench bpd`: {', '.join(folders)}.",
        "",
        f"One seeded random {report['crop']}x{report['crop']} crop (scale 0.5-1, flip) of each of up to"
        f" {report['images']} images (`--images`), spread over the training and the validation folders;"
        " float priors.",
        "",
        *table(["model", "level", "train", "val"], "llrr", rows),
    ]
    return "\n".join(lines) + "\n"
