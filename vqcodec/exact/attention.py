"""Causal attention in integers (``exact.md`` §6.3): normative weights, exact products.

Each query attends to the causal window of ``order.attention_offsets`` around it; the logits are
rounded products, the weights an integer softmax through the exp table, and the averages exact
float64 GEMMs on integers (the bounds are in ``attention_rows``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vqcodec.exact.arithmetic import FA, P_BITS, TABLE_SIZE, clamp, exp_table, floor_div, lookup, round_shift
from vqcodec.exact.gather import GEMM_CHUNK, gather
from vqcodec.exact.quantise import QuantAttention

_NEG = -(2.0**62)
"""Stands in for the logit of an attention offset outside the map before it is excluded."""


def attend(
    attn: QuantAttention,
    keys: Tensor,
    values: Tensor,
    x: Tensor,
    index: Tensor,
    valid: Tensor,
    chunk: int = GEMM_CHUNK,
) -> Tensor:
    """x + proj(attention) of the positions x [n, C] (exact.md §6.3), whose keys and values are written.

    ``index`` [n, n_off] are the cells of the offsets in the flat float64 caches ``keys`` and ``values``
    [cells, C], ``valid`` whether they lie inside the map (the others may hold any integers: their
    weights are zero).
    """
    query = attn.query(x)
    rows = max(1, chunk // (index.shape[1] * x.shape[1]))
    parts = [
        attention_rows(q, gather(keys, i), gather(values, i), ok, attn.n_heads)
        for q, i, ok in zip(query.split(rows), index.split(rows), valid.split(rows), strict=True)
    ]
    out = parts[0] if len(parts) == 1 else torch.cat(parts)
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


def attention_rows(query: Tensor, keys: Tensor, values: Tensor, valid: Tensor, heads: int) -> Tensor:
    """Attention averages [m, C] from queries [m, C], keys and values [m, n_off, C], all float64 at FA.

    ``logit = rshr(q . k, FA)`` per head; offsets outside the map (``valid`` false) are excluded;
    ``p = floor(exp[max - logit] 2^P_BITS / sum)``; ``out = rshr(sum p v, P_BITS)``. Both GEMMs
    are exact: ``|q . k| <= d 2^40 <= 2^50`` and ``|sum p v| <= 2^P_BITS 2^20 = 2^36``, and so is every
    other step in float64 (all values are integers, or halves before a floor, below 2^51). The heads are
    handled by block-diagonal operands, so the gathered keys and values are used as they lie.
    """
    m, n_off, c = keys.shape
    d = c // heads
    blocks = query.new_zeros(m, heads, heads, d)  # [m, head, head', d]: head's query where head == head'
    blocks.diagonal(dim1=1, dim2=2).copy_(query.view(m, heads, d).transpose(1, 2))
    raw = torch.bmm(blocks.view(m, heads, c), keys.transpose(1, 2))  # [m, heads, n_off]
    mixed = torch.bmm(attention_weights(raw, valid), values).view(m, heads, heads, d)  # [m, head, head', d]
    out = mixed.diagonal(dim1=1, dim2=2).transpose(1, 2)  # [m, heads, d]: each head's own channels
    return round_shift(out, P_BITS).reshape(m, c)
