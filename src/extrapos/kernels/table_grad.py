"""Training with a learned distance table (T5, KERPLE) at fused-kernel speed: a custom autograd
function.

    out = softmax(q·kᵀ·scale + B) v,   B[h, i, j] = table[h, pos_i - pos_j] (-inf where j > i)

A bias block that requires grad sends SDPA to its math kernel (5.7–6.1× bias-free fwd+bwd,
MEASUREMENTS.md). Here the forward runs ATen's fused CPU flash kernel per query chunk with the
*detached* block and keeps only the output; the backward recomputes each chunk's probabilities
and takes the standard softmax-attention gradients (FlashAttention-2's backward, Dao 2023,
arXiv:2307.08691, one chunk of queries at a time):

    P = softmax(S),  dV = Pᵀ dO,  dP = dO Vᵀ,  dS = P ∘ (dP - rowsum(dO ∘ O)),
    dQ = dS K · scale,  dK = dSᵀ Q · scale,  d table[h, δ] = Σ_{b, i, j: pos_i - pos_j = δ} dS

P is recomputed by `torch.softmax` rather than FlashAttention's exp(S - lse): one fused pass
with its own vectorised exp, measured 2× faster than `sub_` + `exp_` on a (16, 64, 384) block
at 1 and 2 threads, and equal up to rounding (the log-sum-exp is then not kept at all).

The table's gradient is dS summed along its diagonals: with consecutive positions and the
chunk's queries in reverse order (as in `extrapos.kernels.attention.chunked_bias_attention`),
entry (r', j) of a block reads source[base + r' + j], so the sum over r' + j = x is taken by
copying dS into a skewed zero buffer (row stride c + t') and summing its rows — O(h·c·t')
memory per chunk, O(h·n) for the table's gradient; positions with gaps use a scatter-add over
the distance index.

Chunking (measured at b 4, h 4, n 512, d 32, 2 threads): the forward calls the kernel per
`FORWARD_ROWS` queries, each against the keys it can see (with a mask the kernel cannot skip
masked keys itself); the backward uses chunks small enough that its (b, h, c, t)
intermediates stay in cache (`backward_rows`), with 3-d bmm products whose outputs are fresh
tensors added into dK, dV, dQ (ATen's `baddbmm_` into a slice of a larger buffer loops over the
batch with `addmm_`, and `bmm(out=slice)` runs on one thread: both measured slower). The saved
q and output are in the working (reversed) layout, so the backward flips only dO and dQ — one
(b, h, s, d) tensor more held per layer than saving the inputs would. Exact: the same numbers
as the math path up to float rounding (the tests compare with the dense reference and run
`torch.autograd.gradcheck` in float64).
"""

from __future__ import annotations

import torch
from torch import Tensor

from extrapos.kernels.blocks import bias_block


def _source(table: Tensor, t: int, dtype: torch.dtype) -> Tensor:
    """(h, n + t): the table reversed, then -inf (see `attention.toeplitz_source`)."""
    pad = table.new_full((table.shape[0], t), float("-inf"), dtype=dtype)
    return torch.cat((table.to(dtype).flip(-1), pad), dim=-1)


class _Plan:
    """Per-chunk bias blocks for one call: Toeplitz views of one source, or gathered blocks."""

    def __init__(
        self,
        table: Tensor,
        q_positions: Tensor,
        k_positions: Tensor,
        q_offset: int,
        t: int,
        dtype: torch.dtype,
        toeplitz: bool,
    ) -> None:
        self.n, self.t, self.q_offset, self.dtype = table.shape[-1], t, q_offset, dtype
        self.toeplitz = toeplitz
        self.q_positions, self.k_positions = q_positions, k_positions
        self.table = table
        self.source = _source(table, t, dtype) if toeplitz else None

    def block(self, start: int, stop: int) -> Tensor:
        """(h, c, t') bias of queries start..stop (reversed when Toeplitz), t' = keys seen."""
        seen = self.q_offset + stop
        if self.source is not None:
            src = self.source
            return src.as_strided(
                (src.shape[0], stop - start, seen),
                (src.stride(0), 1, 1),
                src.storage_offset() + self.n - self.q_offset - stop,
            )
        q_index = torch.arange(
            self.q_offset + start, self.q_offset + stop, device=self.table.device
        )
        return bias_block(
            self.table,
            self.q_positions[start:stop],
            self.k_positions[:seen],
            q_index,
            self.dtype,
        )

    def add_grad(self, grad: Tensor, ds: Tensor, start: int, stop: int) -> None:
        """Accumulate the (h, c, t') block gradient ds into the (h, n) table gradient."""
        h, c, seen = ds.shape
        if self.source is not None:
            width = c + seen - 1
            skew = ds.new_zeros(h, c, width)
            skew.as_strided((h, c, seen), (c * width, width + 1, 1)).copy_(ds)
            sums = skew.sum(1)  # sums[x] = Σ_{r' + j = x} ds[r', j]
            base = self.n - self.q_offset - stop  # source index of (r' = 0, j = 0)
            # source index base + x < n is the table's entry n - 1 - (base + x); the rest is -inf
            inside = min(width, self.n - base)
            grad[:, self.n - base - inside : self.n - base] += sums[:, :inside].flip(-1)
            return
        distance = (self.q_positions[start:stop, None] - self.k_positions[None, :seen]).clamp(
            0, self.n - 1
        )
        grad.scatter_add_(1, distance.reshape(1, -1).expand(h, -1), ds.reshape(h, -1))


#: the backward's (b, h, c, t) intermediates are sized to about this many elements (2 MiB of
#: float32): they stay in cache, measured 1.14× bias-free fwd+bwd at c = 64 vs 2.09× at c = 512
#: (b 4, h 4, n 512, d 32, one thread).
BACKWARD_BLOCK_ELEMENTS = 2**19
#: query rows per forward call: the masked fused kernel computes every key it is given, so
#: smaller chunks skip more of the causally masked keys, while each call has a fixed cost
#: (measured fwd at b 4, h 4, n 512, d 32, 2 threads: 64 / 128 / 256 / 512 rows = 5.0 / 4.4 /
#: 4.6 / 5.8 ms)
FORWARD_ROWS = 128
#: fewer query rows than this per backward chunk cost more in per-chunk overhead than they save
BACKWARD_MIN_ROWS = 64


def backward_rows(q_shape: torch.Size, t: int) -> int:
    """Query rows per backward chunk for q of shape (b, h, s, d) against t keys."""
    b, h, s = q_shape[0], q_shape[1], q_shape[2]
    return max(1, min(s, max(BACKWARD_MIN_ROWS, BACKWARD_BLOCK_ELEMENTS // max(1, b * h * t))))


def _rev(x: Tensor, toeplitz: bool) -> Tensor:
    return x.flip(-2) if toeplitz else x


def _chunks(s: int, chunk_size: int, toeplitz: bool):  # noqa: ANN202  (a generator)
    """(start, stop) of each query chunk, and its rows (lo, hi) in the working layout: the same
    when not Toeplitz, the reversed sequence's rows [s - stop, s - start) when Toeplitz."""
    for start in range(0, s, chunk_size):
        stop = min(start + chunk_size, s)
        yield (start, stop, s - stop, s - start) if toeplitz else (start, stop, start, stop)


class TableBiasAttention(torch.autograd.Function):
    """See module docstring. Inputs q (b, h, s, d), k and v (b, h, t, d), table (h, n)."""

    @staticmethod
    def forward(  # noqa: PLR0913
        ctx,  # noqa: ANN001
        q: Tensor,
        k: Tensor,
        v: Tensor,
        table: Tensor,
        q_positions: Tensor,
        k_positions: Tensor,
        q_offset: int,
        chunk_size: int,
        toeplitz: bool,
        bias_dtype: torch.dtype,
    ) -> Tensor:
        s, d = q.shape[-2], q.shape[-1]
        scale = d**-0.5
        plan = _Plan(
            table.detach(), q_positions, k_positions, q_offset, k.shape[-2], bias_dtype, toeplitz
        )
        flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        # Toeplitz: work on the queries reversed once; chunk [start, stop) of the sequence is
        # rows [s - stop, s - start) of the reversed queries, themselves in reverse order. The
        # backward works in the same layout, so the reversed q and out are what is saved.
        qr = _rev(q, toeplitz)
        out = q.new_empty(q.shape)
        # the fused kernel with a mask cannot skip the masked (future) keys; chunks of
        # FORWARD_ROWS rows only see the keys up to their last query
        for start, stop, lo, hi in _chunks(s, min(chunk_size, FORWARD_ROWS), toeplitz):
            seen = q_offset + stop
            out[..., lo:hi, :] = flash(
                qr[..., lo:hi, :],
                k[..., :seen, :],
                v[..., :seen, :],
                0.0,
                False,
                attn_mask=plan.block(start, stop)[None],
                scale=scale,
            )[0]
        ctx.save_for_backward(qr, k, v, table, out)
        ctx.plan, ctx.q_offset, ctx.toeplitz = plan, q_offset, toeplitz
        return _rev(out, toeplitz)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # noqa: ANN001, ANN205
        qr, k, v, table, out = ctx.saved_tensors  # q and out in the working layout
        plan: _Plan = ctx.plan
        toeplitz, q_offset = ctx.toeplitz, ctx.q_offset
        (b, h, s, d), t = qr.shape, k.shape[-2]
        scale = d**-0.5
        work = torch.float64 if qr.dtype == torch.float64 else torch.float32
        # (b·h, rows, d): 3-d operands for bmm (baddbmm_ into a slice loops over the batch)
        qs = (qr.to(work) * scale).reshape(b * h, s, d)
        kw = k.to(work).reshape(b * h, t, d)
        vw = v.to(work).reshape(b * h, t, d)
        gw = _rev(grad_out, toeplitz).to(work).reshape(b * h, s, d)
        delta = (gw * out.to(work).reshape(b * h, s, d)).sum(-1, keepdim=True)  # rowsum(dO∘O)
        dq = torch.empty_like(qs)
        dk = torch.zeros_like(kw)
        dv = torch.zeros_like(vw)
        dtable = torch.zeros(table.shape, dtype=work, device=table.device)
        for start, stop, lo, hi in _chunks(s, backward_rows(qr.shape, t), toeplitz):
            seen = q_offset + stop
            qc, gc = qs[:, lo:hi], gw[:, lo:hi]
            kc, vc = kw[:, :seen], vw[:, :seen]
            scores = torch.bmm(qc, kc.transpose(1, 2)).view(b, h, hi - lo, seen)
            scores += plan.block(start, stop).to(work)
            # P, recomputed: softmax (one fused pass, its own vectorised exp) measured 2x
            # faster than exp(S - lse) here, and equal to it up to rounding
            p = torch.softmax(scores.view(b * h, hi - lo, seen), dim=-1)
            dv[:, :seen] += torch.bmm(p.transpose(1, 2), gc)
            dp = torch.bmm(gc, vc.transpose(1, 2))
            ds = p.mul_(dp.sub_(delta[:, lo:hi]))  # dS, in place of P
            dq[:, lo:hi] = torch.bmm(ds, kc)  # (bmm's out= into a slice runs on one thread)
            dk[:, :seen] += torch.bmm(ds.transpose(1, 2), qc)
            plan.add_grad(dtable, ds.view(b, h, hi - lo, seen).sum(0), start, stop)
        dq = _rev(dq.mul_(scale).view(b, h, s, d), toeplitz)  # dQ = dS·k·scale; dK = dSᵀ·q·scale
        return (
            dq.to(qr.dtype),
            dk.view(b, h, t, d).to(k.dtype),
            dv.view(b, h, t, d).to(v.dtype),
            dtable.to(table.dtype),
            None,
            None,
            None,
            None,
            None,
            None,
        )


def table_bias_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    table: Tensor,
    q_positions: Tensor,
    k_positions: Tensor,
    q_offset: int,
    chunk_size: int,
    toeplitz: bool,
    bias_dtype: torch.dtype,
) -> Tensor:
    """Causal distance-bias attention differentiable in q, k, v and `table` (module docstring);
    CPU. `toeplitz`: positions are consecutive and the table covers q_offset + s distances."""
    return TableBiasAttention.apply(
        q, k, v, table, q_positions, k_positions, q_offset, chunk_size, toeplitz, bias_dtype
    )
