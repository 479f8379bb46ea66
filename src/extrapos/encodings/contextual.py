"""Content-dependent positional encodings at the `attention` site: CoPE, DAPE, Transformer-XL.

Each one's score for a pair (i, j) depends on the content q_i, k_j as well as on positions, so
no (h, n) distance table can express it. `attend` receives raw q (b, h, s, d) and raw k, v
(b, h, t, d), t = q_offset + s (the model caches raw keys for attention-site encodings, so
KV-cache decoding is exact), and computes causal attention by query chunks: each chunk of c
queries builds only its own (b, h, c, t') logits, t' = the keys its last query can see, never
a (b, h, s, t) tensor for the whole sequence.

| name | score(i, j), before the causal mask and softmax | paper |
|---|---|---|
| `cope` | (q_i·k_j + q_i·e(p_ij)) / √d,  p_ij = Σ_{m=j..i} σ(q_i·k_m/√d) | Golovneva et al. 2024 |
| `dape` | q_i·k_j/√d + B_ij + f(q_i·k_j/√d, B_ij)  (f: an MLP across heads) | Zheng et al. 2024 |
| `txl` | ((q_i + u)·k_j + (q_i + v)·W_r R_{i-j}) / √d | Dai et al. 2019 |

Notation: b batch, h heads, s queries, t keys, d head dim, D d_model, c queries per chunk,
t' keys a chunk sees, L layers. Scores and positional terms are computed in float32 (float64
for float64 inputs) and the softmax output is cast back to v's dtype. Transformer-XL lives in
`extrapos.encodings.transformer_xl`, on the same chunk machinery.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from extrapos.core.errors import UserError
from extrapos.encodings.base import PositionalEncoding, Positions
from extrapos.encodings.registry import (
    build_encoding,
    encoding_class,
    encoding_parameters,
    list_encodings,
    register,
)
from extrapos.kernels import cope_native
from extrapos.kernels.chunks import Probe, QueryChunk, blockwise_attention, prefix_views

#: query chunks are sized so one chunk holds at most this many per-pair activations
#: (b · c · t' · `_pair_width`), and never more than `chunk_size` queries.
BLOCK_ELEMENTS = 2**25

#: default `chunk_size`: 64 query rows per block. Measured (one layer fwd+bwd, b 4, h 4, d 32,
#: 512 tokens, CPU, 1 thread): 64 rows beat 256 by 1.2-2x for all three encodings (fewer masked
#: pairs above the diagonal: 147k instead of 197k per (b, h), and blocks that stay in cache).
CHUNK_ROWS = 64
#: DAPE's default: 32 rows, so its (b, c, t', mlp_width) hidden activation stays small (one layer
#: fwd+bwd at the same shape: 32 rows 0.73-0.86x the time of 64 in three interleaved runs).
DAPE_CHUNK_ROWS = 32


def _positive(name: str, field: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"{name}: {field} must be a positive integer, got {value!r}")
    return value


class _BlockwiseAttention(PositionalEncoding):
    """Shared machinery: causal attention by query chunks; subclasses give each chunk's logits.

    The chunk loop (`extrapos.kernels.chunks.blockwise_attention`), the causal mask (by sequence index: query q_offset + i sees keys
    j <= q_offset + i) and the softmax live here; `chunk_logits` returns the (b, h, c, t')
    pre-mask logits of one chunk. Every pair's logit depends only on its own query row and the
    keys up to it, so chunking and caching give the same result as one pass.
    """

    shift_invariant = True  # the subclasses use positions only through differences, or not at all
    cache = "raw"  # attend() sees every raw key
    chunk_size: int

    def _pair_width(self, heads: int) -> int:
        """Activations per (query, key) pair of one batch row, for chunk sizing."""
        raise NotImplementedError

    def chunk_logits(
        self,
        q: Tensor,
        k: Tensor,
        q_positions: Tensor,
        k_positions: Tensor,
        visible: Tensor,
        layer: int,
    ) -> Tensor:
        """q (b, h, c, d), k (b, h, t', d) in the compute dtype; positions (c,), (t',);
        visible (c, t') bool causal mask -> (b, h, c, t') logits (masked entries: any finite
        value)."""
        raise NotImplementedError

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        positions: Positions,
        layer: int = 0,
        probe: Probe | None = None,
    ) -> Tensor:
        """Causal attention: raw q (b, h, s, d), raw k and v (b, h, t, d) with t = q_offset + s
        -> (b, h, s, d) in v's dtype. Differentiable in q, k, v and every parameter."""
        b, t = q.shape[0], k.shape[-2]
        dtype = torch.promote_types(q.dtype, torch.float32)
        budget = BLOCK_ELEMENTS // max(1, b * t * self._pair_width(q.shape[1]))
        rows = max(1, min(self.chunk_size, budget))  # queries per chunk
        # per-chunk views made once: q split (disjoint; one cat in backward) and k's prefixes
        # with one gradient buffer, instead of a full-size zero-filled gradient per slice
        s = q.shape[-2]
        qs = q.to(dtype).split(rows, dim=-2)
        ks = prefix_views(
            k.to(dtype), [positions.q_offset + min(i + rows, s) for i in range(0, s, rows)]
        )

        def logits(chunk: QueryChunk) -> Tensor:
            return self.chunk_logits(
                qs[chunk.start // rows],
                ks[chunk.start // rows],
                positions.q[chunk.start : chunk.stop],
                positions.k[: chunk.seen],
                chunk.visible,
                layer,
            )

        return blockwise_attention(
            q, k, v, q_offset=positions.q_offset, rows=rows, logits=logits, probe=probe
        )


# ---------------------------------------------------------------------------------------------
# CoPE (Golovneva et al. 2024)


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


# ---------------------------------------------------------------------------------------------
# DAPE (Zheng et al. 2024)


def _bias_encodings() -> list[str]:
    """Registered encodings whose only site is a distance-bias table (DAPE's possible B)."""
    return [
        name
        for name in list_encodings()
        if encoding_class(name).distance_bias is not PositionalEncoding.distance_bias
        and encoding_class(name).attend is PositionalEncoding.attend
    ]


@register("dape")
class DAPE(_BlockwiseAttention):
    """Data-Adaptive Positional Encoding (Zheng et al. 2024, "DAPE: Data-Adaptive Positional
    Encoding for Length Extrapolation", NeurIPS 2024, arXiv:2405.14722; reference code
    github.com/chuanyang-Zheng/DAPE, `AliBi_DAPE`, `ParallelKerpleLog_DAPE`):

        A = S + B + f(S, B),   S = QKᵀ/√d,   then the causal mask and softmax

    B a static distance bias and f a per-layer MLP applied to every pair (i, j) across the
    heads: [S_ij; B_ij] (2h) -> Linear -> LeakyReLU -> Linear -> (h). So a pair's bias adapts to
    its attention scores in every head.

    Variant (DAPE v1, the paper's main method, not DAPE v2's convolution over the score map):
    B is any registered distance-bias encoding, named by `bias` and built once per layer with
    `bias_params` (the paper uses ALiBi, `bias="alibi"`, B_h = -m_h·(i - j), and KERPLE-log,
    `bias="kerple_log"`, B_h = -r1_h·log(1 + r2_h·(i - j)) with r1, r2 learned per layer and
    head); B_ij = table[h, pos_i - pos_j] of that encoding's `distance_bias` (float32, as for
    every bias table). S is the *scaled* score; the MLP sees the pairs past the causal
    boundary too (their B is table[h, 0], the reference's tril gives 0: ALiBi and KERPLE have
    B(0) = 0), which cannot matter: the mask comes after f and each pair is independent. f keeps
    PyTorch's default init, as the reference. The first layer is split into its S and B halves,
    so B's part is computed once per chunk, not once per batch row.

    Args:
        num_heads: h (set by the model).
        num_layers: L (set by the model); one MLP (and one bias encoding) per layer.
        bias: the static bias B: the name of a registered `bias`-site encoding (alibi,
            kerple_log, kerple_power, sandwich, t5, …).
        bias_params: its constructor parameters (besides num_heads).
        mlp_width: hidden width of f (32 in the paper).
        chunk_size: at most this many queries per block.
    Parameters: `mlps` (L × [Linear(2h, width), LeakyReLU, Linear(width, h)]); `biases` (L
    bias encodings, with their own parameters, e.g. KERPLE's r1, r2 (h,)).
    """

    def __init__(
        self,
        num_heads: int,
        num_layers: int = 1,
        bias: str = "alibi",
        bias_params: dict[str, Any] | None = None,
        mlp_width: int = 32,
        chunk_size: int = DAPE_CHUNK_ROWS,
    ) -> None:
        super().__init__()
        self.num_heads = _positive("dape", "num_heads", num_heads)
        self.num_layers = _positive("dape", "num_layers", num_layers)
        self.mlp_width = _positive("dape", "mlp_width", mlp_width)
        self.chunk_size = _positive("dape", "chunk_size", chunk_size)
        known = _bias_encodings()
        if bias not in known:
            raise UserError(
                f"dape: bias must name a distance-bias encoding ({', '.join(known)}), got {bias!r}"
            )
        self.bias = bias
        self.mlps = nn.ModuleList(
            nn.Sequential(
                nn.Linear(2 * num_heads, mlp_width), nn.LeakyReLU(), nn.Linear(mlp_width, num_heads)
            )
            for _ in range(num_layers)
        )
        params = dict(bias_params or {})
        accepted = encoding_parameters(bias)
        dims = {k: value for k, value in (("num_heads", num_heads),) if k in accepted}
        if set(params) & set(dims):
            raise UserError("dape: bias_params must not set num_heads (the model sets it)")
        self.biases = nn.ModuleList(
            build_encoding(bias, **dims, **params) for _ in range(num_layers)
        )

    def _pair_width(self, heads: int) -> int:
        return self.mlp_width + 3 * heads  # the MLP's hidden layer, plus S, B and the output

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # checkpoints from before the bias was a registered encoding kept KERPLE-log's
        # parameters as r1, r2 (L, h): move them to biases.{layer}.r1 / .r2 (h,)
        for name in ("r1", "r2"):
            old = state_dict.pop(prefix + name, None)
            if old is not None:
                for layer, row in enumerate(old):
                    state_dict[f"{prefix}biases.{layer}.{name}"] = row
        super()._load_from_state_dict(state_dict, prefix, *args)

    def static_bias(self, distances: Tensor, layer: int, dtype: torch.dtype) -> Tensor:
        """B for distances (c, t') = pos_i - pos_j (negative ones, masked pairs, count as 0)
        -> (h, c, t') in `dtype`: the layer's bias table gathered at the distances."""
        distances = distances.clamp(min=0)
        table = self.biases[layer].distance_bias(int(distances.max()) + 1)  # (h, n)
        return table[:, distances].to(dtype)

    def chunk_logits(
        self,
        q: Tensor,
        k: Tensor,
        q_positions: Tensor,
        k_positions: Tensor,
        visible: Tensor,
        layer: int,
    ) -> Tensor:
        h = self.num_heads
        b, c, t = q.shape[0], q.shape[-2], k.shape[-2]
        scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # S (b, h, c, t')
        bias = self.static_bias(q_positions[:, None] - k_positions[None, :], layer, q.dtype)
        first, act, last = self.mlps[layer]
        w1, b1 = first.weight.to(q.dtype), first.bias.to(q.dtype)  # (width, 2h), (width,)
        # Linear([S; B]) = W1[:, :h]·S + (W1[:, h:]·B + b1): the B half has no batch dimension,
        # so it is one (c·t', width) matmul, broadcast over the batch as the `baddbmm` input of
        # the S half. Heads are the trailing dim of permuted views ((b, c·t', h) without a copy),
        # each Linear one matmul over all pairs: no copies and no separate add pass over the
        # (pairs, width) activations (one DAPE layer fwd+bwd at b 4, h 4, 512 keys: 128 -> 110
        # ms against matmul + add; 1.4x faster than the einsums before that, measured).
        fixed = torch.addmm(b1, bias.permute(1, 2, 0).reshape(c * t, h), w1[:, h:].T)
        hidden = torch.baddbmm(
            fixed[None],
            scores.permute(0, 2, 3, 1).reshape(b, c * t, h),
            w1[:, :h].T.expand(b, h, -1),
        )  # (b, c·t', width)
        hidden = F.leaky_relu_(hidden, act.negative_slope)  # in place: a fresh temporary
        adaptive = hidden @ last.weight.to(q.dtype).T  # (b, c·t', h)
        adaptive = adaptive.view(b, c, t, h).permute(0, 3, 1, 2)  # (b, h, c, t')
        return scores + bias + adaptive + last.bias.to(q.dtype)[:, None, None]

    def extra_repr(self) -> str:
        return f"bias={self.bias}, mlp_width={self.mlp_width}, {super().extra_repr()}"


__all__ = [
    "DAPE",
    "CoPE",
    "contextual_positions",
    "cope_logits",
    "interpolate_at",
]
