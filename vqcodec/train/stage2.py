"""Stage 2: extract the codes of many crops once, then train one PixelSNAIL prior per level on them.

The trained stage-1 encoder turns ``crops_per_image`` random crops (random scale, position and flip)
of every image into code maps, cached in ``RUN/codes/{train,val}.safetensors`` (one int16/int32
tensor ``level<i>`` [N, h_i, w_i] per level, top first). The cache records what it was made from
(the VQ-VAE checkpoint's SHA-256, the image folder, the crops) and is made again when any of it
changes. The prior of level i learns p(codes_i | codes_0..i-1) by cross-entropy; its validation
NLL in bits per code on training and validation codes shows overfitting (Table 1 of the paper).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from vqcodec.models.config import ModelConfig, level_names
from vqcodec.models.model import build_prior
from vqcodec.models.pixelsnail import PixelSNAILPrior
from vqcodec.models.vqvae import VQVAE
from vqcodec.train import dist
from vqcodec.train.checkpoint import (
    checkpoint_path,
    file_sha256,
    read_model_state,
    read_state,
)
from vqcodec.train.data import ImageFolder, StreamSampler, derive_seed
from vqcodec.train.run import (
    MetricsLog,
    autocast,
    default_device,
    grad_scaler,
    prior_stage,
    read_config,
    resolve_precision,
    restore,
    save,
    say,
)
from vqcodec.zoo.modelfile import atomic_path

CODES_FORMAT = "vqcodec-codes"
CODES_VERSION = "1"
DEFAULT_CROPS_PER_IMAGE = 8


def resolve_level(level: int | str, n_levels: int) -> int:
    """A level index (0 = top) from an index or a name ("top", "middle", "bottom", "level2")."""
    names = level_names(n_levels)
    if isinstance(level, str) and level in names:
        return names.index(level)
    if (isinstance(level, int) or level.isdigit()) and 0 <= int(level) < n_levels:
        return int(level)
    raise ValueError(
        f"unknown level {level!r}: this model has levels {', '.join(names)} (or 0..{n_levels - 1})"
    )


def _folder_digest(paths: list[Path]) -> str:
    """Identifies a folder's image list by names and sizes (cheap: no image is read)."""
    lines = "".join(f"{p}\t{p.stat().st_size}\n" for p in paths)
    return hashlib.sha256(lines.encode()).hexdigest()


def _cached_source(path: Path) -> dict[str, Any] | None:
    """What the codes at ``path`` were extracted from, or None if there are none."""
    if not path.exists():
        return None
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != CODES_FORMAT or metadata.get("version") != CODES_VERSION:
        return None
    return json.loads(metadata["source"])


def load_codes(path: Path) -> list[torch.Tensor]:
    """The cached code maps of every level (top first), as stored (int16 or int32) on the CPU."""
    tensors = safetensors.torch.load_file(path)
    return [tensors[f"level{i}"] for i in range(len(tensors))]


def _extract(
    vqvae: VQVAE,
    folder: Path,
    out: Path,
    source: dict[str, Any],
    batch_size: int,
    workers: int,
    env: dist.Dist,
) -> None:
    """Encode the crops of ``folder`` into ``out``; every rank encodes its share of the images."""
    config = vqvae.config
    per_image, crop = source["crops_per_image"], source["crop"]
    dataset = ImageFolder(folder, crop)
    rows = [
        i * per_image + j
        for i in dist.shard(len(dataset), env.rank, env.world_size)
        for j in range(per_image)
    ]
    keys = [(r // per_image, derive_seed(source["seed"], "codes", source["split"], r)) for r in rows]
    dtypes = [torch.int16 if lvl.codebook_size <= 2**15 else torch.int32 for lvl in config.levels]
    shapes = [(crop // config.stride(i), crop // config.stride(i)) for i in range(config.n_levels)]
    part = {f"level{i}": torch.empty(len(rows), *shapes[i], dtype=dtypes[i]) for i in range(config.n_levels)}
    part["rows"] = torch.tensor(rows, dtype=torch.int64)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=keys, num_workers=workers)
    done = 0
    for batch in tqdm(loader, desc=f"codes {source['split']}", disable=not env.is_main, dynamic_ncols=True):
        for i, codes in enumerate(vqvae.encode(batch.to(env.device))):
            part[f"level{i}"][done : done + len(batch)] = codes.to(dtypes[i]).cpu()
        done += len(batch)
    out.parent.mkdir(parents=True, exist_ok=True)
    part_path = out.with_name(f".{out.stem}.part{env.rank}.safetensors")
    safetensors.torch.save_file(part, part_path)
    dist.barrier()
    if env.is_main:  # gather the parts in row order, so the result does not depend on the number of ranks
        n = len(dataset) * per_image
        merged = {f"level{i}": torch.empty(n, *shapes[i], dtype=dtypes[i]) for i in range(config.n_levels)}
        for rank in range(env.world_size):
            path = out.with_name(f".{out.stem}.part{rank}.safetensors")
            tensors = safetensors.torch.load_file(path)
            for key, value in merged.items():
                value[tensors["rows"]] = tensors[key]
            path.unlink()
        metadata = {"format": CODES_FORMAT, "version": CODES_VERSION, "source": json.dumps(source)}
        with atomic_path(out) as tmp:
            safetensors.torch.save_file(merged, tmp, metadata=metadata)
    dist.barrier()


def extract_codes(
    run: str | Path,
    data: str | Path | None = None,
    crops_per_image: int | None = None,
    crop: int | None = None,
    device: str | None = None,
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
    config = read_config(run)
    ckpt = checkpoint_path(run, "vqvae")
    if not ckpt.exists():
        raise FileNotFoundError(
            f"no stage-1 checkpoint at {ckpt}: train the VQ-VAE first (vqcodec train vqvae)"
        )
    stage1 = read_state(ckpt)
    paths = {"train": run / "codes" / "train.safetensors", "val": run / "codes" / "val.safetensors"}
    cached = _cached_source(paths["train"]) or {}
    crop = crop or cached.get("crop") or stage1["meta"]["settings"]["crop"]
    crops_per_image = crops_per_image or cached.get("crops_per_image") or DEFAULT_CROPS_PER_IMAGE
    if crop % config.vqvae.multiple:
        raise ValueError(f"crop {crop} must be a multiple of {config.vqvae.multiple} for this model")
    folders = {
        "train": data or cached.get("data") or stage1["meta"]["data"],
        "val": val_data or (_cached_source(paths["val"]) or {}).get("data") or stage1["meta"]["val_data"],
    }

    if folders["train"] is None:
        raise ValueError(f"no training images known for {run}: give them (--data)")
    env = dist.setup(device or default_device())
    vqvae: VQVAE | None = None
    vqvae_sha = file_sha256(ckpt)
    found = {}
    for split, folder in folders.items():
        if folder is None:
            continue
        folder = Path(folder).resolve()
        source = {
            "split": split,
            "data": str(folder),
            "images": _folder_digest(ImageFolder(folder, crop).paths),
            "crops_per_image": crops_per_image,
            "crop": crop,
            "seed": seed,
            "vqvae_sha256": vqvae_sha,
            "vqvae_step": stage1["step"],
        }
        if _cached_source(paths[split]) == source:
            say(f"Reusing the {split} codes in {paths[split]}")
        else:
            say(f"Extracting {split} codes: {crops_per_image} crops of {crop} px per image of {folder}")
            if vqvae is None:
                vqvae = VQVAE(config.vqvae)
                vqvae.load_state_dict(read_model_state(ckpt))
                vqvae.to(env.device).eval()
            if workers is None:
                workers = 4 if env.device.type == "cuda" else 0
            _extract(vqvae, folder, paths[split], source, batch_size, workers, env)
        found[split] = paths[split]
    return found


@torch.no_grad()
def nll_bits(
    prior: PixelSNAILPrior,
    codes: list[torch.Tensor],
    rows: torch.Tensor,
    batch_size: int,
    env: dist.Dist,
    precision: str,
) -> float:
    """Mean NLL in bits per code of the last level in ``codes`` given the others, over ``rows``."""
    prior.eval()
    total = torch.zeros(2, dtype=torch.float64, device=env.device)  # nats, number of codes
    for chunk in rows[env.rank :: env.world_size].split(batch_size):
        *cond, target = (c[chunk].to(env.device).long() for c in codes)
        with autocast(env.device, precision):
            logits = prior(target, cond_codes=cond)
        total[0] += F.cross_entropy(logits.float(), target, reduction="sum").double()
        total[1] += target.numel()
    prior.train()
    nats, count = dist.all_reduce_sum(total).tolist()
    return nats / count / math.log(2)


def _spread(n: int, k: int) -> torch.Tensor:
    """At most ``k`` row indices spread evenly over ``range(n)``."""
    return torch.arange(0, n, max(1, n // k))[:k]


def train_prior(
    run: str | Path,
    level: int | str,
    steps: int,
    batch_size: int = 32,
    device: str | None = None,
    lr: float = 3e-4,
    data: str | Path | None = None,
    val_data: str | Path | None = None,
    crops_per_image: int | None = None,
    crop: int | None = None,
    val_every: int = 1000,
    val_size: int = 512,
    ckpt_every: int = 1000,
    log_every: int = 10,
    seed: int = 0,
    workers: int | None = None,
    precision: str | None = None,
    resume: bool | None = None,
) -> dict[str, Any]:
    """Train the prior of ``level`` (index or name) of the run in ``run`` for ``steps`` steps in total.

    Extracts (or reuses) the codes first, see ``extract_codes``. ``batch_size`` is the global batch
    of code maps; ``val_size`` caps the code maps of each validation NLL (train and val). The
    other arguments are as for ``stage1.train_vqvae``. Returns the last logged metrics.
    """
    run = Path(run)
    config: ModelConfig = read_config(run)
    level = resolve_level(level, config.vqvae.n_levels)
    stage = prior_stage(config.vqvae.n_levels, level)

    env = dist.setup(device or default_device())
    device = env.device
    precision = resolve_precision(precision, device)
    code_files = extract_codes(run, data, crops_per_image, crop, device, val_data, seed=seed, workers=workers)
    splits = {split: load_codes(path)[: level + 1] for split, path in code_files.items()}
    codes_source = _cached_source(code_files["train"])

    torch.manual_seed(derive_seed(seed, stage, "init"))
    prior = build_prior(config, level).to(device)
    optimizer = torch.optim.Adam(prior.parameters(), lr=lr)
    scaler = grad_scaler(device, precision)
    settings = {
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "precision": precision,
        "codes": hashlib.sha256(json.dumps(codes_source, sort_keys=True).encode()).hexdigest()[:16],
    }
    ckpt = checkpoint_path(run, stage)
    start = restore(ckpt, prior, optimizer, scaler, settings, resume)
    meta = {"settings": settings, "level": level, "codes_source": codes_source}
    log = MetricsLog(run, stage)
    log.rewind(start)
    if start >= steps:
        say(f"{ckpt} is already at step {start} >= {steps}: nothing to do")
        return {"step": start}

    net = DistributedDataParallel(prior) if env.world_size > 1 else prior
    train_codes = splits["train"]
    sampler = StreamSampler(len(train_codes[0]), batch_size, seed, start, steps, env.rank, env.world_size)
    local_batch = batch_size // env.world_size
    val_rows = {split: _spread(len(codes[0]), val_size) for split, codes in splits.items()}
    loss_sum = torch.zeros((), device=device)
    count, tick, record = 0, time.perf_counter(), {}
    bar = tqdm(total=steps, initial=start, desc=stage, disable=not env.is_main, dynamic_ncols=True)
    prior.train()
    for step in range(start, steps):
        torch.manual_seed(derive_seed(seed, stage, "step", step, env.rank))
        rows = torch.tensor([index for index, _ in sampler.batch(step)])
        *cond, target = (c[rows].to(device, non_blocking=True).long() for c in train_codes)
        with autocast(device, precision):
            logits = net(target, cond_codes=cond)
        loss = F.cross_entropy(logits.float(), target)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss_sum += loss.detach()
        count += 1
        bar.update()
        done = step + 1

        if done % log_every == 0 or done == steps:
            mean = dist.all_reduce_sum(loss_sum.clone()).item() / (count * env.world_size)
            record = {
                "loss": mean,
                "bits": mean / math.log(2),
                "lr": optimizer.param_groups[0]["lr"],
                "sec_per_step": (time.perf_counter() - tick) / count,
            }
            log.write(done, **record)
            bar.set_postfix_str(f"{record['bits']:.3f} bits/code")
            loss_sum.zero_()
            count, tick = 0, time.perf_counter()

        pause = time.perf_counter()  # validation and checkpoints do not count as step time
        if done % val_every == 0 or done == steps:
            bits = {
                f"{split}_bits": nll_bits(prior, splits[split], val_rows[split], local_batch, env, precision)
                for split in splits
            }
            log.write(done, **bits)
            say(f"step {done}: NLL " + ", ".join(f"{k} {v:.4f}" for k, v in bits.items()) + " bits/code")
            record.update(bits)
        if done % ckpt_every == 0 or done == steps:
            save(ckpt, prior, optimizer, scaler, done, meta)
        tick += time.perf_counter() - pause
    bar.close()
    say(f"Prior {level_names(config.vqvae.n_levels)[level]} done: {ckpt} at step {steps}")
    return {"step": steps, **record}
