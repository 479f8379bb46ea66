"""Transformer-XL relative attention (Dai et al. 2019) at the `attention` site, on the query-chunk
machinery of `extrapos.encodings.contextual` (see there for the notation and the chunk loop):

    score_ij = ((q_i + u)·k_j + (q_i + v)·W_r R_{i-j}) / √d
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from extrapos.core.errors import UserError
from extrapos.encodings.base import Positions
from extrapos.encodings.contextual import _BlockwiseAttention, _positive
from extrapos.encodings.registry import register
from extrapos.kernels.chunks import Probe


def _consecutive(positions: Tensor) -> bool:
    """Whether positions (n,) step by exactly 1 (then distances are a Toeplitz pattern)."""
    return positions.numel() < 2 or bool((positions[1:] - positions[:-1] == 1).all())


def txl_sinusoids(distances: Tensor, dim: int, base: float = 10000.0) -> Tensor:
    """Transformer-XL's relative embeddings R: [sin(k·ω); cos(k·ω)], ω_l = base^(-2l/dim),
    l = 0 .. dim/2 - 1 (all sines first, then all cosines, as in the reference code).

    distances (n,) -> (n, dim) float32. Angles in float64, so large distances keep their digits.
    """
    inv_freq = base ** (
        -torch.arange(0, dim, 2, dtype=torch.float64, device=distances.device) / dim
    )
    angles = distances.double()[:, None] * inv_freq[None, :]
    return torch.cat((angles.sin(), angles.cos()), dim=-1).float()


class _RelativeShift(torch.autograd.Function):
    """The relative shift of Transformer-XL as a view: position (b, h, c, n) contiguous with
    n = t + 1 -> (b, h, c, t), row i starting at column c-1-i (see `chunk_logits`). Those c rows
    of t are one contiguous run of each (c, n) plane, offsets [c-1, c-1+c·t), so the backward
    writes the gradient there and zeroes only the c elements around it; autograd through
    `as_strided` zero-filled the whole plane first (a full extra pass per chunk)."""

    @staticmethod
    def forward(ctx: Any, position: Tensor, t: int) -> Tensor:
        b, h, c, n = position.shape
        if n != t + 1 or not position.is_contiguous():
            raise ValueError("relative shift needs a contiguous (b, h, c, t + 1) tensor")
        ctx.shape = position.shape
        return position.view(b, h, c * n)[..., c - 1 : c - 1 + c * t].view(b, h, c, t)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        b, h, c, n = ctx.shape
        t = n - 1
        out = grad.new_empty(b, h, c * n)
        out[..., : c - 1].zero_()
        out[..., c - 1 + c * t :].zero_()
        out[..., c - 1 : c - 1 + c * t].view(b, h, c, t).copy_(grad)
        return out.view(b, h, c, n), None


#: query rows per block. Measured (benchmarks/train_step.py's bench model, seq 512, 2,048 tokens,
#: fwd+bwd+step vs NoPE, interleaved, 2026-12-03): 128 rows 1.02x (1 thread) and 1.23-1.24x
#: (2 threads) against 64 rows' 1.18x and 1.27-1.33x; 256 rows 1.37x (2 threads). TXL's pair
#: work is a (c, t) gather of one projected table, light enough that fewer Python blocks win.
TXL_CHUNK_ROWS = 128


@register("txl")
class TransformerXL(_BlockwiseAttention):
    """Transformer-XL relative attention (Dai et al. 2019, "Transformer-XL: Attentive Language
    Models Beyond a Fixed-Length Context", arXiv:1901.02860, section 3.3; reference code
    kimiyoung/transformer-xl, `RelPartialLearnableMultiHeadAttn`):

        score_ij = ((q_i + u)·k_j + (q_i + v)·(W_r R_{i-j})) / √d
                 =  (a) content  + (c) global content bias
                  + (b) content-dependent position + (d) global position bias

    R_k the sinusoids of `txl_sinusoids` (D wide) at distance k = pos_i - pos_j >= 0 (causal),
    W_r (h·d × D) per layer, u and v (h, d) per layer and head (the reference's `untie_r`; its
    default shares them across layers). Init as the reference: u, v, W_r ~ N(0, 0.02²).

    The "relative shift": for consecutive positions (the usual case) each chunk computes
    (q + v)·W_r R for the t' + 1 distances its queries need, in descending order, (b, h, c, t'+1),
    and reads it as a strided (b, h, c, t') view (row i starts one column earlier than row
    i - 1), added to the content term by one `baddbmm`; no gather and no scatter in backward.
    Positions with gaps take the span of their distances (or only the distinct ones when the
    span is wide) and gather them by distance. `clamp_len` (the reference's option) caps
    distances: farther keys share R_clamp_len.

    Args:
        d_model: D, the width of R (set by the model; even).
        num_heads: h (set by the model).
        head_dim: d (set by the model).
        num_layers: L (set by the model).
        clamp_len: None, or the largest distance R distinguishes.
        chunk_size: at most this many queries per block.
    Parameters: `u`, `v` (L, h, d); `w_r` (L, h·d, D).
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        head_dim: int,
        num_layers: int = 1,
        clamp_len: int | None = None,
        chunk_size: int = TXL_CHUNK_ROWS,
    ) -> None:
        super().__init__()
        self.d_model = _positive("txl", "d_model", d_model)
        if d_model % 2:
            raise UserError(f"txl: d_model must be even (sin and cos halves), got {d_model}")
        self.num_heads = _positive("txl", "num_heads", num_heads)
        self.head_dim = _positive("txl", "head_dim", head_dim)
        self.num_layers = _positive("txl", "num_layers", num_layers)
        self.clamp_len = None if clamp_len is None else _positive("txl", "clamp_len", clamp_len)
        self.chunk_size = _positive("txl", "chunk_size", chunk_size)
        self.u = nn.Parameter(torch.randn(num_layers, num_heads, head_dim) * 0.02)
        self.v = nn.Parameter(torch.randn(num_layers, num_heads, head_dim) * 0.02)
        self.w_r = nn.Parameter(torch.randn(num_layers, num_heads * head_dim, d_model) * 0.02)
        self._r_table: Tensor | None = None  # R at distances 0 .. n-1 (float32), see _sinusoids
        # during one attend(): (layer, dtype, largest distance, W_r R expanded to (b, h, d, N))
        self._call_relative: tuple[int, torch.dtype, int, Tensor] | None = None

    def _pair_width(self, heads: int) -> int:
        return 4 * heads  # content, gathered position term, logits, weights

    def _sinusoids(self, distances: Tensor) -> Tensor:
        """`txl_sinusoids` at distances (n',) >= 0, rows of a table kept across calls (grown by
        doubling; R depends on nothing learned), so the chunks of a forward share its sin/cos.
        Sparse far distances (positions with wide gaps) are computed directly instead."""
        need = int(distances.max()) + 1
        if need > max(4096, 4 * distances.numel()):
            return txl_sinusoids(distances, self.d_model)
        table = self._r_table
        if table is None or table.device != distances.device or table.shape[0] < need:
            size = max(need, 2 * table.shape[0] if table is not None else 0)
            table = txl_sinusoids(torch.arange(size, device=distances.device), self.d_model)
            self._r_table = table
        return table[distances]

    def _relative(self, distances: Tensor, dtype: torch.dtype, layer: int) -> Tensor:
        """W_r R at the given distances (n',), clamped to [0, clamp_len] -> (h, d, n')."""
        distances = distances.clamp(min=0)
        if self.clamp_len is not None:
            distances = distances.clamp(max=self.clamp_len)
        r = self._sinusoids(distances).to(dtype)  # (n', D)
        r_k = r @ self.w_r[layer].to(dtype).T  # (n', h·d)
        return r_k.view(-1, self.num_heads, self.head_dim).permute(1, 2, 0)

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        positions: Positions,
        layer: int = 0,
        probe: Probe | None = None,
    ) -> Tensor:
        """As the base class; with consecutive positions W_r R is computed once for the call:
        the N = t + 1 distances from the largest, q[-1] - k[0], down, which every chunk's
        t' + 1 descending distances are a contiguous slice of (q consecutive: a chunk ending at
        query `stop` starts s - stop columns in), expanded over the batch once so a chunk's
        slice is a plain (b·h, d, t'+1) bmm operand."""
        if not (_consecutive(positions.q) and _consecutive(positions.k)):
            return super().attend(q, k, v, positions, layer, probe)
        dtype = torch.promote_types(q.dtype, torch.float32)
        top = int(positions.q[-1] - positions.k[0])
        needed = top - torch.arange(k.shape[-2] + 1, device=q.device)
        table = self._relative(needed, dtype, layer)  # (h, d, N)
        table = table.expand(q.shape[0], *table.shape).contiguous()
        self._call_relative = (layer, dtype, top, table)
        try:
            return super().attend(q, k, v, positions, layer, probe)
        finally:
            self._call_relative = None

    def _chunk_relative(self, needed: Tensor, b: int, dtype: torch.dtype, layer: int) -> Tensor:
        """W_r R at a chunk's descending distances `needed` (n,) -> (b, h, d, n): a slice of
        the call's table when attend() made one that holds them, else computed here."""
        call = self._call_relative
        if call is not None and call[0] == layer and call[1] == dtype:
            start = call[2] - int(needed[0])
            table = call[3]
            if 0 <= start and start + needed.shape[0] <= table.shape[-1] and table.shape[0] == b:
                return table[..., start : start + needed.shape[0]]
        return self._relative(needed, dtype, layer)

    def chunk_logits(
        self,
        q: Tensor,
        k: Tensor,
        q_positions: Tensor,
        k_positions: Tensor,
        visible: Tensor,
        layer: int,
    ) -> Tensor:
        b, h, c, d = q.shape
        t = k.shape[-2]
        scale = d**-0.5
        u, v = self.u[layer].to(q.dtype), self.v[layer].to(q.dtype)  # (h, d)
        qu = (q + u[:, None, :]) * scale  # the 1/√d on the (c, d) side, not the (c, t') one
        qv = (q + v[:, None, :]) * scale
        if _consecutive(q_positions) and _consecutive(k_positions):
            # The relative shift as a strided view (as the reference's _rel_shift, without its
            # pad and copy): column m of P holds distance `top - m`, so query i's distance to
            # key j, top - (c-1-i) - j, sits at column (c-1-i) + j, i.e. at flat offset
            # i·(n-1) + j + (c-1) of the (c, n) plane. With n = t'+1 columns the c rows are
            # one contiguous run of the plane (`_RelativeShift`) and every visible pair's
            # column is < n (masked pairs, j > i + t'-c, may read the next row: any finite
            # value, the mask removes them).
            top = int(q_positions[-1] - k_positions[0])  # the chunk's largest distance
            n = t + 1
            needed = top - torch.arange(n, device=q.device)  # descending; the last is < 0
            position = qv @ self._chunk_relative(needed, b, q.dtype, layer)  # (b, h, c, n)
            shifted = _RelativeShift.apply(position, t)
            # content + position in one op: P + (q + u)·kᵀ, all scaled by 1/√d already
            out = torch.baddbmm(
                shifted.reshape(b * h, c, t),
                qu.reshape(b * h, c, d),
                k.reshape(b * h, t, d).transpose(-1, -2),
            )
            return out.view(b, h, c, t)
        # positions with gaps: (q + v)·W_r R for the span of distances, or only the distinct
        # ones when the span is wide, gathered by distance into (b, h, c, t')
        content = qu @ k.transpose(-1, -2)  # (a) + (c): (b, h, c, t')
        distances = (q_positions[:, None] - k_positions[None, :]).clamp(min=0)  # masked -> 0
        if self.clamp_len is not None:
            distances = distances.clamp(max=self.clamp_len)
        low, high = int(distances.min()), int(distances.max())
        if high - low < 2 * distances.shape[-1]:
            needed = torch.arange(low, high + 1, device=q.device)
            index = distances - low
        else:
            needed, index = torch.unique(distances, return_inverse=True)
        position = qv @ self._relative(needed, q.dtype, layer)  # (b) + (d): (b, h, c, n')
        return content + position.gather(-1, index.expand(b, h, c, -1))

    def extra_repr(self) -> str:
        return f"clamp_len={self.clamp_len}, {super().extra_repr()}"


__all__ = ["TransformerXL", "txl_sinusoids"]
