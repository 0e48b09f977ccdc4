"""Code extraction: stage 1's codes of many random crops, cached once as the priors' training data.

The trained stage-1 encoder turns ``crops_per_image`` random crops (random scale, position and flip)
of every image into code maps, cached in ``RUN/codes/{train,val}.safetensors`` (one int16/int32
tensor ``level<i>`` [N, h_i, w_i] per level, top first). The cache records what it was made from
(the VQ-VAE checkpoint's SHA-256, the image folder, the crops) and is made again when any of it
changes. Every rank encodes its share of the images; the parts are merged in row order, so the
cache does not depend on the number of ranks.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError, safe_open
from torch.utils.data import DataLoader
from tqdm import tqdm

from vqcodec.models.config import VQVAEConfig
from vqcodec.models.vqvae import VQVAE
from vqcodec.train import dist
from vqcodec.train.checkpoint import checkpoint_path, file_sha256, load_weights, read_model_state, read_state
from vqcodec.train.data import ImageFolder, derive_seed
from vqcodec.train.run import default_device, default_workers, read_config, say
from vqcodec.zoo.modelfile import atomic_path

CODES_FORMAT = "vqcodec-codes"
CODES_VERSION = "1"
DEFAULT_CROPS_PER_IMAGE = 8
SPLITS = ("train", "val")


def code_path(run: Path, split: str) -> Path:
    """Where the cached codes of ``split`` ("train" or "val") of a run live."""
    return run / "codes" / f"{split}.safetensors"


def cached_source(path: Path) -> dict[str, Any] | None:
    """What the codes at ``path`` were extracted from, or None if there are none (or none readable:
    a cache cut short, by a full disk say, is made again)."""
    if not path.exists():
        return None
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
    except SafetensorError:
        return None
    if metadata.get("format") != CODES_FORMAT or metadata.get("version") != CODES_VERSION:
        return None
    return json.loads(metadata["source"])


def load_codes(path: Path) -> list[torch.Tensor]:
    """The cached code maps of every level (top first), as stored (int16 or int32) on the CPU."""
    tensors = safetensors.torch.load_file(path)
    return [tensors[f"level{i}"] for i in range(len(tensors))]


def folder_digest(paths: list[Path]) -> str:
    """Identifies a folder's image list by names and sizes (cheap: no image is read)."""
    lines = "".join(f"{p}\t{p.stat().st_size}\n" for p in paths)
    return hashlib.sha256(lines.encode()).hexdigest()


def extract_codes(
    run: str | Path,
    data: str | Path | None = None,
    crops_per_image: int | None = None,
    crop: int | None = None,
    device: str | torch.device | None = None,
    val_data: str | Path | None = None,
    batch_size: int = 32,
    seed: int = 0,
    workers: int | None = None,
) -> dict[str, Path]:
    """Codes of random crops of the ``data`` (and ``val_data``) images, cached in ``RUN/codes/``.

    Omitted arguments default to those of the cached codes, then to stage 1's (folders, crop size)
    and to ``DEFAULT_CROPS_PER_IMAGE``. Returns the paths of the "train" (and "val") code files.
    """
    run = Path(run)
    config = read_config(run).vqvae
    ckpt = checkpoint_path(run, "vqvae")
    sources = code_sources(run, data, crops_per_image, crop, val_data, seed)
    env = dist.setup(device or default_device())
    vqvae: VQVAE | None = None
    for split, source in sources.items():
        path = code_path(run, split)
        if cached_source(path) == source:
            say(f"Reusing the {split} codes in {path}")
            continue
        say(
            f"Extracting {split} codes: {source['crops_per_image']} crops of {source['crop']} px per image"
            f" of {source['data']}"
        )
        if vqvae is None:
            vqvae = VQVAE(config)
            load_weights(vqvae, read_model_state(ckpt), ckpt)
            vqvae.to(env.device).eval()
        dataset = ImageFolder(source["data"], source["crop"])
        loader_workers = default_workers(env.device) if workers is None else workers
        part = _encode_share(vqvae, dataset, source, batch_size, loader_workers, env)
        _write_merged(part, len(dataset) * source["crops_per_image"], path, source, env)
    return {split: code_path(run, split) for split in sources}


def code_sources(
    run: str | Path,
    data: str | Path | None = None,
    crops_per_image: int | None = None,
    crop: int | None = None,
    val_data: str | Path | None = None,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """What ``extract_codes`` with these arguments makes the codes of each split from (what their
    cache records): known without encoding anything, so that a stage can refuse its settings first."""
    run = Path(run)
    ckpt = checkpoint_path(run, "vqvae")
    if not ckpt.exists():
        raise FileNotFoundError(
            f"no stage-1 checkpoint at {ckpt}: train the VQ-VAE first (vqcodec train vqvae)"
        )
    folders = {"train": data, "val": val_data}
    config = read_config(run).vqvae
    return _sources(run, folders, crops_per_image, crop, seed, read_state(ckpt), file_sha256(ckpt), config)


def _sources(
    run: Path,
    folders: dict[str, str | Path | None],
    crops_per_image: int | None,
    crop: int | None,
    seed: int,
    stage1: dict[str, Any],
    vqvae_sha256: str,
    config: VQVAEConfig,
) -> dict[str, dict[str, Any]]:
    """What the codes of each split are to be made from: the given arguments, else the cache's, else
    stage 1's. A split without images (no validation folder anywhere) is left out."""
    cached = {split: cached_source(code_path(run, split)) or {} for split in SPLITS}
    crop = crop or cached["train"].get("crop") or stage1["meta"]["settings"]["crop"]
    crops_per_image = crops_per_image or cached["train"].get("crops_per_image") or DEFAULT_CROPS_PER_IMAGE
    if crop % config.multiple:
        raise ValueError(f"crop {crop} must be a multiple of {config.multiple} for this model")
    stage1_folders = {"train": stage1["meta"]["data"], "val": stage1["meta"]["val_data"]}
    found = {split: folders[split] or cached[split].get("data") or stage1_folders[split] for split in SPLITS}
    if found["train"] is None:
        raise ValueError(f"no training images known for {run}: give them (--data)")
    sources = {}
    for split, folder in found.items():
        if folder is None:
            continue
        if split == "val" and folders["val"] is None and not Path(folder).is_dir():  # a run moved, say
            say(f"Warning: the validation images {folder} are gone; no validation (give them with --val)")
            continue
        folder = Path(folder).resolve()
        sources[split] = {
            "split": split,
            "data": str(folder),
            "images": folder_digest(ImageFolder(folder, crop).paths),
            "crops_per_image": crops_per_image,
            "crop": crop,
            "seed": seed,
            "vqvae_sha256": vqvae_sha256,
            "vqvae_step": stage1["step"],
        }
    return sources


def _encode_share(
    vqvae: VQVAE,
    dataset: ImageFolder,
    source: dict[str, Any],
    batch_size: int,
    workers: int,
    env: dist.Dist,
) -> dict[str, torch.Tensor]:
    """The codes of this rank's share of the crops of ``source``, with their global row numbers."""
    per_image = source["crops_per_image"]
    rows = [
        i * per_image + j
        for i in dist.shard(len(dataset), env.rank, env.world_size)
        for j in range(per_image)
    ]
    keys = [(r // per_image, derive_seed(source["seed"], "codes", source["split"], r)) for r in rows]
    part = {
        f"level{i}": torch.empty(len(rows), *shape, dtype=dtype)
        for i, (shape, dtype) in enumerate(_code_layout(vqvae.config, dataset.crop))
    }
    part["rows"] = torch.tensor(rows, dtype=torch.int64)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=keys, num_workers=workers)
    done = 0
    for batch in tqdm(loader, desc=f"codes {source['split']}", disable=not env.is_main, dynamic_ncols=True):
        for i, codes in enumerate(vqvae.encode(batch.to(env.device))):
            part[f"level{i}"][done : done + len(batch)] = codes.to(part[f"level{i}"].dtype).cpu()
        done += len(batch)
    return part


def _code_layout(config: VQVAEConfig, crop: int) -> list[tuple[tuple[int, int], torch.dtype]]:
    """The shape and dtype of one crop's code map per level: int16 whenever the codebook fits."""
    layout = []
    for i, level in enumerate(config.levels):
        side = crop // config.stride(i)
        layout.append(((side, side), torch.int16 if level.codebook_size <= 2**15 else torch.int32))
    return layout


def _write_merged(
    part: dict[str, torch.Tensor], n_rows: int, out: Path, source: dict[str, Any], env: dist.Dist
) -> None:
    """Write every rank's part beside ``out``; the main process merges them in row order into ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(part, _part_path(out, env.rank))
    dist.barrier()
    if env.is_main:
        merged = {
            key: torch.empty(n_rows, *codes.shape[1:], dtype=codes.dtype)
            for key, codes in part.items()
            if key != "rows"
        }
        for rank in range(env.world_size):
            path = _part_path(out, rank)
            tensors = safetensors.torch.load_file(path)
            for key, value in merged.items():
                value[tensors["rows"]] = tensors[key]
            path.unlink()
        metadata = {"format": CODES_FORMAT, "version": CODES_VERSION, "source": json.dumps(source)}
        with atomic_path(out) as tmp:
            safetensors.torch.save_file(merged, tmp, metadata=metadata)
    dist.barrier()


def _part_path(out: Path, rank: int) -> Path:
    return out.with_name(f".{out.stem}.part{rank}.safetensors")
