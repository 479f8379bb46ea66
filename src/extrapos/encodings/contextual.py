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
`extrapos.encodings.transformer_xl` and CoPE in `extrapos.encodings.cope`, on the same chunk
machinery.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from extrapos.core.errors import UserError
from extrapos.encodings.base import PositionalEncoding, Positions
from extrapos.encodings.registry import (
    build_encoding,
    encoding_class,
    encoding_parameters,
    list_encodings,
    register,
)
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


__all__ = ["CHUNK_ROWS", "DAPE", "DAPE_CHUNK_ROWS"]
