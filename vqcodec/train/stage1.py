"""Stage 1: train the hierarchical VQ-VAE on random crops (loss = MSE + commitment; EMA codebooks).

Runs on one device, or on several under ``torchrun`` (DDP; rank 0 logs and writes). Every step is
reseeded from (seed, step, rank) and the data stream is a function of (seed, step), so a resumed run
ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from vqcodec.models.config import PRESETS, ModelConfig
from vqcodec.models.vqvae import VQVAE
from vqcodec.train import dist
from vqcodec.train.checkpoint import checkpoint_path
from vqcodec.train.data import ImageFolder, StreamSampler, derive_seed
from vqcodec.train.run import (
    MetricsLog,
    autocast,
    default_device,
    grad_scaler,
    read_config,
    resolve_precision,
    restore,
    save,
    say,
    write_config,
)

STAGE = "vqvae"


def psnr(mse: float) -> float:
    """PSNR in dB of a mean squared error on images of range 1 (pixel / 255 - 0.5)."""
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


@torch.no_grad()
def validate(model: VQVAE, data: ImageFolder, batch_size: int, env: dist.Dist, precision: str) -> float:
    """Mean squared error of the reconstructions of the centre crops of ``data`` (sharded over ranks)."""
    model.eval()
    keys = [(i, 0) for i in dist.shard(len(data), env.rank, env.world_size)]
    total = torch.zeros(2, dtype=torch.float64, device=env.device)  # sum of squared errors, values
    for batch in DataLoader(data, batch_size=batch_size, sampler=keys):
        x = batch.to(env.device)
        with autocast(env.device, precision):
            recon = model(x).recon
        total[0] += F.mse_loss(recon.float(), x, reduction="sum").double()
        total[1] += x.numel()
    model.train()
    sse, count = dist.all_reduce_sum(total).tolist()
    return sse / count


def train_vqvae(
    data: str | Path,
    out: str | Path,
    steps: int,
    batch_size: int = 32,
    crop: int = 256,
    device: str | None = None,
    lr: float = 3e-4,
    config: ModelConfig | str | None = None,
    val_data: str | Path | None = None,
    val_every: int = 1000,
    ckpt_every: int = 1000,
    log_every: int = 10,
    seed: int = 0,
    workers: int | None = None,
    precision: str | None = None,
    resume: bool | None = None,
) -> dict[str, Any]:
    """Train the VQ-VAE of ``config`` (a ModelConfig or a preset name) for ``steps`` steps in total.

    ``config`` None means the run's own (``out/config.json``) when it exists, else the default preset.

    ``batch_size`` is the global batch, split over the processes. ``resume`` None continues from
    ``out/vqvae/checkpoint.safetensors`` when it exists, True requires it, False starts over.
    ``precision`` is fp32, bf16 or fp16 (default: bf16 autocast on CUDA, fp32 on CPU). ``workers``
    are data-loading processes (default: 4 on CUDA, 0 on CPU). Returns the last logged metrics.
    """
    run, data = Path(out), Path(data)
    if config is None:
        config = read_config(run) if (run / "config.json").exists() else "default"
    if isinstance(config, str):
        if config not in PRESETS:
            raise ValueError(f"unknown preset {config!r}; choose one of {', '.join(PRESETS)}")
        config = PRESETS[config]()
    if crop % config.vqvae.multiple:
        raise ValueError(f"crop {crop} must be a multiple of {config.vqvae.multiple} for this model")
    dataset = ImageFolder(data, crop)
    val_set = ImageFolder(val_data, crop, train=False) if val_data is not None else None

    env = dist.setup(device or default_device())
    device = env.device
    precision = resolve_precision(precision, device)
    write_config(run, config)
    dist.barrier()

    torch.manual_seed(derive_seed(seed, "init"))
    model = VQVAE(config.vqvae).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scaler = grad_scaler(device, precision)
    settings = {"batch_size": batch_size, "crop": crop, "lr": lr, "seed": seed, "precision": precision}
    ckpt = checkpoint_path(run, STAGE)
    start = restore(ckpt, model, optimizer, scaler, settings, resume)
    meta = {
        "settings": settings,
        "data": str(data.resolve()),
        "val_data": str(Path(val_data).resolve()) if val_data is not None else None,
    }
    log = MetricsLog(run, STAGE)
    log.rewind(start)
    if start >= steps:
        say(f"{ckpt} is already at step {start} >= {steps}: nothing to do")
        return {"step": start}

    net = DistributedDataParallel(model) if env.world_size > 1 else model
    sampler = StreamSampler(len(dataset), batch_size, seed, start, steps, env.rank, env.world_size)
    if workers is None:
        workers = 4 if device.type == "cuda" else 0
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, pin_memory=device.type == "cuda")
    n_levels = config.vqvae.n_levels
    sums = torch.zeros(2 + 2 * n_levels, device=device)  # loss, mse, perplexity and usage per level
    count, tick, record = 0, time.perf_counter(), {}
    bar = tqdm(total=steps, initial=start, desc="vqvae", disable=not env.is_main, dynamic_ncols=True)
    model.train()
    for step, x in enumerate(loader, start):
        torch.manual_seed(derive_seed(seed, "step", step, env.rank))
        x = x.to(device, non_blocking=True)
        with autocast(device, precision):
            output = net(x)
        mse = F.mse_loss(output.recon.float(), x)
        loss = mse + output.commitment_loss.float()
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        codebook_stats = torch.tensor(output.perplexity + output.usage, device=device)
        sums += torch.cat([torch.stack([loss.detach(), mse.detach()]), codebook_stats])
        count += 1
        bar.update()
        done = step + 1

        if done % log_every == 0 or done == steps:
            means = (dist.all_reduce_sum(sums.clone()) / (count * env.world_size)).tolist()
            record = {
                "loss": means[0],
                "mse": means[1],
                "psnr": psnr(means[1]),
                "perplexity": means[2 : 2 + n_levels],
                "usage": means[2 + n_levels :],
                "lr": optimizer.param_groups[0]["lr"],
                "sec_per_step": (time.perf_counter() - tick) / count,
            }
            log.write(done, **record)
            ppl = "/".join(f"{p:.0f}" for p in record["perplexity"])
            bar.set_postfix_str(f"loss {record['loss']:.4f} psnr {record['psnr']:.2f} ppl {ppl}")
            sums.zero_()
            count, tick = 0, time.perf_counter()

        pause = time.perf_counter()  # validation and checkpoints do not count as step time
        if val_set is not None and (done % val_every == 0 or done == steps):
            val_mse = validate(model, val_set, max(1, batch_size // env.world_size), env, precision)
            log.write(done, val_mse=val_mse, val_psnr=psnr(val_mse))
            say(f"step {done}: validation mse {val_mse:.5f}, psnr {psnr(val_mse):.2f} dB")
            record.update(val_mse=val_mse, val_psnr=psnr(val_mse))
        if done % ckpt_every == 0 or done == steps:
            save(ckpt, model, optimizer, scaler, done, meta)
        tick += time.perf_counter() - pause
    bar.close()
    say(f"Stage 1 done: {ckpt} at step {steps}")
    return {"step": steps, **record}
