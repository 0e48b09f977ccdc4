"""Ancestral sampling of code maps from the priors, top level first, in wavefront order.

Each wavefront step runs one full forward pass of the level's prior and draws the codes of that
step; this is simple and exact but slow (fast incremental decoding is a separate concern).
"""

from __future__ import annotations

import torch

from vqcodec.coding import order
from vqcodec.models.pixelsnail import PixelSNAILPrior


@torch.no_grad()
def sample_codes(
    priors: list[PixelSNAILPrior],
    shapes: list[tuple[int, int]],
    n: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """Draw ``n`` code maps per level (top first); level l is conditioned on the levels above it.

    ``shapes`` gives each level's (H, W). The priors run in eval mode (no dropout) while sampling
    and get their previous mode back afterwards. Returns int64 tensors [n, H, W], top first.
    """
    if len(priors) != len(shapes):
        raise ValueError(f"{len(priors)} priors for {len(shapes)} shapes")
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    was_training = [prior.training for prior in priors]
    for prior in priors:
        prior.eval()
    try:
        levels: list[torch.Tensor] = []
        for prior, (height, width) in zip(priors, shapes, strict=True):
            device = next(prior.parameters()).device
            codes = torch.zeros(n, height, width, dtype=torch.long, device=device)
            cond = prior.condition(levels, size=(height, width))
            for t in range(order.n_steps(height, width)):
                ys, xs = order.wavefront(t, height, width)
                ys, xs = torch.from_numpy(ys).to(device), torch.from_numpy(xs).to(device)
                logits = prior(codes, cond_features=cond)[:, :, ys, xs]  # [n, K, m]
                probs = torch.softmax(logits.permute(0, 2, 1) / temperature, dim=-1)
                draws = torch.multinomial(probs.reshape(-1, prior.codebook_size), 1, generator=generator)
                codes[:, ys, xs] = draws.view(n, len(ys))
            levels.append(codes)
        return levels
    finally:
        for prior, training in zip(priors, was_training, strict=True):
            prior.train(training)
