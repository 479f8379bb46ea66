"""Causal attention with an optional distance-only score bias, never materialized as (h, n, n).

    out = softmax(q·kᵀ/√d + B + M) v,   B[h, i, j] = table[h, pos_i - pos_j],   M = causal mask

Shapes: q (b, h, s, d); k, v (b, h, t, d) with t = q_offset + s (keys already cached come
first); table (h, n) over distances 0 .. n-1. Causality is by sequence index: query i (index
q_offset + i) sees keys j <= q_offset + i. The bias is looked up by *position* difference, so
explicit positions (offsets, randomized positions) work through the same path.

Paths (measured on 2 CPU cores in ../shared/MEASUREMENTS.md and benchmarks/RESULTS.md):

- `sdpa`: no bias; `F.scaled_dot_product_attention` with `is_causal` (its flash kernel); on
  CPU, s == t calls of 321-512 queries run as two query halves, because the kernel skips masked
  keys only by whole tiles of 512 (`dispatch.split_rows`; the chunked path uses the same halves).
- `linear`: a table that is exactly -m_h·k (ALiBi) folded into q and k as extra head-dim
  columns: bias-free SDPA, no mask (`extrapos.kernels.linear_bias`; float rounding only).
- `chunked`: queries in chunks of `chunk_size`; each chunk takes only its own (h, c, t) bias
  block from the table (a zero-copy strided view when positions are consecutive) and calls
  SDPA. Pure PyTorch, differentiable (gradients reach the table), O(h·c·t) extra memory.
- `flex`: FlexAttention with the table read inside `score_mod` and a causal `BlockMask`: O(h·n)
  extra memory. On CPU (torch 2.13) it has a compiled forward but no backward, and compiling a
  new shape costs ~11 s.

`auto` (the default) follows `extrapos.kernels.dispatch`: `linear` for ALiBi-like tables,
and between `flex` and `chunked` for other tables in CPU inference, whichever a calibration
measured faster on this machine (run once, cached); `chunked` for CPU training; `flex` on CUDA.
`backend` selects a path explicitly ("auto" picks as above).
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from extrapos.kernels import dispatch
from extrapos.kernels.blocks import additive_mask, bias_block, bias_dtype, is_range
from extrapos.kernels.chunks import QueryChunk, blockwise_attention
from extrapos.kernels.dispatch import flex_available
from extrapos.kernels.flex import (
    disable_flex,
    flex_bias_attention,
    flex_failed,
    flex_failures,
    flex_key,
)
from extrapos.kernels.linear_bias import (
    LINEAR_MIN_QUERIES,
    SINGLE_CALL_MAX,
    linear_bias_attention,
    linear_slopes,
)
from extrapos.kernels.linear_bias import supports as linear_supports
from extrapos.kernels.table_grad import table_bias_attention

Backend = Literal["auto", "sdpa", "chunked", "flex", "linear"]
BACKENDS: tuple[str, ...] = ("auto", "sdpa", "chunked", "flex", "linear")

DEFAULT_CHUNK_SIZE = 512

_default_backend: Backend = "auto"


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        from extrapos.core.errors import UserError

        raise UserError(f"unknown attention backend '{backend}'; known: {', '.join(BACKENDS)}")


@contextlib.contextmanager
def use_backend(backend: Backend) -> Iterator[None]:
    """Within the block, attention with a bias uses `backend` unless a call names its own."""
    global _default_backend
    _check_backend(backend)
    previous, _default_backend = _default_backend, backend
    try:
        yield
    finally:
        _default_backend = previous


def causal_mask(s: int, t: int, q_offset: int, device: torch.device) -> Tensor:
    """(s, t) bool, True where query i may attend key j: j <= q_offset + i."""
    return (
        torch.arange(t, device=device)[None, :]
        <= (torch.arange(q_offset, q_offset + s, device=device)[:, None])
    )


def causal_sdpa(q: Tensor, k: Tensor, v: Tensor, q_offset: int = 0) -> Tensor:
    """Bias-free causal attention through SDPA; q (b, h, s, d), k/v (b, h, t, d). Calls of
    `dispatch.SPLIT_MIN` < s <= `dispatch.CPU_KEY_TILE` on CPU run as two query halves (the fused
    kernel computes all pairs of one key tile): the same numbers up to float rounding."""
    s, t = q.shape[-2], k.shape[-2]
    half = dispatch.split_rows(s, t, q.device)
    if half is not None:
        first = F.scaled_dot_product_attention(
            q[..., :half, :], k[..., :half, :], v[..., :half, :], is_causal=True
        )
        key = (s, half, q.dtype, q.device, torch.is_inference_mode_enabled())
        mask = _split_mask_memo.get((), key, lambda: _split_mask(s, half, q.dtype, q.device))
        second = F.scaled_dot_product_attention(q[..., half:, :], k, v, attn_mask=mask)
        return torch.cat((first, second), dim=-2)
    if s == t:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if s == 1:  # one new token sees every cached key
        return F.scaled_dot_product_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(s, t, q_offset, q.device))


def _split_mask(s: int, half: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(s - half, s) additive causal mask of queries half .. s - 1 over keys 0 .. s - 1."""
    return additive_mask(causal_mask(s - half, s, half, device), dtype)


def toeplitz_source(table: Tensor, t: int) -> Tensor:
    """(h, n + t) source of Toeplitz bias blocks: the table reversed, then t entries of -inf.

    With consecutive positions and the *queries of a chunk in reverse order*, row r' of a block
    (the query at distance D from key 0) is source[n - 1 - D + j] for keys j = 0, 1, …:
    table[D - j] for j <= D, and -inf past D — exactly the causal mask. Each row starts one
    entry after the previous one, so a block is a zero-copy strided view with strides
    (n + t, 1, 1); no element is gathered, and only the chunk's queries (not the keys, which
    may be a long cache) are reordered.
    """
    if t == 0:  # one query per call (decoding): its block never reaches past the table
        return table.flip(-1).contiguous()  # blocks are strided views of a row-major source
    pad = table.new_full((table.shape[0], t), float("-inf"))
    return torch.cat((table.flip(-1), pad), dim=-1)


def _version(x: Tensor) -> int:
    """x's in-place version counter; -1 for inference tensors, which have none (they are only
    created and consumed inside one `torch.inference_mode` forward by the model)."""
    return -1 if x.is_inference() else x._version


class _PerForward:
    """Remembers one value computed from given tensors while those very tensor objects live
    unchanged (same object, same in-place version): every layer of one forward passes the same
    positions and table, so per-call checks and the Toeplitz source are computed once per
    forward, not once per layer (decoding: ~10 small ops per layer per token)."""

    def __init__(self) -> None:
        self._refs: tuple = ()
        self._key: tuple = ()
        self._value: object = None

    def get(self, tensors: tuple[Tensor, ...], key: tuple, compute):  # noqa: ANN001, ANN204
        alive = len(self._refs) == len(tensors) and all(
            ref() is x for ref, x in zip(self._refs, tensors, strict=True)
        )
        full_key = (*key, *(_version(x) for x in tensors))
        if alive and self._key == full_key:
            return self._value
        value = compute()
        self._refs = tuple(weakref.ref(x) for x in tensors)
        self._key, self._value = full_key, value
        return value


_toeplitz_memo = _PerForward()
_source_memo = _PerForward()
_slopes_memo = _PerForward()
_decode_row_memo = _PerForward()
_split_mask_memo = _PerForward()  # keyed by shape only: one mask serves every layer and step


def is_toeplitz(q_positions: Tensor, k_positions: Tensor, q_offset: int, n: int) -> bool:
    """Whether bias blocks are strided views of one source: consecutive positions, queries
    q_offset keys after the first key, and a table covering every distance (n >= t)."""

    def compute() -> bool:
        return (
            n >= q_offset + q_positions.shape[0]
            and is_range(q_positions)
            and is_range(k_positions)
            and int(q_positions[0]) - int(k_positions[0]) == q_offset
        )

    return _toeplitz_memo.get((q_positions, k_positions), (q_offset, n), compute)


def decode_bias_row(
    table: Tensor, q_positions: Tensor, k_positions: Tensor, q_offset: int, q: Tensor
) -> Tensor:
    """(1, h, 1, t) contiguous additive bias of one query (sequence index q_offset) over t keys:
    what `chunked_bias_attention` builds for s == 1, made once per decoding step and shared by
    every layer (the per-layer Toeplitz view, checks and dispatch cost more than the SDPA call's
    difference from bias-free at 4k keys, measured).

    With consecutive positions (`is_toeplitz`) the query is at distance t - 1 - j from key j,
    every key visible: the row is the table's first t entries reversed, one copy (a step's row
    at 4k keys: 155-175 -> ~25 µs against the general gather of `bias_block`, measured)."""
    t = k_positions.shape[0]
    if q_offset == t - 1 and is_toeplitz(q_positions, k_positions, q_offset, table.shape[-1]):
        row = table[:, :t].flip(-1).to(bias_dtype(q))[None, :, None, :]
    else:
        index = torch.tensor([q_offset], device=table.device)
        row = bias_block(table, q_positions, k_positions, index, bias_dtype(q))[None]
    return row.contiguous()  # a column-major table (FIRE's) gives a strided one


def chunked_bias_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    table: Tensor,
    q_positions: Tensor,
    k_positions: Tensor,
    q_offset: int = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Tensor:
    """Distance-bias attention by query chunks: each chunk builds only its (h, c, t') block,
    t' = the keys it can see. Differentiable in q, k, v and the table."""
    s, n = q.shape[-2], table.shape[-1]
    toeplitz = is_toeplitz(q_positions, k_positions, q_offset, n)
    # a single query's block ends at its own key: no -inf padding needed (decoding)
    t = k.shape[-2]
    pad = t if s > 1 else 0
    source = None
    if toeplitz and table.requires_grad and torch.is_grad_enabled():
        source = toeplitz_source(table.to(bias_dtype(q)), pad)
    elif toeplitz:
        dtype = bias_dtype(q)
        source = _source_memo.get(
            (table,),
            (t, pad, n, dtype, table.device),
            lambda: toeplitz_source(table.to(dtype), pad),
        )
    outs = []
    for start in range(0, s, chunk_size):
        stop = min(start + chunk_size, s)
        seen = q_offset + stop  # keys visible to the chunk's last query
        keys, values = k[..., :seen, :], v[..., :seen, :]
        if source is not None:
            # row r' is query stop - 1 - r', at distance q_offset + stop - 1 - r' from key 0
            block = source.as_strided(
                (source.shape[0], stop - start, seen),
                (source.stride(0), 1, 1),
                source.storage_offset() + n - q_offset - stop,
            )
            # a 4-D mask keeps SDPA on its fast CPU kernel (a 3-D one is 2.5x slower, measured)
            rows = q[..., start:stop, :]
            if stop - start == 1:  # one row: reversing is the identity
                outs.append(
                    F.scaled_dot_product_attention(rows, keys, values, attn_mask=block[None])
                )
                continue
            out = F.scaled_dot_product_attention(rows.flip(-2), keys, values, attn_mask=block[None])
            outs.append(out.flip(-2))
            continue
        q_index = torch.arange(q_offset + start, q_offset + stop, device=q.device)
        block = bias_block(
            table, q_positions[start:stop], k_positions[:seen], q_index, bias_dtype(q)
        )
        outs.append(
            F.scaled_dot_product_attention(
                q[..., start:stop, :], keys, values, attn_mask=block[None]
            )
        )
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-2)


def bidirectional_bias_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    signed_table: Tensor,
    q_positions: Tensor,
    k_positions: Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    key_mask: Tensor | None = None,
) -> Tensor:
    """Encoder (non-causal) attention with a signed distance bias: every query sees every key,
    B[h, i, j] = signed_table[h, n - 1 + pos_i - pos_j] (see `signed_distance_bias`). Query
    chunks each gather only their own (h, c, t) block; differentiable in q, k, v and the table.
    key_mask (b, t) bool: False keys (padding) get -inf."""
    n = (signed_table.shape[-1] + 1) // 2

    def bias(chunk: QueryChunk) -> Tensor:  # (1, h, c, t), or (b, h, c, t) with a key mask
        offsets = q_positions[chunk.start : chunk.stop, None] - k_positions[None, :]
        block = signed_table[:, offsets.clamp(1 - n, n - 1) + n - 1].to(bias_dtype(q))[None]
        if key_mask is not None:
            block = block.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        return block

    return blockwise_attention(q, k, v, rows=chunk_size, bias=bias, causal=False)


def pick_backend(
    backend: Backend,
    needs_grad: bool,
    t: int,
    device: torch.device,
    *,
    s: int | None = None,
    linear: bool = False,
    linear_ok: bool = False,
    flex: tuple | None = None,
) -> str:
    """Resolve `auto` for a biased causal call (`extrapos.kernels.dispatch.decide`): s queries
    (default t) against t keys; `linear` when the table is exactly -m·k (ALiBi) and `linear_ok`
    when the fold supports the call; `flex`: the call's `flex_key` (flex is not chosen for a
    key it failed to compile for)."""
    if backend != "auto":
        return backend
    return dispatch.decide(
        needs_grad=needs_grad,
        s=t if s is None else s,
        t=t,
        device=device,
        linear=linear,
        linear_ok=linear_ok,
        flex_ok=dispatch.flex_available(device) and not flex_failed(flex),
    ).path


def _linear_ok(q: Tensor, needs_grad: bool, s: int, t: int, span: int) -> bool:
    """Whether the linear fold supports this call (see `extrapos.kernels.linear_bias`); span =
    the largest minus the smallest key position."""
    if not linear_supports(q) or (q.dtype == torch.bfloat16 and span >= 65536):
        return False
    if needs_grad:
        return s == t and s <= SINGLE_CALL_MAX
    return True


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    bias_table: Tensor | None = None,
    q_positions: Tensor | None = None,
    k_positions: Tensor | None = None,
    q_offset: int = 0,
    backend: Backend | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    causal: bool = True,
    key_mask: Tensor | None = None,
) -> Tensor:
    """Causal attention, with a distance-bias table when given (see module docstring).

    `causal=False` is encoder attention: every query sees every key, and `bias_table` is a
    signed (h, 2n - 1) table (`PositionalEncoding.signed_distance_bias`); `key_mask` (b, t) bool
    marks the real keys of a padded batch (False: padding, never attended). Encoder
    self-attention and the encoder-decoder's cross-attention (no bias) use it.

    q (b, h, s, d); k, v (b, h, t, d), t = q_offset + s; bias_table (h, n) with n > the largest
    position difference; q_positions (s,), k_positions (t,) default to the sequence indices.
    Returns (b, h, s, d).
    """
    if backend is not None:
        _check_backend(backend)
    if not causal:
        if bias_table is None:
            mask = None if key_mask is None else key_mask[:, None, None, :]
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        s, t = q.shape[-2], k.shape[-2]
        q_positions = torch.arange(s, device=q.device) if q_positions is None else q_positions
        k_positions = torch.arange(t, device=q.device) if k_positions is None else k_positions
        return bidirectional_bias_attention(
            q, k, v, bias_table, q_positions, k_positions, chunk_size, key_mask
        )
    if key_mask is not None:
        raise ValueError("key_mask is for non-causal attention (right padding needs no mask)")
    if bias_table is None:
        return causal_sdpa(q, k, v, q_offset)
    s, t = q.shape[-2], k.shape[-2]
    if q_positions is None:
        q_positions = torch.arange(q_offset, q_offset + s, device=q.device)
    if k_positions is None:
        k_positions = torch.arange(t, device=q.device)
    needs_grad = torch.is_grad_enabled() and (
        q.requires_grad or k.requires_grad or v.requires_grad or bias_table.requires_grad
    )
    requested = backend or _default_backend
    if s == 1 and not needs_grad and q.device.type == "cpu" and requested in ("auto", "chunked"):
        # decoding: one query per call; every layer of the step shares its (1, h, 1, t) row
        dispatch.record_taken("chunked")
        row = _decode_row_memo.get(
            (bias_table, q_positions, k_positions),
            (q_offset, t, q.dtype),
            lambda: decode_bias_row(bias_table, q_positions, k_positions, q_offset, q),
        )
        return F.scaled_dot_product_attention(q, k, v, attn_mask=row)
    slopes = None
    if requested == "linear" or (requested == "auto" and s >= LINEAR_MIN_QUERIES):
        slopes = _slopes_memo.get((bias_table,), (), lambda: linear_slopes(bias_table))
    span = int(k_positions[-1] - k_positions[0]) if slopes is not None else 0
    # flex on CPU serves only s == t (see below); decoding steps skip building the key
    maybe_flex = requested not in ("chunked", "linear") and (s == t or q.device.type != "cpu")
    key = flex_key(q, k, bias_table, q_positions, k_positions) if maybe_flex else None
    chosen = pick_backend(
        requested,
        needs_grad,
        t,
        q.device,
        s=s,
        linear=slopes is not None,
        linear_ok=slopes is not None and _linear_ok(q, needs_grad, s, t, span),
        flex=key,
    )
    if chosen == "linear":
        if slopes is None or not _linear_ok(q, needs_grad, s, t, span):
            raise ValueError(
                "backend 'linear' needs an exactly linear table (ALiBi), a CPU float32/float64/"
                f"bf16 input and, with gradients, no cache offset and <= {SINGLE_CALL_MAX} "
                "queries; use 'auto' or 'chunked'"
            )
        dispatch.record_taken("linear")
        return linear_bias_attention(q, k, v, slopes, q_positions, k_positions, q_offset)
    if chosen == "flex":
        if needs_grad and q.device.type == "cpu":
            warnings.warn(
                "FlexAttention has no CPU backward in this torch version; using the chunked path",
                stacklevel=2,
            )
        elif (s != t or bias_table.shape[-1] != t) and q.device.type == "cpu":
            # Queries against a longer cache (decoding): on CPU, inductor (torch 2.13) emits C++
            # that does not compile for Q_LEN != KV_LEN and then fails later shapes too; such
            # calls are small (s new queries), so the chunked path costs O(h·s·t) only.
            # The same bug hits a table whose length n differs from KV_LEN (positions with gaps,
            # n > t): any size other than the one shared symbol breaks the generated C++.
            pass
        elif not flex_failed(key):
            try:
                out = flex_bias_attention(q, k, v, bias_table, q_positions, k_positions, q_offset)
                dispatch.record_taken("flex")
                return out
            except Exception as exc:  # inductor's CPU codegen fails on some shapes (torch 2.13)
                disable_flex(key, exc)
    if chosen == "sdpa":
        raise ValueError("backend 'sdpa' cannot apply a score bias; use 'chunked' or 'flex'")
    if bias_table.requires_grad and needs_grad and q.device.type == "cpu":
        # a learned table: fused forward, recomputing backward (extrapos.kernels.table_grad)
        dispatch.record_taken("chunked-table-grad")
        toeplitz = is_toeplitz(q_positions, k_positions, q_offset, bias_table.shape[-1])
        return table_bias_attention(
            q, k, v, bias_table, q_positions, k_positions, q_offset, chunk_size, toeplitz,
            bias_dtype(q),
        )  # fmt: skip
    dispatch.record_taken("chunked")
    half = dispatch.split_rows(s, t, q.device)
    if half is not None:
        chunk_size = min(chunk_size, half)
    return chunked_bias_attention(
        q, k, v, bias_table, q_positions, k_positions, q_offset, chunk_size
    )


dispatch.register_paths(chunked=chunked_bias_attention, flex=flex_bias_attention)

__all__ = [
    "BACKENDS",
    "attention",
    "bias_block",
    "bias_dtype",
    "causal_sdpa",
    "chunked_bias_attention",
    "flex_available",
    "flex_bias_attention",
    "flex_failures",
    "flex_key",
    "is_range",
    "pick_backend",
    "use_backend",
]
