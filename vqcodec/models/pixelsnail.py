"""PixelSNAIL priors over the code map of one level (section 3.2 of the paper).

Data flow of ``PixelSNAILPrior`` (C = channels, D = cond_channels, K = codebook_size; every conv
uses zero padding k // 2, masked convs multiply their weight by a fixed 0/1 mask from ``order``):

    codes [B, H, W] int64
      x = embed(codes)                                  nn.Embedding(K, C), as [B, C, H, W]
      x = input_conv(x)                                 masked conv k x k, mask "A", C -> C
    conditioning (lower priors only, computed once by ``condition``), level i above is f_i = 2^(n-i)
    times coarser:
      e_i = cond_embeds[i](cond_codes[i])               nn.Embedding(K_i, D), as [B, D, h_i, w_i]
      e_i = nearest upsample by f_i / 2, crop to [:ceil(H/2), :ceil(W/2)]   (the level just above)
      c = cond_conv(concat(e_0, .., e_{n-1}))           1x1 conv, n*D -> D
      c = c + conv2(elu(conv1(elu(c))))                 per cond_stack[j]: 3x3 convs D -> D
      c = nearest upsample by 2, crop to [:H, :W]       the stack runs at 1/4 of this level's positions
    for i, block in enumerate(blocks):                  gated residual block
      h = block.conv1(elu(x))                           masked conv k x k, mask "B", C -> C
      h = block.conv2(dropout(elu(h)))                  masked conv k x k, mask "B", C -> 2C
      h = h + block.cond_proj(c)                        1x1 conv, D -> 2C (lower priors only)
      x = x + h[:, :C] * sigmoid(h[:, C:])
      if attention_every and (i + 1) % attention_every == 0:
        x = attentions[(i + 1) // attention_every - 1](x)       see ``CausalAttention``
    x = x + conv2(elu(conv1(elu(x))))                   per out_blocks[j]: 1x1 convs C -> C
    logits = out_conv(elu(x))                           1x1 conv, C -> K, [B, K, H, W]

Mask "A" makes the first layer at p read only codes of strictly earlier wavefront steps and mask
"B" (also used by attention) lets later layers read features of the same or earlier steps, so the
logits at p depend only on codes q with ``order.step_of(q) < order.step_of(p)``. Only the layer
kinds above appear (no normalisation, no other activations), so an exact integer version of this
network can mirror it layer by layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vqcodec.coding import order
from vqcodec.models.config import PriorConfig


def check_cond_codes(n_above: int, cond_codes: Sequence[torch.Tensor]) -> None:
    """Raise ValueError unless ``cond_codes`` holds the codes of exactly the ``n_above`` upper levels."""
    if len(cond_codes) != n_above:
        raise ValueError(f"expected codes of {n_above} upper levels, got {len(cond_codes)}")


class MaskedConv2d(nn.Conv2d):
    """A causal k x k convolution: the weight is multiplied by the decode-order mask in forward."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, first_layer: bool):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        # The mask follows from order.py, so it is not saved with the weights.
        self.register_buffer(
            "mask", torch.from_numpy(order.conv_mask(kernel_size, first_layer))[None, None], persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class GatedResBlock(nn.Module):
    """Gated PixelCNN residual block: x + a * sigmoid(b), where [a, b] come from two causal convs."""

    def __init__(self, channels: int, kernel_size: int, dropout: float, cond_channels: int | None):
        super().__init__()
        self.conv1 = MaskedConv2d(channels, channels, kernel_size, first_layer=False)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = MaskedConv2d(channels, 2 * channels, kernel_size, first_layer=False)
        self.cond_proj = nn.Conv2d(cond_channels, 2 * channels, 1) if cond_channels is not None else None

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        h = self.conv1(F.elu(x))
        h = self.conv2(self.dropout(F.elu(h)))
        if self.cond_proj is not None:
            h = h + self.cond_proj(cond)
        a, b = h.chunk(2, dim=1)
        return x + a * torch.sigmoid(b)


class ELUResBlock(nn.Module):
    """Plain (non-causal) residual block x + conv(elu(conv(elu(x)))), for conditioning and output."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.elu(self.conv1(F.elu(x))))


class CausalAttention(nn.Module):
    """Multi-head self-attention over a fixed causal window of relative offsets, added residually.

    Head h uses channels [h*d, (h+1)*d) of the 1x1 query/key/value convs (d = C / n_heads). The
    query at p scores the key at p + o for every offset o of ``order.attention_offsets(radius)``
    (in list order) whose position lies inside the map; offsets falling outside are excluded from
    the softmax. Keys and values are gathered by shifting a zero-padded copy once per offset, so
    memory is O(H W n_offsets), never O((H W)^2).

    With ``raster`` the query at p instead scores every position up to p in raster order (the full
    causal context of the PixelSNAIL paper), which is only a reference: it cannot run in wavefronts.
    """

    def __init__(self, channels: int, n_heads: int, radius: int, dropout: float, raster: bool = False):
        super().__init__()
        if channels % n_heads:
            raise ValueError(f"channels {channels} not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.raster = raster
        self.offsets = order.attention_offsets(radius)
        self.query = nn.Conv2d(channels, channels, 1)
        self.key = nn.Conv2d(channels, channels, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.attn_dropout = nn.Dropout(dropout)
        self.proj = nn.Conv2d(channels, channels, 1)

    def valid(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """[n_offsets, H, W] bool: whether p + offset lies inside the map."""
        ys = torch.arange(height, device=device).view(1, height, 1)
        xs = torch.arange(width, device=device).view(1, 1, width)
        dy = torch.tensor([o[0] for o in self.offsets], device=device).view(-1, 1, 1)
        dx = torch.tensor([o[1] for o in self.offsets], device=device).view(-1, 1, 1)
        return (ys + dy >= 0) & (ys + dy < height) & (xs + dx >= 0) & (xs + dx < width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.raster:
            return self._raster(x)
        B, C, H, W = x.shape
        nh, d = self.n_heads, C // self.n_heads
        top = max(0, -min(dy for dy, _ in self.offsets))
        bottom = max(0, max(dy for dy, _ in self.offsets))
        left = max(0, -min(dx for _, dx in self.offsets))
        right = max(0, max(dx for _, dx in self.offsets))
        q = self.query(x).view(B, nh, d, H, W)
        k = F.pad(self.key(x), (left, right, top, bottom)).view(B, nh, d, H + top + bottom, -1)
        v = F.pad(self.value(x), (left, right, top, bottom)).view(B, nh, d, H + top + bottom, -1)

        def shifted(t: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
            return t[..., top + dy : top + dy + H, left + dx : left + dx + W]

        scale = 1.0 / math.sqrt(d)
        logits = torch.stack([(q * shifted(k, dy, dx)).sum(2) for dy, dx in self.offsets], dim=2) * scale
        logits = logits.masked_fill(~self.valid(H, W, x.device), float("-inf"))  # [B, nh, n_off, H, W]
        probs = self.attn_dropout(logits.softmax(dim=2))
        out = torch.zeros_like(q)
        for i, (dy, dx) in enumerate(self.offsets):
            out = out + probs[:, :, i : i + 1] * shifted(v, dy, dx)
        return x + self.proj(out.reshape(B, C, H, W))

    def _raster(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> [B, n_heads, H W, d], raster order
            return t.view(B, self.n_heads, C // self.n_heads, H * W).transpose(2, 3)

        dropout = self.attn_dropout.p if self.training else 0.0
        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        return x + self.proj(out.transpose(2, 3).reshape(B, C, H, W))


class PixelSNAILPrior(nn.Module):
    """Autoregressive prior over one level's codes, conditioned on the codes of all levels above.

    ``cond_codebook_sizes`` are the codebook sizes of the levels above, top first (empty for the
    top prior). See the module docstring for the exact layer sequence.
    """

    def __init__(self, config: PriorConfig, codebook_size: int, cond_codebook_sizes: tuple[int, ...] = ()):
        super().__init__()
        self.config = config
        self.codebook_size = codebook_size
        self.cond_codebook_sizes = tuple(cond_codebook_sizes)
        C, D, k = config.channels, config.cond_channels, config.kernel_size
        conditioned = len(self.cond_codebook_sizes) > 0

        self.embed = nn.Embedding(codebook_size, C)
        self.input_conv = MaskedConv2d(C, C, k, first_layer=True)
        if conditioned:
            self.cond_embeds = nn.ModuleList(nn.Embedding(n, D) for n in self.cond_codebook_sizes)
            self.cond_conv = nn.Conv2d(len(self.cond_codebook_sizes) * D, D, 1)
            self.cond_stack = nn.ModuleList(ELUResBlock(D, 3) for _ in range(config.n_cond_blocks))
        self.blocks = nn.ModuleList(
            GatedResBlock(C, k, config.dropout, D if conditioned else None) for _ in range(config.n_blocks)
        )
        n_attn = config.n_blocks // config.attention_every if config.attention_every > 0 else 0
        raster = config.attention_context == "raster"
        self.attentions = nn.ModuleList(
            CausalAttention(C, config.n_heads, config.attention_radius, config.dropout, raster)
            for _ in range(n_attn)
        )
        self.out_blocks = nn.ModuleList(ELUResBlock(C, 1) for _ in range(config.n_out_blocks))
        self.out_conv = nn.Conv2d(C, codebook_size, 1)

    def condition(
        self, cond_codes: list[torch.Tensor], size: tuple[int, int] | None = None
    ) -> torch.Tensor | None:
        """Features [B, cond_channels, H, W] from the upper levels' codes (top first), computed once.

        ``size`` is this level's (H, W); by default twice the size of the level just above. Level i
        above must be ceil(H / f) x ceil(W / f) with f = 2^(n_above - i); its nearest-upsampled
        embedding is cropped to H x W, so odd sizes work too.
        """
        n = len(self.cond_codebook_sizes)
        check_cond_codes(n, cond_codes)
        if n == 0:
            return None
        if size is None:
            size = (2 * cond_codes[-1].shape[-2], 2 * cond_codes[-1].shape[-1])
        H, W = size
        h_above, w_above = -(-H // 2), -(-W // 2)
        embedded = []
        for i, (codes, embed) in enumerate(zip(cond_codes, self.cond_embeds, strict=True)):
            f = 2 ** (n - i)
            if tuple(codes.shape[-2:]) != (-(-H // f), -(-W // f)):
                raise ValueError(f"upper level {i} has shape {tuple(codes.shape[-2:])} for a {H}x{W} map")
            e = embed(codes).permute(0, 3, 1, 2)
            e = F.interpolate(e, scale_factor=f // 2, mode="nearest")[..., :h_above, :w_above]
            embedded.append(e)
        # The deep stack runs at the resolution of the level just above: a quarter of the positions.
        c = self.cond_conv(torch.cat(embedded, dim=1))
        for block in self.cond_stack:
            c = block(c)
        return F.interpolate(c, scale_factor=2, mode="nearest")[..., :H, :W]

    def forward(
        self,
        codes: torch.Tensor,
        cond_codes: list[torch.Tensor] | None = None,
        cond_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [B, K, H, W] for codes [B, H, W]; give upper levels as codes or as ``condition`` output."""
        if codes.dim() != 3:
            raise ValueError(f"codes must be [B, H, W], got {tuple(codes.shape)}")
        if cond_features is None:
            cond_features = self.condition(cond_codes or [], size=(codes.shape[1], codes.shape[2]))
        if self.cond_codebook_sizes and cond_features.shape[-2:] != codes.shape[-2:]:
            raise ValueError("conditioning features and codes differ in size")

        x = self.input_conv(self.embed(codes).permute(0, 3, 1, 2))
        every = self.config.attention_every
        for i, block in enumerate(self.blocks):
            x = block(x, cond_features)
            if every > 0 and (i + 1) % every == 0:
                x = self.attentions[(i + 1) // every - 1](x)
        for block in self.out_blocks:
            x = block(x)
        return self.out_conv(F.elu(x))

    def nll_bits(
        self,
        codes: torch.Tensor,
        cond_codes: list[torch.Tensor] | None = None,
        cond_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean negative log-likelihood in bits per code: the ideal coding cost of ``codes``."""
        logits = self(codes, cond_codes, cond_features)
        return F.cross_entropy(logits, codes) / math.log(2)
