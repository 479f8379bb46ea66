"""Score biases: softmax(q·kᵀ/√d + B) with B[h, i, j] = table[h, i - j].

Each registered encoding returns its per-head table over distances k = i - j = 0 .. n-1
(causal: j <= i), O(h·n) memory; `extrapos.kernels.attention` applies it without building an
(h, n, n) tensor. Registered: alibi, t5, kerple_log, kerple_power, sandwich (and fire, below).
The math (slopes, buckets, kernels, tables) is pure functions in `extrapos.encodings.bias.tables`,
re-exported here; the classes below only cache and apply it.

Also here: FIRE, registered at the `attention` site because its bias depends on the query
position too, not on i - j alone; and, as pure functions only, the bidirectional (encoder)
forms of ALiBi and T5 buckets (the model is causal-only).

Notation: h heads, n distances, s query positions, t key positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from extrapos.core.errors import UserError
from extrapos.encodings.base import PositionalEncoding, Positions, check_base
from extrapos.encodings.bias.tables import (
    KERPLE_EPS,
    alibi_bias_bidirectional,
    alibi_slopes,
    fire_log,
    fire_normalized_distance,
    kerple_log_table,
    kerple_power_table,
    sandwich_table,
    t5_buckets,
)
from extrapos.encodings.registry import register
from extrapos.kernels.attention import attention
from extrapos.kernels.chunks import Probe, QueryChunk, blockwise_attention


@register("alibi")
class ALiBi(PositionalEncoding):
    """Attention with Linear Biases (Press et al. 2022): B[h, i, j] = -m_h · (i - j).

    Args:
        num_heads: attention heads h (set by the model).
    """

    prefix_stable_table = True  # -m·k: one exact product per entry

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

    prefix_stable_table = True  # a gather of w by the buckets of 0 .. n-1

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
        self._buckets = torch.empty(0, dtype=torch.long)  # buckets of 0 .. len-1, grown

    def distance_bias(self, num_distances: int) -> Tensor:
        if self._buckets.shape[0] < num_distances or self._buckets.device != self.weight.device:
            size = max(num_distances, 2 * self._buckets.shape[0])  # decoding: rebuilt rarely
            distances = torch.arange(size, device=self.weight.device)
            self._buckets = t5_buckets(distances, self.num_buckets, self.max_distance)
        return self.weight[self._buckets[:num_distances]].T.float()

    def signed_distance_bias(self, num_distances: int) -> Tensor:
        """T5's encoder rule: half the buckets for keys at or before the query, half after."""
        distances = torch.arange(1 - num_distances, num_distances, device=self.weight.device)
        buckets = t5_buckets(distances, self.num_buckets, self.max_distance, bidirectional=True)
        return self.weight[buckets].T.float()

    def extra_repr(self) -> str:
        return f"num_buckets={self.num_buckets}, max_distance={self.max_distance}"


# ---------------------------------------------------------------------------------------------
# KERPLE (Chi et al. 2022)


class _Kerple(PositionalEncoding):
    """Shared KERPLE machinery: two learnable (h,) parameters kept in their allowed ranges.

    The constraints are enforced as in the reference code (github.com/chijames/KERPLE, the
    `ParallelKerpleLog`/`ParallelKerplePower` modules): the stored values are clamped into range
    (projected) every time the table is built, before they are used, and the table is built from
    the projected parameters themselves, so every entry keeps its gradient. A smooth
    reparametrization (softplus) would change the optimization the paper reports; projection keeps
    it. The projection writes through `.data`, so it never trips autograd's in-place checks.
    """

    #: (low, high) bounds of r1 and r2; None = unbounded above.
    r1_range: tuple[float, float | None] = (KERPLE_EPS, None)
    r2_range: tuple[float, float | None] = (KERPLE_EPS, None)
    #: the reference init: r1 ~ U(0, r1_init), r2 ~ U(0, r2_init), then projected.
    r1_init: float = 1.0
    r2_init: float = 1.0

    def __init__(self, num_heads: int) -> None:
        super().__init__()
        if num_heads < 1:
            raise UserError(f"{self.name}: num_heads must be >= 1, got {num_heads}")
        self.r1 = nn.Parameter(torch.rand(num_heads) * self.r1_init)
        self.r2 = nn.Parameter(torch.rand(num_heads) * self.r2_init)
        self.project_()

    def project_(self) -> None:
        """Clamp r1 and r2 into their ranges in place (projected gradient descent's projection)."""
        for param, (low, high) in ((self.r1, self.r1_range), (self.r2, self.r2_range)):
            param.data.clamp_(min=low, max=high)

    def table(self, num_distances: int) -> Tensor:
        raise NotImplementedError

    def distance_bias(self, num_distances: int) -> Tensor:
        self.project_()
        return self.table(num_distances).float()


@register("kerple_log")
class KerpleLog(_Kerple):
    """KERPLE, logarithmic variant (Chi et al. 2022, "KERPLE: Kernelized Relative Positional
    Embedding for Length Extrapolation", arXiv:2205.09921, eq. "log"):

        B[h, i, j] = -r1_h · log(1 + r2_h · (i - j)),   r1_h, r2_h > 0 learned per head

    The conditionally positive definite kernel -log(1 + r2·|i-j|) scaled by r1. Init as the
    reference code: r1 ~ U(0, 2), r2 ~ U(0, 1), both clamped to >= 0.01 before every use.

    Args:
        num_heads: attention heads h (set by the model).
    Table: (h, n) float32, differentiable in r1 and r2.
    """

    r1_init = 2.0
    r2_init = 1.0

    def table(self, num_distances: int) -> Tensor:
        return kerple_log_table(self.r1, self.r2, num_distances)


@register("kerple_power")
class KerplePower(_Kerple):
    """KERPLE, power variant (Chi et al. 2022, arXiv:2205.09921, eq. "power"):

        B[h, i, j] = -r1_h · (i - j)^r2_h,   r1_h > 0,  0 < r2_h <= 2, learned per head

    r2 = 1 is ALiBi with a learned slope. Init as the reference code: r1 ~ U(0, 1),
    r2 ~ U(0, 2); before every use r1 is clamped to >= 0.01 and r2 to [0.01, 2].

    Args:
        num_heads: attention heads h (set by the model).
    Table: (h, n) float32, differentiable in r1 and r2.
    """

    r2_range = (KERPLE_EPS, 2.0)
    r1_init = 1.0
    r2_init = 2.0

    def table(self, num_distances: int) -> Tensor:
        return kerple_power_table(self.r1, self.r2, num_distances)


# ---------------------------------------------------------------------------------------------
# Sandwich (Chi et al. 2023)


@register("sandwich")
class Sandwich(PositionalEncoding):
    """Sandwich: a parameter-free score bias from inner products of sinusoidal position vectors
    (Chi et al. 2023; formula and constants in `sandwich_table`). The authors released no code;
    NVIDIA NeMo's `SandwichRelativePositionEmbedding` is the one public implementation found.

    Args:
        num_heads: attention heads h (set by the model).
        dim: d', the width of the sinusoids whose inner product is taken (even). 128 by default:
            a choice made here, not a value from the paper (NeMo takes it as an argument,
            documented there as the per-head hidden size). The bias levels off near
            -d'/2 / (8h/H), so d' = 128 puts head 1's far-distance penalty at 64 (for 8 heads), the
            size of ALiBi's sharpest head (slope 1/2) at distance 128, the bench's train length.
        base: wavelength base of the sinusoids (10000, as in Vaswani et al.).
    Table: (h, n) float32, cached and grown on demand.
    """

    prefix_stable_table = True  # already a prefix of a table grown by doubling

    def __init__(self, num_heads: int, dim: int = 128, base: float = 10000.0) -> None:
        super().__init__()
        if num_heads < 1:
            raise UserError(f"sandwich: num_heads must be >= 1, got {num_heads}")
        if dim < 2 or dim % 2:
            raise UserError(f"sandwich: dim must be a positive even number, got {dim}")
        base = check_base("sandwich", base)
        self.num_heads, self.dim, self.base = int(num_heads), int(dim), float(base)
        # a non-persistent buffer: the cache follows the model's device and is not saved
        self.register_buffer("_table", torch.empty(num_heads, 0), persistent=False)

    def distance_bias(self, num_distances: int) -> Tensor:
        if self._table.shape[1] < num_distances:
            size = max(num_distances, 2 * self._table.shape[1], 256)
            self._table = sandwich_table(self.num_heads, size, self.dim, self.base).to(
                self._table.device
            )
        return self._table[:, :num_distances]

    def extra_repr(self) -> str:
        return f"dim={self.dim}, base={self.base:g}, {super().extra_repr()}"


# ---------------------------------------------------------------------------------------------
# FIRE (Li et al. 2023): depends on the query position, so it is not a distance table

#: FIRE builds its bias per query chunk: at most this many MLP activations (c·t·(width + h)).
FIRE_BLOCK_ELEMENTS = 2**22


@register("fire")
class FIRE(PositionalEncoding):
    """FIRE (Li et al. 2023, "Functional Interpolation for Relative Positions Improves Long
    Context Transformers", arXiv:2310.04418):

        B[h, i, j] = f_θ(ψ(i - j) / ψ(max(L, i)))_h,   ψ(x) = log(c·x + 1)

    f_θ an MLP 1 -> mlp_width (ReLU) -> h; c and L learned. Constants from the paper's appendix
    implementation: mlp_width 32, c init 0.1, L = |λ·512| with λ a learned multiplier (init 1),
    eps 1e-6 added to the normalizer; the MLP keeps PyTorch's default init.

    Site: `attention`, not `bias`. B depends on the query position i (through max(L, i)), not
    on i - j alone, so it cannot be a `distance_bias` table. `attend` receives the raw q, k, v
    and their positions. While every query is below the threshold (i < L: all of training at
    the paper's L = 512) the bias is a distance table (`distance_table`: the MLP on n distances)
    and takes the distance-bias attention path; otherwise `attend` builds the (h, c, t) bias
    block of each query chunk from `position_bias`, never an (h, s, t) tensor for the whole
    sequence; chunks are sized so the
    MLP's (c, t, mlp_width) activations stay within `FIRE_BLOCK_ELEMENTS`. Rows depend only on
    their own query position, so KV-cache decoding is exact (`cache = "raw"`: no rotation, so
    raw and rotated keys are the same).

    Args:
        num_heads: attention heads h (set by the model).
        mlp_width: hidden width of f_θ.
        init_c: initial c of ψ.
        init_L: the threshold L at init (L = |multiplier · init_L|, multiplier learned); the paper
            uses 512 (its train lengths are longer than the bench's 128, where L = 512 means
            every trained position is below the threshold: a distance-only bias in training).
        eps: added to ψ(max(L, i)) so position 0 does not divide by zero.
    """

    cache = "raw"

    def __init__(
        self,
        num_heads: int,
        mlp_width: int = 32,
        init_c: float = 0.1,
        init_L: float = 512.0,  # noqa: N803  (the paper's name)
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if num_heads < 1:
            raise UserError(f"fire: num_heads must be >= 1, got {num_heads}")
        if mlp_width < 1:
            raise UserError(f"fire: mlp_width must be >= 1, got {mlp_width}")
        if not init_c > 0:
            raise UserError(f"fire: init_c must be > 0, got {init_c}")
        if not init_L > 0:
            raise UserError(f"fire: init_L must be > 0, got {init_L}")
        if not eps > 0:
            raise UserError(f"fire: eps must be > 0, got {eps}")
        self.mlp = nn.Sequential(
            nn.Linear(1, mlp_width), nn.ReLU(), nn.Linear(mlp_width, num_heads)
        )
        self.c = nn.Parameter(torch.tensor(float(init_c)))
        self.L_multiplier = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("init_L", torch.tensor(float(init_L)), persistent=False)
        self.eps = float(eps)
        self.num_heads, self.mlp_width = int(num_heads), int(mlp_width)

    @property
    def threshold(self) -> Tensor:
        """L = |multiplier · init_L| (a scalar tensor)."""
        return (self.L_multiplier * self.init_L).abs()

    bidirectional_attend = True

    def position_bias(
        self, q_positions: Tensor, k_positions: Tensor, signed: bool = False
    ) -> Tensor:
        """q_positions (s,), k_positions (t,) -> (h, s, t) float32 bias, differentiable in every
        parameter. Rows depend only on their own query position, so query chunks can be built
        independently (and with a KV cache).

        signed (the encoder form): the MLP input is sign(i - j) · ψ(|i - j|) / ψ(max(L, i)), in
        [-1, 1] — the causal input for keys at or before the query, its mirror image for keys
        after it, so f_θ can treat the two sides differently (as T5's both-sign buckets do)."""
        x = fire_normalized_distance(q_positions, k_positions, self.c, self.threshold, self.eps)
        if signed:
            x = x * torch.sign(q_positions[:, None] - k_positions[None, :]).to(x.dtype)
        return self.mlp(x[..., None]).permute(2, 0, 1)

    def recomputed_position_bias(
        self, q_positions: Tensor, k_positions: Tensor, signed: bool = False
    ) -> Tensor:
        """`position_bias`, whose MLP activations ((s, t, mlp_width) twice, 16x the block when
        h = 4) are not kept for the backward but recomputed from the positions there
        (`torch.utils.checkpoint`): the same numbers and gradients, memory O(h·s·t) per block
        instead of O(width·s·t) — 5.9 GiB for a 4k training step at batch 1 before, n^2.09."""
        if not (torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())):
            return self.position_bias(q_positions, k_positions, signed)
        return checkpoint(self.position_bias, q_positions, k_positions, signed, use_reentrant=False)

    def distance_table(self, num_distances: int) -> Tensor:
        """(h, n) bias for distances 0 .. n-1 of queries below the threshold L (i < L), where
        ψ(max(L, i)) = ψ(L) and the bias depends on i - j only; the same values as
        `position_bias` for such rows, differentiable in every parameter."""
        k = torch.arange(num_distances, device=self.c.device, dtype=torch.float32)
        x = fire_log(k, self.c) / (fire_log(self.threshold, self.c) + self.eps)
        return self.mlp(x[:, None]).T

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        positions: Positions,
        layer: int = 0,
        probe: Probe | None = None,
        causal: bool = True,
        key_mask: Tensor | None = None,
    ) -> Tensor:
        """Causal attention with the FIRE bias: q (b, h, s, d), k and v (b, h, t, d) with
        t = q_offset + s -> (b, h, s, d). Query chunks each see the keys up to their last query
        and build only their own bias block; differentiable in q, k, v and every parameter.
        causal=False: the encoder form (every key, the signed bias of `position_bias`), with
        key_mask (b, t) bool marking real keys of a padded batch."""
        if not causal:
            return self._attend_bidirectional(q, k, v, positions, key_mask)
        s = q.shape[-2]
        q_positions, k_positions, q_offset = positions.q, positions.k, positions.q_offset
        # queries below the threshold L (a prefix: positions increase) see a bias of i - j
        # alone: the MLP runs on the n distances once, not on every (query, key) pair, and the
        # table takes the distance-bias path (fused kernels; its gradient reaches the MLP, c, L).
        # A probe (diagnostics) needs the probabilities: the blockwise path records them.
        below = int((q_positions < self.threshold).sum()) if s and probe is None else 0
        if below and bool((q_positions[:below] < self.threshold).all()):
            seen = q_offset + below
            n = int(q_positions[below - 1] - k_positions[0]) + 1
            head = attention(
                q[..., :below, :],
                k[..., :seen, :],
                v[..., :seen, :],
                bias_table=self.distance_table(n),
                q_positions=q_positions[:below],
                k_positions=k_positions[:seen],
                q_offset=q_offset,
            )
            if below == s:
                return head
            rest = Positions(q_positions[below:], k_positions, seen)
            return torch.cat((head, self._attend_pairs(q[..., below:, :], k, v, rest)), dim=-2)
        return self._attend_pairs(q, k, v, positions, probe)

    def _attend_pairs(
        self, q: Tensor, k: Tensor, v: Tensor, positions: Positions, probe: Probe | None = None
    ) -> Tensor:
        """`attend` by query chunks, each with its (h, c, t') block from `position_bias`."""
        s, t = q.shape[-2], k.shape[-2]
        rows = max(1, min(s, FIRE_BLOCK_ELEMENTS // (t * (self.mlp_width + self.num_heads))))

        def bias(chunk: QueryChunk) -> Tensor:  # (h, c, t')
            block = self.recomputed_position_bias(
                positions.q[chunk.start : chunk.stop], positions.k[: chunk.seen]
            )
            return block.to(q.dtype)

        return blockwise_attention(
            q, k, v, q_offset=positions.q_offset, rows=rows, bias=bias, probe=probe
        )

    def _attend_bidirectional(
        self, q: Tensor, k: Tensor, v: Tensor, positions: Positions, key_mask: Tensor | None
    ) -> Tensor:
        """The encoder form by query chunks: every key, the signed bias; padding masked."""
        s, t = q.shape[-2], k.shape[-2]
        rows = max(1, min(s, FIRE_BLOCK_ELEMENTS // (t * (self.mlp_width + self.num_heads))))
        outs = []
        for start in range(0, s, rows):
            stop = min(start + rows, s)
            bias = self.recomputed_position_bias(positions.q[start:stop], positions.k, signed=True)
            bias = bias.to(q.dtype)[None]  # (1, h, c, t)
            if key_mask is not None:
                bias = bias.masked_fill(~key_mask[:, None, None, :], float("-inf"))
            outs.append(F.scaled_dot_product_attention(q[..., start:stop, :], k, v, attn_mask=bias))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-2)


__all__ = [
    "FIRE",
    "FIRE_BLOCK_ELEMENTS",
    "KERPLE_EPS",
    "ALiBi",
    "KerpleLog",
    "KerplePower",
    "Sandwich",
    "T5Bias",
    "alibi_bias_bidirectional",
    "alibi_slopes",
    "fire_log",
    "fire_normalized_distance",
    "kerple_log_table",
    "kerple_power_table",
    "sandwich_table",
    "t5_buckets",
]
