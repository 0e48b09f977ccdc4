"""Held-out measurements of both stages: the VQ-VAE's reconstruction error and a prior's NLL.

Both leave the module they measure in the mode they found it in: the training loop measures a module
in training, and ``vqcodec bench`` measures the priors of a loaded model that other code shares.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from vqcodec.models.pixelsnail import PixelSNAILPrior
from vqcodec.models.vqvae import VQVAE
from vqcodec.train import dist
from vqcodec.train.data import ImageFolder
from vqcodec.train.run import autocast


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode for the block, then every submodule back in the mode it was in."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


def psnr_of_mse(mse: float) -> float:
    """PSNR in dB of a mean squared error on images of range 1 (pixel / 255 - 0.5)."""
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


@torch.no_grad()
def reconstruction_mse(
    model: VQVAE,
    data: ImageFolder,
    batch_size: int,
    env: dist.Dist,
    precision: str,
    reconstruct: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """Mean squared error of the reconstructions of the centre crops of ``data`` (sharded over ranks),
    by ``model`` or, given, by ``reconstruct`` (``model`` in eval mode)."""
    reconstruct = reconstruct or (lambda x: model(x).recon)
    keys = [(i, 0) for i in dist.shard(len(data), env.rank, env.world_size)]
    total = torch.zeros(2, dtype=torch.float64, device=env.device)  # sum of squared errors, values
    with eval_mode(model):
        for batch in DataLoader(data, batch_size=batch_size, sampler=keys):
            x = batch.to(env.device)
            with autocast(env.device, precision):
                recon = reconstruct(x)
            total[0] += F.mse_loss(recon.float(), x, reduction="sum").double()
            total[1] += x.numel()
    sse, count = dist.all_reduce_sum(total).tolist()
    return sse / count


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
    total = torch.zeros(2, dtype=torch.float64, device=env.device)  # nats, number of codes
    with eval_mode(prior):
        for chunk in rows[env.rank :: env.world_size].split(batch_size):
            *cond, target = (c[chunk].to(env.device).long() for c in codes)
            with autocast(env.device, precision):
                logits = prior(target, cond_codes=cond)
            total[0] += F.cross_entropy(logits.float(), target, reduction="sum").double()
            total[1] += target.numel()
    nats, count = dist.all_reduce_sum(total).tolist()
    return nats / count / math.log(2)


def spread_rows(n: int, k: int) -> torch.Tensor:
    """At most ``k`` row indices spread evenly over ``range(n)``: a validation sample of a code set."""
    return torch.arange(0, n, max(1, n // k))[:k]
