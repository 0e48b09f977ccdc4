"""The integer prior (``exact.md`` §6): a PixelSNAIL prior's network in the arithmetic of §5.

``ExactPrior.from_float`` quantises a float prior (§3); its layers are then evaluated by a stepper
(``stepper.py``: one wavefront at a time, for encoder and decoder) or, by the encoder, over whole
maps at once (``encoder.py``). The conditioning stack of the lower levels (§6.1) runs once per map,
here.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from vqcodec.coding import order
from vqcodec.coding.entropy import MAX_ALPHABET
from vqcodec.exact import fused
from vqcodec.exact.arithmetic import FA, clamp, elu
from vqcodec.exact.cuda_stepper import ColumnStepper
from vqcodec.exact.gather import GEMM_CHUNK, gathered_linear, linear_rows, padded, tap_index, to_device
from vqcodec.exact.quantise import (
    Linear,
    QuantAttention,
    QuantGatedBlock,
    QuantResBlock,
    Ranges,
    all_taps,
    input_range,
    masked_taps,
    quantise_attention,
    quantise_embedding,
    quantise_res_block,
)
from vqcodec.exact.stepper import ExactStepper
from vqcodec.models.pixelsnail import PixelSNAILPrior, check_cond_codes

COND_DTYPE = torch.float32
"""Storage of the conditioning tables: clamped activations, exact in float32, at half the memory of
float64 (they cover a quarter of a level's positions, which for a large image is many)."""


COND_MAPS_AT_ONCE = 2
"""Maps whose conditioning stack runs at once: two small maps (a tile's) share the calls that one
alone would make; more outgrow the second-level cache, and each costs as much as alone."""


@dataclasses.dataclass
class ExactPrior:
    """The integer mirror of a :class:`PixelSNAILPrior` (``bitstream_spec/exact.md``)."""

    codebook_size: int
    cond_codebook_sizes: tuple[int, ...]
    channels: int
    kernel_size: int
    attention_every: int
    attention_offsets: list[tuple[int, int]]
    embed: Tensor  # float64 [K, C]: each code's embedding at FA as input_conv's 8-bit input
    input_conv: Linear
    blocks: list[QuantGatedBlock]
    attentions: list[QuantAttention]
    out_blocks: list[QuantResBlock]
    out_conv: Linear
    cond_embeds: list[Tensor]  # float64 [K_i, D], integers at FA, per upper level, top first
    cond_conv: Linear | None
    cond_stack: list[QuantResBlock]
    chunk: int = GEMM_CHUNK
    """Values gathered for one GEMM at most: a memory budget, which changes no result."""

    @classmethod
    def from_float(cls, prior: PixelSNAILPrior, ranges: Ranges | None = None) -> ExactPrior:
        """Quantise ``prior`` (deterministic from its weights and its convolutions' input ``ranges``, at
        FA by module name; dropout is the identity)."""
        config, ranges = prior.config, ranges or {}
        if prior.attentions and config.attention_context != "window":
            raise ValueError(f"{config.attention_context} attention cannot be decoded in wavefronts")
        if prior.codebook_size > MAX_ALPHABET or any(k > MAX_ALPHABET for k in prior.cond_codebook_sizes):
            raise ValueError(f"codebook sizes must be at most {MAX_ALPHABET}")
        conditioned = len(prior.cond_codebook_sizes) > 0

        def linear(name: str, taps: list[tuple[int, int]]) -> Linear:
            return Linear.from_conv(prior.get_submodule(name), taps, input_range(ranges, name, FA))

        def masked(name: str, first_layer: bool) -> Linear:
            return linear(name, masked_taps(prior.get_submodule(name), first_layer))

        point, input_conv = [(0, 0)], masked("input_conv", first_layer=True)
        return cls(
            codebook_size=prior.codebook_size,
            cond_codebook_sizes=prior.cond_codebook_sizes,
            channels=config.channels,
            kernel_size=config.kernel_size,
            attention_every=config.attention_every,
            attention_offsets=order.attention_offsets(config.attention_radius) if prior.attentions else [],
            embed=input_conv.quantise(quantise_embedding(prior.embed)),
            input_conv=input_conv,
            blocks=[
                QuantGatedBlock(
                    masked(f"blocks.{j}.conv1", first_layer=False).with_elu_inputs(),
                    masked(f"blocks.{j}.conv2", first_layer=False).with_elu_inputs(),
                    linear(f"blocks.{j}.cond_proj", point) if block.cond_proj is not None else None,
                )
                for j, block in enumerate(prior.blocks)
            ],
            attentions=[
                quantise_attention(attn, config.attention_radius, ranges, f"attentions.{j}")
                for j, attn in enumerate(prior.attentions)
            ],
            out_blocks=[
                quantise_res_block(block, ranges, f"out_blocks.{j}")
                for j, block in enumerate(prior.out_blocks)
            ],
            out_conv=linear("out_conv", point).with_elu_inputs(),
            cond_embeds=[quantise_embedding(e) for e in prior.cond_embeds] if conditioned else [],
            cond_conv=linear("cond_conv", point) if conditioned else None,
            cond_stack=[
                quantise_res_block(block, ranges, f"cond_stack.{j}")
                for j, block in enumerate(prior.cond_stack)
            ]
            if conditioned
            else [],
        )

    @property
    def device(self) -> torch.device:
        return self.embed.device

    def to(self, device: torch.device | str) -> ExactPrior:
        """A copy with all integer weights on ``device`` (the results are the same on every device)."""
        return to_device(self, torch.device(device))

    def stepper(self, height: int, width: int, cond_codes: list[Tensor]) -> ExactStepper:
        """Tables of one height x width map, step by step; ``cond_codes``: [h_i, w_i] per level above."""
        return self.batch_stepper(height, width, [cond_codes])

    def batch_stepper(
        self,
        height: int,
        width: int,
        cond_codes: list[list[Tensor]],
        sizes: list[tuple[int, int]] | None = None,
    ) -> ExactStepper:
        """Tables of several height x width maps at once, one per image of ``cond_codes`` (the levels
        above of each), or on the CPU of maps of the ``sizes`` within height x width: every step
        evaluates all their positions together. On a GPU, each step is one CUDA graph
        (:class:`ColumnStepper`), for maps of one size."""
        if self.device.type != "cuda":
            return ExactStepper(self, height, width, cond_codes, sizes=sizes)
        if sizes is not None and set(sizes) != {(height, width)}:
            raise ValueError("a GPU stepper takes maps of one size")
        return ColumnStepper(self, height, width, cond_codes)

    def condition(self, cond_codes: list[Tensor], height: int, width: int) -> list[Tensor] | None:
        """Per gated block, ``cond_proj`` of the conditioning features at the level above's resolution.

        Returns ``COND_DTYPE`` [ceil(H/2) * ceil(W/2), 2C] per block (None for the top prior): the
        values are clamped activations, below 2^20 in magnitude, and float32 halves the largest table
        a big image needs. The final nearest x2 upsampling of the float model commutes with the 1x1
        ``cond_proj``, so the value at (y, x) is row (y // 2) * ceil(W/2) + x // 2: a quarter of the
        work and memory.
        """
        return self.condition_maps([cond_codes], height, width)

    def condition_maps(self, maps: list[list[Tensor]], height: int, width: int) -> list[Tensor] | None:
        """``condition`` of several height x width maps, one per image of ``maps`` (the levels above
        of each): per gated block, the images' tables one after the other. With the compiled kernels
        the stack runs on ``COND_MAPS_AT_ONCE`` maps at a time (``fused.elu_conv``)."""
        n = len(self.cond_codebook_sizes)
        for cond_codes in maps:
            check_cond_codes(n, cond_codes)
        if n == 0:
            return None
        if len(maps) > COND_MAPS_AT_ONCE:
            parts = [
                self.condition_maps(maps[i : i + COND_MAPS_AT_ONCE], height, width)
                for i in range(0, len(maps), COND_MAPS_AT_ONCE)
            ]
            return [torch.cat(tables) for tables in zip(*parts, strict=True)]
        h2, w2 = -(-height // 2), -(-width // 2)
        features = torch.stack([self._cond_features(cond_codes, height, width) for cond_codes in maps])
        kernels = fused.available(self.device)
        c = self._linear(self.cond_conv, features.view(len(maps) * h2 * w2, -1))
        for block in self.cond_stack:
            if kernels:
                h = fused.elu_conv(block.conv1, c, h2, w2, len(maps))
                h = fused.elu_conv(block.conv2, h, h2, w2, len(maps))
            else:  # map by map
                h = torch.cat([self._branch(block, m) for m in c.view(len(maps), h2, w2, -1)])
            c = clamp(c + h)
        return [
            linear_rows(block.cond_proj, c, COND_DTYPE, self.chunk, self._linear) for block in self.blocks
        ]

    def _linear(self, layer: Linear, x: Tensor) -> Tensor:
        """``layer(x)`` of float64 activations [n, C], its rounding in the compiled kernels where they
        run: one pass instead of a torch call per operation."""
        if fused.available(self.device):
            return fused.finish(layer, fused.linear(layer, x.contiguous()))
        return layer(x)

    def _cond_features(self, cond_codes: list[Tensor], height: int, width: int) -> Tensor:
        """The embedded codes of the levels above [ceil(H/2), ceil(W/2), n D], each upsampled to this
        level's half resolution; ValueError for maps of the wrong shape or codes outside a codebook."""
        n = len(self.cond_codebook_sizes)
        h2, w2 = -(-height // 2), -(-width // 2)
        ys, xs = torch.arange(h2, device=self.device), torch.arange(w2, device=self.device)
        embedded = []
        for i, (codes, table) in enumerate(zip(cond_codes, self.cond_embeds, strict=True)):
            f = 2 ** (n - i)
            codes = torch.as_tensor(codes, device=self.device)
            if tuple(codes.shape) != (-(-height // f), -(-width // f)):
                raise ValueError(f"upper level {i} has shape {tuple(codes.shape)} for a {height}x{width} map")
            if codes.numel() and (codes.min() < 0 or codes.max() >= self.cond_codebook_sizes[i]):
                raise ValueError(f"upper level {i} has codes outside its codebook")
            g = f // 2  # nearest upsampling by g to this level's half resolution
            embedded.append(table[codes[ys // g][:, xs // g]])
        return torch.cat(embedded, dim=-1)

    def _branch(self, block: QuantResBlock, c: Tensor) -> Tensor:
        """A conditioning block's two convolutions of ELUs on one map's activations c [h, w, C], as
        torch calls: [h * w, C]."""
        h, w, _ = c.shape
        return self._conv_full(block.conv2, elu(self._conv_full(block.conv1, elu(c))).view(h, w, -1))

    def _conv_full(self, layer: Linear, features: Tensor) -> Tensor:
        """A zero-padded 3x3 ``layer`` at every position of float64 features [h, w, C] -> [h * w, out]."""
        h, w, _ = features.shape
        source = padded(features, 1)
        ys = torch.arange(h, device=features.device).repeat_interleave(w)
        xs = torch.arange(w, device=features.device).repeat(h)
        base = (ys + 1) * (w + 2) + xs + 1
        index = base[:, None] + tap_index(all_taps(3), w + 2, features.device)
        return gathered_linear(layer, source, index, self.chunk)
