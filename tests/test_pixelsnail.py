"""PixelSNAIL priors: strict wavefront causality, any map size, training and sampling."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vqcodec.coding import order
from vqcodec.models.config import PriorConfig, three_level_config, tiny_config
from vqcodec.models.pixelsnail import CausalAttention, PixelSNAILPrior
from vqcodec.models.sampling import sample_codes


def upper_shape(h: int, w: int, factor: int) -> tuple[int, int]:
    return -(-h // factor), -(-w // factor)


def random_cond(prior: PixelSNAILPrior, h: int, w: int, seed: int = 0) -> list[torch.Tensor]:
    """Random codes for every level above ``prior``'s level (top first), for an h x w map."""
    g = torch.Generator().manual_seed(seed)
    n = len(prior.cond_codebook_sizes)
    return [
        torch.randint(k, (1, *upper_shape(h, w, 2 ** (n - i))), generator=g)
        for i, k in enumerate(prior.cond_codebook_sizes)
    ]


def assert_causal(prior: PixelSNAILPrior, h: int, w: int, cond: list[torch.Tensor] | None) -> None:
    """Changing the code at p must leave all logits at steps <= step(p) unchanged, and change some later.

    ``cond`` holds the upper levels' codes with batch size 1 (or None for the top prior). Call with
    the prior in eval mode and float64.
    """
    g = torch.Generator().manual_seed(1)
    base = torch.randint(prior.codebook_size, (1, h, w), generator=g)
    batch = base.repeat(h * w + 1, 1, 1)  # entry 0 is the base, entry 1 + y * w + x has (y, x) changed
    for y in range(h):
        for x in range(w):
            batch[1 + y * w + x, y, x] = (base[0, y, x] + 1) % prior.codebook_size
    cond = [c.expand(len(batch), -1, -1) for c in cond] if cond else None
    with torch.no_grad():
        logits = prior(batch, cond)
    change = (logits[1:] - logits[:1]).abs().amax(dim=1)  # [h * w, h, w]
    steps = torch.from_numpy(order.step_map(h, w))
    last = int(steps.max())
    for y in range(h):
        for x in range(w):
            diff, t = change[y * w + x], order.step_of(y, x)
            leaked = diff[steps <= t].max().item()
            assert leaked < 1e-12, f"code at {(y, x)} (step {t}) changed logits at a step <= {t} by {leaked}"
            if t < last:
                assert diff[steps > t].max().item() > 1e-9, f"code at {(y, x)} changed no later logits"


def small(config: PriorConfig) -> PriorConfig:
    return dataclasses.replace(config, channels=8, cond_channels=8, n_blocks=2, n_cond_blocks=1)


def prior_kinds() -> dict[str, PixelSNAILPrior]:
    """One prior of every kind, small, float64, eval mode."""
    torch.manual_seed(0)
    tiny, three = tiny_config(), three_level_config()
    top_attn = PriorConfig(channels=8, n_blocks=2, attention_every=1, n_heads=2, attention_radius=2)
    priors = {
        "tiny_top": PixelSNAILPrior(tiny.priors[0], 32),
        "tiny_bottom": PixelSNAILPrior(tiny.priors[1], 32, (32,)),
        "top_attn_k5": PixelSNAILPrior(dataclasses.replace(top_attn, kernel_size=5, attention_radius=7), 16),
        "three_top": PixelSNAILPrior(small(three.priors[0]), 16),
        "three_middle": PixelSNAILPrior(small(three.priors[1]), 16, (12,)),
        "three_bottom": PixelSNAILPrior(small(three.priors[2]), 16, (12, 10)),
    }
    for prior in priors.values():
        prior.double().eval()
    return priors


PRIORS = prior_kinds()


@pytest.mark.parametrize("kind", sorted(PRIORS))
@pytest.mark.parametrize(("h", "w"), [(5, 6), (4, 7)])
def test_causal(kind: str, h: int, w: int) -> None:
    prior = PRIORS[kind]
    assert_causal(prior, h, w, random_cond(prior, h, w))


def test_logits_depend_on_upper_levels() -> None:
    prior = PRIORS["three_bottom"]
    cond = random_cond(prior, 4, 4)
    codes = torch.zeros(1, 4, 4, dtype=torch.long)
    base = prior(codes, cond)
    for i in range(len(cond)):
        changed = [c.clone() for c in cond]
        changed[i][0, -1, -1] = (changed[i][0, -1, -1] + 1) % prior.cond_codebook_sizes[i]
        assert (prior(codes, changed) - base).abs().amax() > 1e-9


def break_input_mask(prior: PixelSNAILPrior) -> None:
    prior.input_conv.mask[..., 1, 1] = 1.0  # the first layer reads the code it predicts


def break_block_mask(prior: PixelSNAILPrior) -> None:
    prior.blocks[0].conv1.mask[..., 1, 2] = 1.0  # a later layer reads offset (0, +1)


def break_attention(prior: PixelSNAILPrior) -> None:
    prior.attentions[0].offsets.append((0, 1))  # attention reads offset (0, +1)


@pytest.mark.parametrize("breaker", [break_input_mask, break_block_mask, break_attention])
def test_assert_causal_catches_broken_mask(breaker) -> None:
    prior = PixelSNAILPrior(PriorConfig(channels=8, n_blocks=2, n_heads=2, attention_radius=2), 16).double()
    prior.eval()
    assert_causal(prior, 4, 5, None)
    breaker(prior)
    with pytest.raises(AssertionError):
        assert_causal(prior, 4, 5, None)


def test_local_attention_matches_dense() -> None:
    """The shifted-gather attention equals dense attention restricted to the causal window."""
    torch.manual_seed(0)
    attn = CausalAttention(8, n_heads=2, radius=2, dropout=0.0).double().eval()
    B, C, H, W = 2, 8, 5, 7
    x = torch.randn(B, C, H, W, dtype=torch.float64)
    q, k, v = (conv(x).view(B, 2, 4, H * W) for conv in (attn.query, attn.key, attn.value))
    ys, xs = torch.arange(H).repeat_interleave(W), torch.arange(W).repeat(H)
    dy, dx = ys[None, :] - ys[:, None], xs[None, :] - xs[:, None]  # [query, key]
    allowed = torch.zeros(H * W, H * W, dtype=torch.bool)
    for oy, ox in attn.offsets:
        allowed |= (dy == oy) & (dx == ox)
    logits = torch.einsum("bhdq,bhdk->bhqk", q, k) / 2.0
    probs = logits.masked_fill(~allowed, float("-inf")).softmax(-1)
    dense = x + attn.proj(torch.einsum("bhqk,bhdk->bhdq", probs, v).reshape(B, C, H, W))
    torch.testing.assert_close(attn(x), dense)


def test_raster_attention_sees_every_earlier_position() -> None:
    """The raster-context reference: causal in raster order, and it reads beyond the wavefront window."""
    torch.manual_seed(0)
    config = PriorConfig(channels=8, n_blocks=2, n_heads=2, attention_radius=1, attention_context="raster")
    prior = PixelSNAILPrior(config, 16).double().eval()
    h, w = 4, 6
    codes = torch.randint(16, (1, h, w))
    base = prior(codes)
    for i in range(h * w):
        changed = codes.clone().view(-1)
        changed[i] = (changed[i] + 1) % 16
        moved = (prior(changed.view(1, h, w)) - base).abs().amax(dim=1).view(-1)
        assert moved[: i + 1].max() == 0  # raster-causal
    far = codes.clone()
    far[0, 0, 3] = (far[0, 0, 3] + 1) % 16  # changes the features at (0, 4), which only attention
    assert (prior(far) - base)[0, :, 1, 0].abs().max() > 0  # beyond the window (radius 1) brings to (1, 0)


@pytest.mark.parametrize(("h", "w"), [(1, 1), (1, 7), (7, 1), (3, 5)])
def test_odd_sizes(h: int, w: int) -> None:
    for kind in ("tiny_top", "tiny_bottom", "three_bottom"):
        prior = PRIORS[kind]
        logits = prior(
            torch.zeros(2, h, w, dtype=torch.long), [c.expand(2, -1, -1) for c in random_cond(prior, h, w)]
        )
        assert logits.shape == (2, prior.codebook_size, h, w)
        assert torch.isfinite(logits).all()


def test_wrong_upper_shape_is_rejected() -> None:
    prior = PRIORS["tiny_bottom"]
    with pytest.raises(ValueError):
        prior(torch.zeros(1, 8, 8, dtype=torch.long), [torch.zeros(1, 3, 4, dtype=torch.long)])


def test_training_reduces_nll() -> None:
    torch.manual_seed(0)
    tiny = tiny_config()
    top = PixelSNAILPrior(tiny.priors[0], 32)
    bottom = PixelSNAILPrior(tiny.priors[1], 32, (32,))
    top_codes = torch.randint(8, (4, 4, 4))  # few distinct codes: easy to learn
    bottom_codes = top_codes.repeat_interleave(2, 1).repeat_interleave(2, 2)
    for prior, codes, cond in ((top, top_codes, []), (bottom, bottom_codes, [top_codes])):
        before = prior.eval().nll_bits(codes, cond).item()
        opt = torch.optim.Adam(prior.parameters(), lr=3e-3)
        prior.train()
        for _ in range(15):
            opt.zero_grad()
            prior.nll_bits(codes, cond).backward()
            opt.step()
        after = prior.eval().nll_bits(codes, cond).item()
        assert after < before - 0.5, (before, after)


def test_sampling() -> None:
    torch.manual_seed(0)
    tiny = tiny_config()
    priors = [PixelSNAILPrior(tiny.priors[0], 32), PixelSNAILPrior(tiny.priors[1], 32, (32,))]
    shapes = [(3, 4), (6, 8)]
    first = sample_codes(priors, shapes, n=2, generator=torch.Generator().manual_seed(7))
    again = sample_codes(priors, shapes, n=2, temperature=1.0, generator=torch.Generator().manual_seed(7))
    assert all(p.training for p in priors)  # the previous mode comes back
    for codes, same, (h, w) in zip(first, again, shapes, strict=True):
        assert codes.shape == (2, h, w) and codes.dtype == torch.long
        assert codes.min() >= 0 and codes.max() < 32
        assert torch.equal(codes, same)
    other = sample_codes(priors, shapes, n=2, generator=torch.Generator().manual_seed(8))
    assert any(not torch.equal(a, b) for a, b in zip(first, other, strict=True))
