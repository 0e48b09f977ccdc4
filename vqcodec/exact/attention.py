"""Causal attention in integers (``exact.md`` §6.3): normative weights, exact products.

Each query attends to the causal window of ``order.attention_offsets`` around it; the logits are
rounded products, the weights an integer softmax through the exp table, and the averages exact
float64 GEMMs on integers (the bounds are in ``attention_rows``), one per row of the window.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vqcodec.exact.arithmetic import FA, P_BITS, TABLE_SIZE, clamp, exp_table, floor_div, lookup, round_shift
from vqcodec.exact.quantise import QuantAttention

_NEG = -(2.0**62)
"""Stands in for the logit of an attention offset outside the map before it is excluded."""


def attend(
    attn: QuantAttention, key_rows: list[Tensor], value_rows: list[Tensor], x: Tensor, valid: Tensor
) -> Tensor:
    """x + proj(attention) of the positions x [n, C] (exact.md §6.3), whose keys and values are written.

    ``key_rows`` and ``value_rows`` hold, per row of the window (``order.attention_offsets`` by dy),
    [n, w, C] views of the caches at that row's w offsets, in the order of the offsets; ``valid``
    [n, n_off] says whether each offset lies inside the map (the others may hold any integers: their
    weights are zero).
    """
    out = attention_rows(attn.query(x), key_rows, value_rows, valid, attn.n_heads)
    return clamp(x.add_(attn.proj(out)))


def attention_weights(raw: Tensor, valid: Tensor) -> Tensor:
    """The weights ``p = floor(exp[max - logit] 2^P_BITS / sum)`` [m, heads, n_off] from the products
    ``q . k`` [m, heads, n_off], with ``logit = rshr(q . k, FA)``; offsets outside the map (``valid``
    [m, n_off] false) are excluded."""
    ok = valid[:, None, :]
    logits = round_shift(raw, FA).masked_fill_(~ok, _NEG)
    z = (logits.amax(dim=2, keepdim=True) - logits).clamp_(max=TABLE_SIZE - 1)
    e = lookup(exp_table(raw.device), z).masked_fill_(~ok, 0)
    return floor_div(e * 2.0**P_BITS, e.sum(dim=2, keepdim=True))


def attention_rows(
    query: Tensor, key_rows: list[Tensor], value_rows: list[Tensor], valid: Tensor, heads: int
) -> Tensor:
    """Attention averages [m, C] from queries [m, C] and the keys and values of the window's rows (each
    [m, w, C]; together [m, n_off, C]), all float64 at FA.

    ``logit = rshr(q . k, FA)`` per head; offsets outside the map (``valid`` false) are excluded;
    ``p = floor(exp[max - logit] 2^P_BITS / sum)``; ``out = rshr(sum p v, P_BITS)``. Both products
    are exact: ``|q . k| <= d 2^40 <= 2^50`` and ``|sum p v| <= 2^P_BITS 2^20 = 2^36`` (so is every
    partial sum over some rows), and so is every other step in float64 (all values are integers, or
    halves before a floor, below 2^51). The heads are handled by block-diagonal operands, and each row
    of the window is a product of its own, so the keys and values are used as they lie in the caches:
    nothing is gathered.
    """
    m, c = query.shape
    d = c // heads
    blocks = query.new_zeros(m, heads, heads, d)  # [m, head, head', d]: head's query where head == head'
    blocks.diagonal(dim1=1, dim2=2).copy_(query.view(m, heads, d).transpose(1, 2))
    blocks = blocks.view(m, heads, c)
    raw = torch.cat([torch.bmm(blocks, keys.transpose(1, 2)) for keys in key_rows], dim=2)
    weights = attention_weights(raw, valid)  # [m, heads, n_off]
    mixed, start = None, 0
    for values in value_rows:
        part = weights[:, :, start : start + values.shape[1]]
        mixed = torch.bmm(part, values) if mixed is None else mixed.baddbmm_(part, values)
        start += values.shape[1]
    assert mixed is not None, "a window has rows"
    # [m, head, head', d] to [m, heads, d]: each head's own channels
    out = mixed.view(m, heads, heads, d).diagonal(dim1=1, dim2=2).transpose(1, 2)
    return round_shift(out, P_BITS).reshape(m, c)
