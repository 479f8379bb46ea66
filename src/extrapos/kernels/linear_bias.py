"""ALiBi as exactly bias-free attention: a linear distance bias folded into q and k.

A bias that is linear in the distance, B[h, i, j] = -m_h · (pos_i - pos_j) (ALiBi, Press et al.
2022, arXiv:2108.12409), differs from +m_h · (pos_j - c) by -m_h · (pos_i - c), a constant in
each query row, and softmax ignores per-row constants. With q and k each extended by columns,

    [q_i, a_h] · [k_j, b_j] · scale = q_i·k_j·scale + m_h · (pos_j - c),   a_h = m_h / scale,
                                                                            b_j = pos_j - c,

so softmax(q·kᵀ·scale + B) = softmax([q, a]·[k, b]ᵀ·scale): SDPA's fused causal kernel with no
mask at all (v gets zero columns so the three head dims agree, which the fused CPU kernel needs;
the output drops them again). The only change is float rounding, bounded by where c sits:

- precision: the kernel accumulates scores in float32; a score of magnitude |m·(pos_j - c)|
  carries an absolute rounding error of ~2^-24 of it. The keys that matter for query i are those
  within ~20/m of it, so c is chosen per block of queries (the block's middle position), which
  keeps every score that matters below m·(block + 20/m) in magnitude: ~1e-5 absolute at block 1024,
  m = 1/2 (tests compare against float64 at 16k and 32k positions).
- bf16: b = pos_j - c is split into 256·hi + lo and a_h into two bf16 parts, four columns whose
  pairwise products are exact in bf16 (|b| < 65536), accumulated in float32 by the kernel. Its
  output is rounded to bf16 (~8e-3 here), which dominates: one centred call serves any length.
- measured against float64 (tests/kernels/test_linear_bias.py; 2 heads m = 1/2, 1/256, q scaled
  ×3): max output error at n = 16,384 / 32,768 — float32 blocked 9.1e-6 / 1.4e-5 (the mask
  path: 2.7e-6 / 1.2e-6; one uncentred call would be 1.4e-4 / 2.8e-4); bf16 7.7e-3, as the
  mask path.
- blocks: query block [a0, a1) sees keys [0, q_offset + a0) fully (one mask-free SDPA call) and
  keys [q_offset + a0, q_offset + a1) causally (one `is_causal` call on a square); the two results
  are merged with their log-sum-exps (flash-decoding's combine). The log-sum-exp comes from
  ATen's CPU flash kernel (`_scaled_dot_product_flash_attention_for_cpu`), which gives it no
  gradient, so the blocked form is used without autograd; with gradients (training) the whole
  sequence is one `is_causal` call centred at its middle, which is as precise as the blocked
  form up to `SINGLE_CALL_MAX` queries.

Costs (measured, benchmarks/RESULTS.md): the extra columns make the head dim 65 (float32) or 68
(bf16), ~1.1× the bias-free kernel, plus one copy of q, k, v into the extended buffers — O(t·d)
per call, which is why decoding (few queries against a long cache) keeps the mask path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: queries per block of the blocked (no-grad) form; its centre keeps scores small (docstring).
LINEAR_BLOCK = 1024
#: with autograd, up to this many queries run as one centred `is_causal` call; past it the
#: model's attention uses the mask path (the blocked form has no gradient).
SINGLE_CALL_MAX = 2048
#: fewer queries than this (decoding against a cache) use the mask path: copying the cache into
#: the extended buffer would cost more than the (h, s, t) bias block.
LINEAR_MIN_QUERIES = 64


def linear_slopes(table: Tensor) -> Tensor | None:
    """m (h,) when table[h, k] == -m_h · k exactly for every k (an ALiBi table), else None.

    An exact comparison, O(h·n): tables that are linear only approximately (a learned KERPLE
    power kernel near r2 = 1) keep their own path, so no result changes beyond rounding."""
    if table.requires_grad or table.ndim != 2 or table.shape[-1] < 2:
        return None
    if not table.dtype.is_floating_point:
        return None
    slopes = -table[:, 1]
    k = torch.arange(table.shape[-1], device=table.device, dtype=table.dtype)
    if not torch.equal(table, -slopes[:, None] * k[None, :]):
        return None
    return slopes


def columns(dtype: torch.dtype) -> int:
    """Extra head-dim columns the fold needs in `dtype` (see module docstring)."""
    return 4 if dtype == torch.bfloat16 else 1


def supports(q: Tensor) -> bool:
    """Whether the fold is implemented for q's device and dtype (CPU; float32/64 and bf16)."""
    return q.device.type == "cpu" and q.dtype in (torch.float32, torch.float64, torch.bfloat16)


def _q_columns(q: Tensor, slopes: Tensor, scale: float) -> Tensor:
    """(b, h, s, cols) columns a_h = m_h / scale (bf16: split into two exact parts, each twice)."""
    b, h, s, _ = q.shape
    a = slopes.to(torch.float64) / scale
    if q.dtype == torch.bfloat16:
        a1 = a.to(torch.bfloat16)
        a2 = (a - a1.double()).to(torch.bfloat16)
        a = torch.stack((a1, a1, a2, a2), dim=-1)  # pairs with (hi, lo, hi, lo) of b
    else:
        a = a.to(q.dtype)[:, None]
    return a[None, :, None, :].expand(b, h, s, a.shape[-1])


def _k_columns(offsets: Tensor, dtype: torch.dtype) -> Tensor:
    """(t, cols) columns b_j = pos_j - c for offsets (t,) int64 = pos_j - c."""
    if dtype == torch.bfloat16:
        if offsets.abs().max() >= 65536:
            raise ValueError("bf16 linear fold: key offsets must stay below 65536")
        hi = torch.div(offsets, 256, rounding_mode="floor")
        lo = offsets - 256 * hi
        hi = (256 * hi).to(dtype)
        lo = lo.to(dtype)
        return torch.stack((hi, lo, hi, lo), dim=-1)
    return offsets.to(dtype)[:, None]


def _extend(x: Tensor, cols: Tensor) -> Tensor:
    """cat((x, cols), -1) with cols broadcast over the leading dims."""
    return torch.cat((x, cols.expand(*x.shape[:-1], cols.shape[-1])), dim=-1)


def _zero_pad(v: Tensor, cols: int) -> Tensor:
    return F.pad(v, (0, cols))


def linear_bias_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    slopes: Tensor,
    q_positions: Tensor,
    k_positions: Tensor,
    q_offset: int = 0,
    block: int = LINEAR_BLOCK,
) -> Tensor:
    """softmax(q·kᵀ/√d - m·(pos_i - pos_j) + M) v with M causal by index (see module docstring).

    q (b, h, s, d); k, v (b, h, t, d), t = q_offset + s; slopes (h,); positions (s,), (t,)
    increasing (any gaps). With autograd on, needs q_offset == 0 and s <= SINGLE_CALL_MAX.
    """
    b, h, s, d = q.shape
    t = k.shape[-2]
    scale = d**-0.5
    cols = columns(q.dtype)
    qa = _q_columns(q, slopes, scale)
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    # bf16 outputs are rounded to bf16, so one centred call (float32 scores, four exact columns)
    # is as precise as blocks there, and merging rounded block outputs would round twice
    if grad or (s == t and (s <= block or q.dtype == torch.bfloat16)):
        if s != t:
            raise ValueError("linear fold with gradients needs s == t (no cache offset)")
        centre = int(q_positions[(s - 1) // 2])
        kb = _k_columns(k_positions - centre, q.dtype)
        out = F.scaled_dot_product_attention(
            _extend(q, qa), _extend(k, kb), _zero_pad(v, cols), is_causal=True, scale=scale
        )
        return out[..., :d]
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    q_ext = _extend(q, qa)
    k_ext = _extend(k, torch.zeros(cols, dtype=q.dtype, device=q.device))
    v_ext = _zero_pad(v, cols)
    out = q.new_empty(b, h, s, d)
    for start in range(0, s, block):
        stop = min(start + block, s)
        lo, hi = q_offset + start, q_offset + stop  # keys [0, lo) all visible; [lo, hi) causal
        centre = int(q_positions[(start + stop - 1) // 2])
        k_ext[..., :hi, d:] = _k_columns(k_positions[:hi] - centre, q.dtype)
        qb = q_ext[..., start:stop, :]
        o2, l2 = flash(qb, k_ext[..., lo:hi, :], v_ext[..., lo:hi, :], 0.0, True, scale=scale)[:2]
        if lo == 0:
            out[..., start:stop, :] = o2[..., :d]
            continue
        o1, l1 = flash(qb, k_ext[..., :lo, :], v_ext[..., :lo, :], 0.0, False, scale=scale)[:2]
        # softmax over both key sets = o2 + (o1 - o2) * e^l1 / (e^l1 + e^l2)
        weight = torch.sigmoid(l1 - l2)[..., None]
        if q.dtype == torch.bfloat16:
            merged = torch.lerp(o2[..., :d].float(), o1[..., :d].float(), weight)
            out[..., start:stop, :] = merged
        else:
            torch.lerp(o2[..., :d], o1[..., :d], weight.to(q.dtype), out=out[..., start:stop, :])
    return out
