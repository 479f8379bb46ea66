"""Distance-only score biases: softmax(q·kᵀ/√d + B) with B[h, i, j] = table[h, i - j].

Each encoding returns its per-head table over distances k = i - j = 0 .. n-1 (causal: j <= i),
O(h·n) memory; `extrapos.attention` applies it without building an (h, n, n) tensor.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from extrapos.encodings.base import PositionalEncoding
from extrapos.encodings.registry import register
from extrapos.errors import UserError


def alibi_slopes(num_heads: int) -> Tensor:
    """ALiBi head slopes (Press et al. 2022, "Train Short, Test Long", arXiv:2108.12409).

    For h a power of two: the geometric sequence m_k = 2^(-8k/h), k = 1 .. h.
    Otherwise, with c the largest power of two below h: the c slopes for c heads followed by
    every other slope of the 2c-head sequence, the first h - c of them (the paper's reference code).
    Returns (h,) float32.
    """
    if num_heads < 1:
        raise UserError(f"alibi: num_heads must be >= 1, got {num_heads}")

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (k + 1) for k in range(n)]

    closest = 2 ** math.floor(math.log2(num_heads))
    slopes = power_of_two(closest)
    if closest != num_heads:
        slopes += power_of_two(2 * closest)[0::2][: num_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


def t5_buckets(distances: Tensor, num_buckets: int = 32, max_distance: int = 128) -> Tensor:
    """Causal T5 relative-position buckets (Raffel et al. 2020, "Exploring the Limits of Transfer
    Learning with a Unified Text-to-Text Transformer", section 2.1).

    Distances k = i - j >= 0 below num_buckets/2 get a bucket each; larger ones share
    logarithmically wider buckets up to `max_distance`; everything beyond falls in the last bucket:

        bucket(k) = k                                                        if k < e,  e = B/2
                  = min(B - 1, e + ⌊log(k/e) / log(max_distance/e) · (B - e)⌋)   otherwise

    distances (...) int64 -> buckets (...) int64 in [0, num_buckets).
    """
    exact = num_buckets // 2
    k = distances.clamp(min=0)
    log_ratio = torch.log(k.float().clamp(min=1) / exact) / math.log(max_distance / exact)
    large = (exact + (log_ratio * (num_buckets - exact)).long()).clamp(max=num_buckets - 1)
    return torch.where(k < exact, k, large)


@register("alibi")
class ALiBi(PositionalEncoding):
    """Attention with Linear Biases (Press et al. 2022): B[h, i, j] = -m_h · (i - j).

    Args:
        num_heads: attention heads h (set by the model).
    """

    def __init__(self, num_heads: int) -> None:
        super().__init__()
        self.register_buffer("slopes", alibi_slopes(num_heads), persistent=False)

    def distance_bias(self, num_distances: int) -> Tensor:
        distances = torch.arange(num_distances, device=self.slopes.device, dtype=torch.float32)
        return -self.slopes[:, None] * distances[None, :]


@register("t5")
class T5Bias(PositionalEncoding):
    """T5 relative-position bias: a learned scalar per (bucket, head), B[h,i,j] = w[bucket(i-j), h].

    Args:
        num_heads: attention heads h (set by the model).
        num_buckets: learned buckets (32 in T5).
        max_distance: distance where the last bucket starts; farther distances share it (128 in T5).
    """

    def __init__(self, num_heads: int, num_buckets: int = 32, max_distance: int = 128) -> None:
        super().__init__()
        if num_buckets < 2:
            raise UserError(f"t5: num_buckets must be >= 2, got {num_buckets}")
        if max_distance <= num_buckets // 2:
            raise UserError(
                f"t5: max_distance must exceed num_buckets/2 = {num_buckets // 2}, got {max_distance}"
            )
        self.num_buckets = int(num_buckets)
        self.max_distance = int(max_distance)
        self.weight = nn.Parameter(torch.zeros(num_buckets, num_heads))

    def distance_bias(self, num_distances: int) -> Tensor:
        distances = torch.arange(num_distances, device=self.weight.device)
        buckets = t5_buckets(distances, self.num_buckets, self.max_distance)
        return self.weight[buckets].T.float()

    def extra_repr(self) -> str:
        return f"num_buckets={self.num_buckets}, max_distance={self.max_distance}"
