"""CoPE (Golovneva et al. 2024): contextual positions, a soft count of the gated keys between a
key and its query, at the `attention` site on the chunk machinery of
`extrapos.encodings.contextual` (see its module docstring for the notation).

    score(i, j) = (q_i·k_j + q_i·e(p_ij)) / √d,   p_ij = Σ_{m=j..i} σ(q_i·k_m/√d)

The per-pair work is one autograd node (`cope_logits`), on float32 CPU tensors through the fused
kernels of `extrapos.kernels.cope_native` (the same numbers).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from extrapos.encodings.contextual import CHUNK_ROWS, _BlockwiseAttention, _positive
from extrapos.encodings.registry import register
from extrapos.kernels import cope_native


def contextual_positions(gates: Tensor, npos_max: float | None = None) -> Tensor:
    """CoPE positions: p_ij = Σ_{m=j..i} g_im, the gates of the keys from j up to the query,
    clamped to npos_max (None: unclamped).

    gates (..., c, t) with masked (future) keys already zero -> (..., c, t): a reverse cumulative
    sum along the keys. With every gate 1, p_ij = i - j + 1 (a token counts itself).
    """
    positions = _ReverseCumsum.apply(gates)
    return positions if npos_max is None else positions.clamp(max=npos_max)


class _ReverseCumsum(torch.autograd.Function):
    """y_j = Σ_{m >= j} x_m along the last dim: forward flip·cumsum·flip (the same numbers as
    before), backward the plain cumsum of the gradient (dL/dx_m = Σ_{j <= m} dL/dy_j) — what
    autograd computed through four more flips of the (b, h, c, t') block."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.flip(-1).cumsum(dim=-1).flip(-1)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad.cumsum(dim=-1)


def interpolate_at(values: Tensor, positions: Tensor) -> Tensor:
    """Linear interpolation of integer-indexed values at fractional positions:
    (p - ⌊p⌋)·values[⌈p⌉] + (1 - p + ⌊p⌋)·values[⌊p⌋].

    values (..., c, n) at integer positions 0 .. n-1; positions (..., c, t) in [0, n-1]
    -> (..., c, t). Differentiable in both (in positions through the weight p - ⌊p⌋).
    """
    floor = positions.detach().floor()
    weight = positions - floor
    low = values.gather(-1, floor.long())
    high = values.gather(-1, positions.detach().ceil().long())
    return torch.lerp(low, high, weight)  # one fused op (and backward) for the 4 of the formula


class _CoPELogits(torch.autograd.Function):
    """S + e(p(S)) for one chunk, forward and backward in one node: the composition
    `scores + interpolate_at(integer_logits, contextual_positions(σ(S) masked, npos_max))`,
    with the same numbers (gradients up to the sign of exact zeros), and fewer passes over the
    (b, h, c, t') pairs and fewer saved tensors (gates, weights, one index instead of the
    sigmoid output, clamp input, two indices and both gathered values).

    Forward: ⌈p⌉'s value is read from the table shifted by one (v_next[m] = v[m + 1], the last
    row repeated) at ⌊p⌋: where p is an integer the weight p - ⌊p⌋ is 0 and lerp returns
    v[⌊p⌋] exactly, whatever it reads there; so no ceil pass and no second index.
    Backward, with G the gradient of the logits:
        dv[⌊p⌋] += G·(1 - w),  dv[⌈p⌉] += G·w           (lerp's, scattered into the table)
        dp = G·(v[⌈p⌉] - v[⌊p⌋]), 0 where w = 0         (clamped p, and integer p: ⌈p⌉ = ⌊p⌋)
        dg = cumsum(dp) masked,  dS = G + σ'(S)·dg       (the reverse cumsum's and sigmoid's)

    float32 on the CPU runs the same operations fused per query row (`extrapos.kernels.
    cope_native`, bit for bit these numbers, tested), saving only the masked gates; the ATen
    composition below is the fallback (other dtypes and devices, or no compiler).
    """

    @staticmethod
    def forward(
        ctx: Any,
        scores: Tensor,
        integer_logits: Tensor,
        visible: Tensor,
        npos_max: float,
        overwrite: bool,
    ) -> Tensor:
        # masks as products with 0/1 floats (exact for finite values; `masked_fill` with a
        # broadcast bool mask is ~10x slower on CPU, measured)
        keep = visible.to(scores.dtype)
        ctx.native = native = _native_kernels(scores, integer_logits, visible, npos_max)
        if native is not None:
            # the same numbers, each query row in one pass (`extrapos.kernels.cope_native`),
            # the logits written over the scores (or over a copy, unless the caller allows)
            inplace = overwrite and scores.is_contiguous()
            logits = scores if inplace else scores.clone(memory_format=torch.contiguous_format)
            integer_logits, keep = integer_logits.contiguous(), keep.contiguous()
            gates = torch.sigmoid(logits)
            native.forward(logits, gates, integer_logits, keep, npos_max)
            if inplace:
                ctx.mark_dirty(scores)
            ctx.npos_max = npos_max
            ctx.save_for_backward(gates, integer_logits, keep)
            return logits
        gates = torch.sigmoid(scores).mul_(keep)
        positions = gates.flip(-1).cumsum_(dim=-1).flip(-1).clamp_(max=npos_max)
        index = positions.long()  # ⌊p⌋ (p >= 0: truncation)
        weight = positions.frac_()  # p - ⌊p⌋, in p's buffer (frac: p - trunc(p), one pass)
        shifted = torch.cat((integer_logits[..., 1:], integer_logits[..., -1:]), dim=-1)
        low = integer_logits.gather(-1, index)
        logits = torch.lerp(low, shifted.gather(-1, index), weight, out=low)
        ctx.save_for_backward(gates, weight, index, keep, shifted - integer_logits)
        return logits.add_(scores)

    @staticmethod
    @once_differentiable  # a hand-written backward: no double backward
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None, None, None]:
        if ctx.native is not None:
            gates, integer_logits, keep = ctx.saved_tensors
            grad_scores, grad_table = ctx.native.backward(
                grad.contiguous(), gates, integer_logits, keep, ctx.npos_max
            )
            return grad_scores, grad_table, None, None, None
        gates, weight, index, keep, step = ctx.saved_tensors
        table = step.new_zeros(step.shape).scatter_add_(-1, index, grad * (1 - weight))
        above = step.new_zeros(step.shape).scatter_add_(-1, index, grad * weight)
        # the ⌈p⌉ = ⌊p⌋ + 1 rows (w = 0 rows add zeros); `above`'s last row only ever
        # holds zeros (⌊p⌋ = npos_max only where p = npos_max: w = 0)
        table[..., 1:] += above[..., :-1]
        dp = (grad * step.gather(-1, index)).mul_(weight.ceil())  # ⌈w⌉ = 0 where w = 0, else 1
        dg = dp.cumsum_(dim=-1).mul_(keep)
        return torch.ops.aten.sigmoid_backward(dg, gates).add_(grad), table, None, None, None


def _native_kernels(
    scores: Tensor, integer_logits: Tensor, visible: Tensor, npos_max: float
) -> Any:
    """CoPE's fused CPU kernels (`extrapos.kernels.cope_native`) where they apply — float32 on
    the CPU, a chunk's shapes ((b, h, c, t'), (b, h, c, n), a (c, t') mask, t' >= 1, every
    clamped position inside the table), and built — else None: the ATen composition, which
    also handles (or refuses, naming the index) everything else."""
    if scores.dtype != torch.float32 or scores.device.type != "cpu" or scores.dim() != 4:
        return None
    if integer_logits.dtype != torch.float32 or integer_logits.device.type != "cpu":
        return None
    c, t = scores.shape[-2:]
    if visible.shape != (c, t) or t == 0 or integer_logits.shape[:-1] != scores.shape[:-1]:
        return None
    if not 0 <= npos_max <= integer_logits.shape[-1] - 1:  # NaN too
        return None
    return cope_native.load()


def cope_logits(
    scores: Tensor,
    integer_logits: Tensor,
    visible: Tensor,
    npos_max: float,
    *,
    overwrite_scores: bool = False,
) -> Tensor:
    """CoPE's logits from the scaled scores S (b, h, c, t') and q·e[m]/√d (b, h, c, n):
    S + interpolate_at(q·e, contextual_positions(σ(S) masked by `visible`, npos_max)), as one
    autograd node (`_CoPELogits`; float32 CPU tensors through the fused kernels of
    `extrapos.kernels.cope_native` where they are built, the same numbers). n = npos_max + 1.
    `overwrite_scores`: the logits may be written into S's buffer (a temporary of the caller's
    that nothing else reads; not a leaf that requires grad)."""
    return _CoPELogits.apply(scores, integer_logits, visible, npos_max, overwrite_scores)


@register("cope")
class CoPE(_BlockwiseAttention):
    """Contextual Position Encoding (Golovneva et al. 2024, "Contextual Position Encoding:
    Learning to Count What's Important", arXiv:2405.18719; reference code
    facebookresearch/RAM, projects/cope):

        g_ij = σ(q_i·k_j / √d)                     gate: does key j count for query i?  (j <= i)
        p_ij = min(Σ_{m=j..i} g_im, npos_max)      contextual position (a soft count)
        e(p) = (p - ⌊p⌋)·e[⌈p⌉] + (1 - p + ⌊p⌋)·e[⌊p⌋]   interpolated position embedding
        logit_ij = (q_i·k_j + q_i·e(p_ij)) / √d

    Positions count gated tokens, not tokens, so a head can attend to "the 3rd sentence back";
    the clamp at npos_max keeps every position inside the learned table at any length. The
    explicit token positions are not used at all (the model passes them; CoPE ignores them).

    Choices, as the reference code's defaults: the gates use the attention's own q and k, scaled
    by 1/√d; the CoPE term is scaled by 1/√d together with q·k (the paper's listing adds it
    unscaled; the two differ only by a factor absorbed into e); the table e[0 .. npos_max] is
    shared by the heads of a layer, one per layer, initialized to zero (CoPE starts as NoPE).
    As in the paper, q·e[m] is computed once per chunk for all integers m (c × (npos_max + 1)
    per head) and the scalars are interpolated, instead of interpolating d-dim vectors per pair.

    Args:
        head_dim: d (set by the model).
        num_layers: L (set by the model); one table per layer.
        npos_max: the largest contextual position; p is clamped to it and the table has
            npos_max + 1 rows (the reference code's `npos` = npos_max + 1, by default its block
            size + 1). 64 by default, as in the DAPE authors' CoPE baseline.
        chunk_size: at most this many queries per block.
    Parameters: `embedding` (L, npos_max + 1, d).
    """

    def __init__(
        self, head_dim: int, num_layers: int = 1, npos_max: int = 64, chunk_size: int = CHUNK_ROWS
    ) -> None:
        super().__init__()
        self.head_dim = _positive("cope", "head_dim", head_dim)
        self.num_layers = _positive("cope", "num_layers", num_layers)
        self.npos_max = _positive("cope", "npos_max", npos_max)
        self.chunk_size = _positive("cope", "chunk_size", chunk_size)
        self.embedding = nn.Parameter(torch.zeros(num_layers, npos_max + 1, head_dim))

    def _pair_width(self, heads: int) -> int:
        return 8 * heads  # ~8 (b, h, c, t') temporaries: scores, gates, positions, indices, …

    def gates(self, scores: Tensor) -> Tensor:
        """g = σ(q·k/√d) from the scaled scores (b, h, c, t'). (`cope_logits` computes σ itself;
        a subclass that changes the gates takes the unfused autograd composition.)"""
        return torch.sigmoid(scores)

    def chunk_logits(
        self,
        q: Tensor,
        k: Tensor,
        q_positions: Tensor,
        k_positions: Tensor,
        visible: Tensor,
        layer: int,
    ) -> Tensor:
        # 1/√d applied to q (c × d), not to the (b, h, c, t') scores and logits: two full
        # passes fewer forward and backward; (q/√d)·k and (q/√d)·e are the scaled terms
        q = q * self.head_dim**-0.5
        scores = q @ k.transpose(-1, -2)  # q·k/√d: (b, h, c, t')
        integer_logits = q @ self.embedding[layer].to(q.dtype).T  # (b, h, c, npos_max + 1)
        if type(self).gates is CoPE.gates:  # σ: the fused node
            return cope_logits(
                scores, integer_logits, visible, self.npos_max, overwrite_scores=True
            )
        gates = self.gates(scores).masked_fill(~visible, 0.0)  # a subclass's gates: autograd
        positions = contextual_positions(gates, self.npos_max)  # (b, h, c, t')
        return scores + interpolate_at(integer_logits, positions)

    def extra_repr(self) -> str:
        return f"npos_max={self.npos_max}, {super().extra_repr()}"


__all__ = ["CoPE", "contextual_positions", "cope_logits", "interpolate_at"]
