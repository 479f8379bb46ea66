"""Bias blocks shared by the attention paths: the (h, c, t) block of a chunk of queries, the
dtype a bias reaches SDPA in, the additive causal mask, and whether positions are consecutive."""

from __future__ import annotations

import torch
from torch import Tensor


def bias_dtype(q: Tensor) -> torch.dtype:
    """The dtype an additive bias is handed to SDPA in: at least float32 on CPU, whose SDPA kernels
    add a float32 mask to bf16/fp16 scores in float32 (a bf16 ALiBi bias of -300 is off by up to 1 in
    the logits; measured 100x the output error of a float32 one); the query's dtype elsewhere,
    where fused kernels need matching dtypes."""
    if q.device.type != "cpu":
        return q.dtype
    return torch.promote_types(q.dtype, torch.float32)  # never mix float64 q with float32


def bias_block(
    table: Tensor, q_positions: Tensor, k_positions: Tensor, q_index: Tensor, dtype: torch.dtype
) -> Tensor:
    """The additive (h, c, t) block for queries at positions q_positions (c,) with sequence
    indices q_index (c,) against keys at k_positions (t,): table bias plus the causal -inf."""
    n = table.shape[-1]
    distances = (q_positions[:, None] - k_positions[None, :]).clamp(0, n - 1)
    block = table[:, distances].to(dtype)
    visible = torch.arange(k_positions.shape[0], device=table.device)[None, :] <= q_index[:, None]
    return block + additive_mask(visible, dtype)


def additive_mask(visible: Tensor, dtype: torch.dtype) -> Tensor:
    """M (visible's shape, (c, t)): 0 where visible, -inf elsewhere. Masks are added to finite
    scores as M (x + 0 = x, x - inf = -inf: `masked_fill`'s numbers) broadcast over the leading
    dims: on CPU, `masked_fill` with a broadcast bool mask is ~6-10x slower than the add
    (255-413 vs 41 µs at (4, 4, 64, 512), 2 threads, measured)."""
    return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill_(
        ~visible, float("-inf")
    )


def is_range(positions: Tensor) -> bool:
    """Whether positions (s,) are consecutive integers p0, p0 + 1, …"""
    s = positions.shape[0]
    if s == 0:
        return True
    start = int(positions[0])
    return torch.equal(positions, torch.arange(start, start + s, device=positions.device))
