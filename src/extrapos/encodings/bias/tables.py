"""The math of the score biases, as pure functions of plain arguments (exact tests in
`tests/encodings/test_bias_catalogue.py`); the encodings in `extrapos.encodings.bias` only
cache and apply them.

ALiBi slopes, T5 relative-position buckets (causal and bidirectional), the bidirectional ALiBi
bias, the KERPLE log and power kernels, the Sandwich table, and FIRE's log transform and
normalized distance.

Notation: h heads, n distances, s query positions, t key positions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from extrapos.core.errors import UserError

__all__ = [
    "KERPLE_EPS",
    "alibi_bias_bidirectional",
    "alibi_slopes",
    "fire_log",
    "fire_normalized_distance",
    "kerple_log_table",
    "kerple_power_table",
    "sandwich_table",
    "t5_buckets",
]


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


def t5_buckets(
    distances: Tensor, num_buckets: int = 32, max_distance: int = 128, bidirectional: bool = False
) -> Tensor:
    """T5 relative-position buckets (Raffel et al. 2020, "Exploring the Limits of Transfer
    Learning with a Unified Text-to-Text Transformer", section 2.1).

    Causal (default): distances k = i - j >= 0 below num_buckets/2 get a bucket each; larger
    ones share logarithmically wider buckets up to `max_distance`; everything beyond falls in the
    last bucket (negative k, keys after the query, fall in bucket 0):

        bucket(k) = k                                                        if k < e,  e = B/2
                  = min(B - 1, e + ⌊log(k/e) / log(max_distance/e) · (B - e)⌋)   otherwise

    Bidirectional (T5's encoder rule): half the buckets, B' = ⌊B/2⌋, for each sign. Keys at or
    before the query (k >= 0) use buckets [0, B') by the rule above with B' buckets; keys after
    it (k < 0) use B' + that bucket of |k|. Equals `transformers`' `T5Attention.
    _relative_position_bucket(j - i, bidirectional=True)`.

    distances (...) int64 -> buckets (...) int64 in [0, num_buckets).
    """
    if not bidirectional:
        return _one_sided_buckets(distances.clamp(min=0), num_buckets, max_distance)
    half = num_buckets // 2
    after = (distances < 0).long() * half
    return after + _one_sided_buckets(distances.abs(), half, max_distance)


def _one_sided_buckets(k: Tensor, num_buckets: int, max_distance: int) -> Tensor:
    """The causal T5 rule for k >= 0 (see `t5_buckets`)."""
    exact = num_buckets // 2
    log_ratio = torch.log(k.float().clamp(min=1) / exact) / math.log(max_distance / exact)
    large = (exact + (log_ratio * (num_buckets - exact)).long()).clamp(max=num_buckets - 1)
    return torch.where(k < exact, k, large)


def alibi_bias_bidirectional(num_heads: int, distances: Tensor) -> Tensor:
    """Symmetric ALiBi for encoders: B[h, i, j] = -m_h · |i - j|, m_h the paper's slopes
    (`alibi_slopes`). One of the bidirectional variants the ALiBi authors suggest (their
    repository's issue #5); the causal model does not use it (no non-causal hook exists).

    distances (...) = i - j of any sign -> (h, ...) float32.
    """
    slopes = alibi_slopes(num_heads).to(distances.device)
    magnitude = distances.abs().float()
    return -slopes.view(-1, *([1] * distances.ndim)) * magnitude


# ---------------------------------------------------------------------------------------------
# KERPLE (Chi et al. 2022)

#: lower bound of KERPLE's positive parameters (the reference code's eps).
KERPLE_EPS = 1e-2


def kerple_log_table(r1: Tensor, r2: Tensor, num_distances: int) -> Tensor:
    """KERPLE logarithmic kernel: table[h, k] = -r1[h] · log(1 + r2[h] · k), k = 0 .. n-1.

    r1, r2 (h,) positive -> (h, n) in their dtype; differentiable in r1 and r2.
    """
    k = torch.arange(num_distances, device=r1.device, dtype=r1.dtype)
    return -r1[:, None] * torch.log1p(r2[:, None] * k[None, :])


def kerple_power_table(r1: Tensor, r2: Tensor, num_distances: int) -> Tensor:
    """KERPLE power kernel: table[h, k] = -r1[h] · k^r2[h], k = 0 .. n-1 (0 < r2 <= 2).

    r1, r2 (h,) -> (h, n) in their dtype; differentiable in r1 and r2 (also at k = 0).
    """
    k = torch.arange(num_distances, device=r1.device, dtype=r1.dtype)
    return -r1[:, None] * k[None, :] ** r2[:, None]


# ---------------------------------------------------------------------------------------------
# Sandwich (Chi et al. 2023)


def sandwich_table(
    num_heads: int, num_distances: int, dim: int = 128, base: float = 10000.0
) -> Tensor:
    """Sandwich bias (Chi et al. 2023, "Dissecting Transformer Length Extrapolation via the Lens
    of Receptive Field Analysis", ACL 2023, arXiv:2212.10356):

        table[h, k] = (p_i·p_j - d'/2) / (8·h/H)
                    = (Σ_{l=1}^{d'/2} cos(k / base^(2l/d')) - d'/2) / (8·h/H),   h = 1 .. H

    p_i the d'-dim sinusoidal position vectors (sin, cos at frequencies base^(-2l/d')), whose inner
    product depends on k = i - j only (sin·sin + cos·cos = cos of the difference). The index runs
    l = 1 .. d'/2 as in the paper's sum and NVIDIA NeMo's implementation (Vaswani et al.'s table
    runs l = 0 .. d'/2 - 1; the two differ in one term). Subtracting d'/2 = p_i·p_i makes
    table[:, 0] = 0; it is a per-head constant, so the attention weights do not change. The bias
    falls roughly logarithmically in k and then fluctuates around -d'/2 / (8h/H) once k passes
    the longest wavelength. The 8h/H divisor is ALiBi's head ladder (the paper's per-head
    compression, as in NeMo): head 1 the sharpest, head H the flattest. Angles and the sum are
    float64 (distances of 10^6 keep their digits), the result float32.

    -> (num_heads, num_distances) float32.
    """
    k = torch.arange(num_distances, dtype=torch.float64)
    total = torch.zeros(num_distances, dtype=torch.float64)
    for index in range(1, dim // 2 + 1):  # a loop over frequencies keeps memory at O(n)
        total += torch.cos(k * base ** (-2.0 * index / dim))
    total -= dim // 2
    divisors = 8.0 * torch.arange(1, num_heads + 1, dtype=torch.float64) / num_heads
    return (total[None, :] / divisors[:, None]).float()


# ---------------------------------------------------------------------------------------------
# FIRE (Li et al. 2023)


def fire_log(x: Tensor, c: Tensor) -> Tensor:
    """FIRE's log transform ψ(x) = log(|c·x| + 1), elementwise (the reference takes |c·x|)."""
    return torch.log1p((c * x).abs())


def fire_normalized_distance(
    q_positions: Tensor, k_positions: Tensor, c: Tensor, threshold: Tensor, eps: float = 1e-6
) -> Tensor:
    """FIRE's MLP input, ψ(i - j) / ψ(max(L, i)) with ψ = `fire_log` ("progressive
    interpolation": normalized by the query's own position once it passes the threshold L).

    q_positions (s,), k_positions (t,), c and threshold (scalars) -> (s, t) float32, in [0, 1]
    wherever j <= i. Below the threshold (all i < L) it depends on i - j only; beyond, on i too.
    """
    q = q_positions.float()
    distance = q[:, None] - k_positions.float()[None, :]
    normalizer = fire_log(torch.maximum(q, threshold), c) + eps  # (s,)
    return fire_log(distance, c) / normalizer[:, None]
