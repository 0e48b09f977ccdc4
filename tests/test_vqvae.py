"""The hierarchical VQ-VAE: shapes, encode/decode consistency, straight-through gradients, EMA codebooks."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from processes import run_workers

from vqcodec.models.config import LevelConfig, VQVAEConfig, three_level_config, tiny_config
from vqcodec.models.vqvae import VQVAE, VectorQuantizerEMA


def tiny_three_level() -> VQVAEConfig:
    return replace(
        three_level_config().vqvae,
        channels=16,
        res_channels=8,
        n_res_blocks=1,
        levels=(LevelConfig(codebook_size=32, code_dim=8),) * 3,
    )


CONFIGS = {"2-level": (tiny_config().vqvae, 24, 40), "3-level": (tiny_three_level(), 64, 96)}


def images(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Smooth synthetic images in the input convention (pixel / 255 - 0.5)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, height // 8, width // 8, generator=g)
    return F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False) - 0.5


def buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: b.clone() for name, b in model.named_buffers()}


@pytest.mark.parametrize("name", CONFIGS)
def test_shapes(name: str) -> None:
    config, height, width = CONFIGS[name]
    model = VQVAE(config)
    out = model(images(2, height, width))
    assert out.recon.shape == (2, 3, height, width)
    assert out.commitment_loss.ndim == 0
    assert len(out.codes) == len(out.perplexity) == len(out.usage) == config.n_levels
    for level, codes in enumerate(out.codes):
        stride = config.stride(level)
        assert codes.dtype == torch.int64
        assert codes.shape == (2, height // stride, width // stride)
    assert all(1.0 <= p <= 32 for p in out.perplexity)
    assert all(0.0 < u <= 1.0 for u in out.usage)


@pytest.mark.parametrize("name", CONFIGS)
def test_decoding_in_bands_joins_without_seams(name: str) -> None:
    """Bands with the decoder's halo give the whole-image decode, up to float rounding."""
    config, _, _ = CONFIGS[name]
    torch.manual_seed(0)
    model = VQVAE(replace(config, n_res_blocks=2)).eval()
    height, width = 4 * 23, 4 * 5  # bottom-level code rows and columns; the top level has fewer
    factors = [2 ** (config.n_levels - 1 - level) for level in range(config.n_levels)]
    codes = [
        torch.randint(0, lvl.codebook_size, (1, height // f, width // f))
        for lvl, f in zip(config.levels, factors, strict=True)
    ]
    with torch.no_grad():
        whole = model.decode_codes(codes)
        for band_rows in (1, 3, 8, 30):
            banded = model.decode_codes(codes, (band_rows, width))
            assert banded.shape == whole.shape
            assert (banded - whole).abs().max() < 1e-5, band_rows


@pytest.mark.parametrize("name", CONFIGS)
def test_encoding_in_bands_gives_the_whole_images_codes(name: str) -> None:
    config, _, width = CONFIGS[name]
    torch.manual_seed(0)
    model = VQVAE(replace(config, n_res_blocks=2)).eval()
    x = images(1, config.bottom_stride * 4 * 30, width, seed=3)  # 120 bottom-level code rows
    whole = model.encode(x)
    for band_rows in (1, 8, 30):
        banded = model.encode(x, (band_rows, width // config.bottom_stride))
        assert all(torch.equal(a, b) for a, b in zip(banded, whole, strict=True)), band_rows


@pytest.mark.parametrize("name", CONFIGS)
def test_encode_halo_covers_every_codes_receptive_field(name: str) -> None:
    """With positive weights and pixels no ReLU is ever off and no sum cancels, so the pixels whose
    gradient (straight through the quantizers) is nonzero are exactly those a code depends on."""
    config, _, width = CONFIGS[name]
    model = VQVAE(replace(config, n_res_blocks=2))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.abs_().add_(0.01)
    stride, n, halo = config.bottom_stride, config.n_levels, model.encode_halo()
    height = 4 * halo + 2 ** (n - 1)  # bottom-level code rows
    x = torch.rand(1, 3, height * stride, width, requires_grad=True)
    reach = 0
    for level, out in enumerate(model.quantize(x, update=False)):
        f = 2 ** (n - 1 - level)  # bottom rows per row
        row = out.quantized.shape[2] // 2
        (grad,) = torch.autograd.grad(out.quantized[:, :, row].sum(), x, retain_graph=True)
        rows = grad.abs().sum(dim=(0, 1, 3)).nonzero()[:, 0]
        above, below = row * f * stride - rows.min(), rows.max() + 1 - (row + 1) * f * stride
        reach = max(reach, above.item(), below.item())
    assert 0 < reach <= halo * stride
    assert reach > (halo - 2 * 2 ** (n - 1)) * stride  # and not much wider than needed


def test_rejects_bad_sizes_and_strides() -> None:
    model = VQVAE(tiny_config().vqvae)
    with pytest.raises(ValueError, match="multiple of 8"):
        model(images(1, 20, 40))
    with pytest.raises(ValueError, match="power of two"):
        VQVAE(replace(tiny_config().vqvae, bottom_stride=6))


@pytest.mark.parametrize("name", CONFIGS)
def test_encode_decode_matches_forward(name: str) -> None:
    config, height, width = CONFIGS[name]
    torch.manual_seed(0)
    model = VQVAE(config)
    x = images(2, height, width)
    model.train()
    model(x)  # seeds the codebooks from the data
    model.eval()
    with torch.no_grad():
        out = model(x)
        codes = model.encode(x)
        recon = model.decode_codes(codes)
    for a, b in zip(codes, out.codes, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(recon, out.recon)


def test_straight_through_gradients_reach_encoder() -> None:
    torch.manual_seed(0)
    model = VQVAE(tiny_three_level())
    x = images(2, 32, 32)
    F.mse_loss(model(x).recon, x).backward()  # no commitment term: only the straight-through path
    for module in (*model.encoders, *model.quant_convs, *model.context_decoders):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert not any("embedding" in name for name, _ in model.named_parameters())


def test_ema_moves_codebook_only_in_training() -> None:
    torch.manual_seed(0)
    model = VQVAE(tiny_config().vqvae)
    x = images(4, 32, 32)
    model.eval()
    before = buffers(model)
    model(x)
    assert all(torch.equal(b, before[name]) for name, b in model.named_buffers())
    model.train()
    model.encode(x)  # encoding never updates, even in training mode
    assert all(torch.equal(b, before[name]) for name, b in model.named_buffers())
    model(x)
    for level in range(2):
        assert not torch.equal(model.quantizers[level].embedding, before[f"quantizers.{level}.embedding"])


def test_ema_update_follows_equations() -> None:
    vq = VectorQuantizerEMA(codebook_size=3, code_dim=2, decay=0.9, commitment_cost=0.25)
    vq.embedding.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]))
    vq.cluster_size.fill_(5.0)  # healthy codewords: nothing is revived
    vq.embed_sum.copy_(vq.embedding * 5.0)
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 1.0]]).T.reshape(1, 2, 1, 3)
    out = vq(z)
    assert out.codes.tolist() == [[[0, 0, 1]]]
    cluster_size = torch.tensor([0.9 * 5 + 0.1 * 2, 0.9 * 5 + 0.1 * 1, 0.9 * 5])
    embed_sum = torch.tensor([[0.1, 0.1], [45 + 0.9, 0.1], [0.0, 45.0]])
    total = cluster_size.sum()
    smoothed = (cluster_size + vq.eps) / (total + 3 * vq.eps) * total
    torch.testing.assert_close(vq.cluster_size, cluster_size)
    torch.testing.assert_close(vq.embed_sum, embed_sum)
    torch.testing.assert_close(vq.embedding, embed_sum / smoothed[:, None])
    expected_commitment = 0.25 * torch.tensor([1.0, 1.0, 2.0]).sum() / 6
    torch.testing.assert_close(out.commitment_loss, expected_commitment)
    torch.testing.assert_close(out.usage, torch.tensor(2 / 3))
    torch.testing.assert_close(out.perplexity, torch.tensor(3 / 2 ** (2 / 3)))


def test_dead_codeword_is_revived() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizerEMA(codebook_size=8, code_dim=4)
    z = torch.randn(2, 4, 4, 4)
    vq.cluster_size.fill_(100.0)
    vq.embed_sum.copy_(vq.embedding * 100.0)
    vq.cluster_size[3] = 0.0  # dead, and too far away to ever win
    vq.embedding[3] = 1e3
    vq.eval()
    vq(z)
    assert vq.embedding[3].eq(1e3).all()
    vq.train()
    vq(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    assert (flat == vq.embedding[3]).all(1).any()  # re-seeded from an encoder output of the batch
    assert vq.cluster_size[3] == vq.dead_threshold
    assert (vq.cluster_size[torch.arange(8) != 3] > vq.dead_threshold).all()


def test_loss_drops_with_adam() -> None:
    torch.manual_seed(0)
    model = VQVAE(tiny_config().vqvae)
    x = images(8, 32, 32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        out = model(x)
        loss = F.mse_loss(out.recon, x) + out.commitment_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    final = sum(losses[-5:]) / 5
    assert final < 0.3 * losses[0]
    assert final < 0.8 * x.var().item()  # clearly better than predicting the mean image


def _distributed_worker(rank: int, init_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(rank)  # different data and different random choices on every rank
        vq = VectorQuantizerEMA(codebook_size=16, code_dim=4).train()
        vq.embedding.copy_(torch.randn(16, 4))
        for _ in range(3):
            vq(torch.randn(2, 4, 4, 4) + rank)
        for buffer in (vq.embedding, vq.cluster_size, vq.embed_sum):
            gathered = [torch.empty_like(buffer) for _ in range(2)]
            dist.all_gather(gathered, buffer)
            assert torch.equal(gathered[0], gathered[1])
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_ranks_keep_the_same_codebook(tmp_path: Path) -> None:
    run_workers(_distributed_worker, (str(tmp_path / "init"),))
