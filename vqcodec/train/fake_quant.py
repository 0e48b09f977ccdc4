"""The integer engine's roundings inside a float forward pass: quantisation-aware training.

``exact`` rounds every convolution's input to 8 bits over its calibrated range (0..255 after one of
the pixel decoder's ReLUs, else -127..127) and its weights to 8 bits with a scale per output channel
(exact.md §3.2, §10). A decoder or prior trained through the same two roundings, their gradients
passed straight through, learns weights that the roundings cost less. The finer ones (activations at
``FP`` or ``FA`` fractional bits, the 15-bit output scales, the biases, a prior's ELU and sigmoid
tables) are far smaller and left out; so is the clamp at ``ACT_MAX``, never reached.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqcodec.exact.arithmetic import FA, Q_MAX, Q_MAX_UNSIGNED
from vqcodec.exact.quantise import input_quantiser, input_range
from vqcodec.exact.vqvae import FP
from vqcodec.models.pixelsnail import MaskedConv2d, PixelSNAILPrior
from vqcodec.models.vqvae import ResBlock

_CONVS = nn.Conv2d | nn.ConvTranspose2d


def rounded_input(x: Tensor, in_range: int, unsigned: bool, frac_bits: int = FP) -> Tensor:
    """``x`` on the 8-bit grid of a layer whose input range is ``in_range`` (units of ``2**-frac_bits``),
    as the integer layers round it (half up, clamped); the gradient is 1 inside the range, 0 outside."""
    top = Q_MAX_UNSIGNED if unsigned else Q_MAX
    multiplier, shift = input_quantiser(in_range, top)
    steps = math.ldexp(multiplier, frac_bits - shift)  # grid steps per unit of x
    clamped = x.clamp(0.0 if unsigned else -top / steps, top / steps)
    return clamped + (torch.floor(clamped * steps + 0.5) / steps - clamped).detach()


def rounded_weight(conv: nn.Conv2d | nn.ConvTranspose2d) -> Tensor:
    """``conv``'s weight (a masked one's taps alone) with 8-bit integers and a scale per output channel
    (``quantise_rows8``): ``rint(w 127 / max |w|) max |w| / 127``; the gradient is the identity."""
    weight = conv.weight * conv.mask if isinstance(conv, MaskedConv2d) else conv.weight
    out_dim = 1 if isinstance(conv, nn.ConvTranspose2d) else 0
    dims = [d for d in range(weight.dim()) if d != out_dim]
    largest = weight.detach().abs().amax(dim=dims, keepdim=True).clamp_min(torch.finfo(weight.dtype).tiny)
    return weight + (torch.round(weight.detach() * (Q_MAX / largest)) * (largest / Q_MAX) - weight).detach()


def _conv(conv: nn.Conv2d | nn.ConvTranspose2d, x: Tensor, in_range: int, unsigned: bool) -> Tensor:
    x, weight = rounded_input(x, in_range, unsigned), rounded_weight(conv)
    if isinstance(conv, nn.ConvTranspose2d):
        return F.conv_transpose2d(x, weight, conv.bias, conv.stride, conv.padding, conv.output_padding)
    return F.conv2d(x, weight, conv.bias, conv.stride, conv.padding)


def quantised_forward(net: nn.Sequential, x: Tensor, ranges: Mapping[str, int], name: str) -> Tensor:
    """``net(x)`` (convolutions, ReLUs and ResBlocks, as ``exact.vqvae.quantise_layers`` takes them)
    with each convolution's input and weight rounded as the integer decoder rounds them; ``ranges``
    holds the inputs' ranges by module name under ``name``."""
    modules = list(net)
    for i, module in enumerate(modules):
        if isinstance(module, nn.ReLU):
            x = F.relu(x)
        elif isinstance(module, _CONVS):
            unsigned = i > 0 and isinstance(modules[i - 1], nn.ReLU)
            x = _conv(module, x, input_range(ranges, f"{name}{i}", FP), unsigned)
        elif isinstance(module, ResBlock):  # ReLU, conv1, ReLU, conv2: both read a ReLU's output
            conv1, conv2 = module.net[1], module.net[3]
            h = _conv(conv1, F.relu(x), input_range(ranges, f"{name}{i}.net.1", FP), True)
            x = x + _conv(conv2, F.relu(h), input_range(ranges, f"{name}{i}.net.3", FP), True)
        else:
            raise ValueError(f"no integer form for {type(module).__name__}")
    return x


def _rounded_prior_conv(conv: nn.Conv2d, in_range: int, x: Tensor) -> Tensor:
    x, weight = rounded_input(x, in_range, False, FA), rounded_weight(conv)
    return F.conv2d(x, weight, conv.bias, conv.stride, conv.padding)


def with_roundings(prior: PixelSNAILPrior, ranges: Mapping[str, int]) -> PixelSNAILPrior:
    """``prior`` with every convolution whose input range ``ranges`` holds (at ``FA``, by module name)
    computed through the integer prior's roundings (its forward replaced on the instance: the weights
    and their names stay as they are)."""
    for name, conv in prior.named_modules():
        if isinstance(conv, nn.Conv2d) and name in ranges:
            conv.forward = partial(_rounded_prior_conv, conv, ranges[name])
    return prior
