"""Causal attention with an optional distance-only score bias, never materialized as (h, n, n).

    out = softmax(q·kᵀ/√d + B + M) v,   B[h, i, j] = table[h, pos_i - pos_j],   M = causal mask

Shapes: q (b, h, s, d); k, v (b, h, t, d) with t = q_offset + s (keys already cached come
first); table (h, n) over distances 0 .. n-1. Causality is by sequence index: query i (index
q_offset + i) sees keys j <= q_offset + i. The bias is looked up by *position* difference, so
explicit positions (offsets, randomized positions) work through the same path.

Paths (measured on 2 CPU cores in ../shared/MEASUREMENTS.md and benchmarks/RESULTS.md):

- `sdpa`: no bias; `F.scaled_dot_product_attention` with `is_causal` (its flash kernel).
- `chunked`: queries in chunks of `chunk_size`; each chunk gathers only its own (h, c, t) bias
  block from the table and calls SDPA. Pure PyTorch, differentiable (gradients reach the table
  through the gather), O(h·c·t) extra memory.
- `flex`: FlexAttention with the table read inside `score_mod` and a causal `BlockMask`: O(h·n)
  extra memory. On CPU (torch 2.13) it has a compiled forward but no backward, and compiling a new
  shape costs ~11 s, so `auto` uses it on CPU only for inference at t >= `FLEX_MIN_LEN` and
  without a cache offset (s == t; see `attention`); on CUDA it is used for every bias.

`backend` selects a path explicitly ("auto" picks as above).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Backend = Literal["auto", "sdpa", "chunked", "flex"]
BACKENDS: tuple[str, ...] = ("auto", "sdpa", "chunked", "flex")

#: on CPU, `auto` uses FlexAttention for inference from this many keys on (compile cost ~11 s).
FLEX_MIN_LEN = 4096
DEFAULT_CHUNK_SIZE = 512

_default_backend: Backend = "auto"
_flex_failed = False  # set when FlexAttention failed to compile once: chunked from then on


def _disable_flex(exc: BaseException) -> None:
    """FlexAttention compiles through inductor; on CPU (torch 2.13) its C++ codegen fails for
    some shapes (e.g. `cur_kvSplitSize7 was not declared`). Fall back to the exact chunked path
    for the rest of the process, and say so once."""
    global _flex_failed
    _flex_failed = True
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    warnings.warn(
        f"FlexAttention failed to compile ({type(exc).__name__}: {first_line[:200]}); using the "
        f"chunked path from now on (same numbers, O(h·chunk·n) memory)",
        stacklevel=3,
    )


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
    """Bias-free causal attention through SDPA; q (b, h, s, d), k/v (b, h, t, d)."""
    s, t = q.shape[-2], k.shape[-2]
    if s == t:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if s == 1:  # one new token sees every cached key
        return F.scaled_dot_product_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(s, t, q_offset, q.device))


def bias_dtype(q: Tensor) -> torch.dtype:
    """The dtype an additive bias is handed to SDPA in: at least float32 on CPU, whose SDPA kernels
    add a float32 mask to bf16/fp16 scores in float32 (a bf16 ALiBi bias of -300 is off by up to 1 in
    the logits; measured 100x the output error of a float32 one); the query's dtype elsewhere,
    where fused kernels need matching dtypes."""
    if q.device.type != "cpu":
        return q.dtype
    return torch.promote_types(q.dtype, torch.float32)  # never mix float64 q with float32


def bias_block(
    table: Tensor, q_positions: Tensor, k_positions: Tensor, q_index: Tensor, dtype: torch.dtype
) -> Tensor:
    """The additive (h, c, t) block for queries at positions q_positions (c,) with sequence
    indices q_index (c,) against keys at k_positions (t,): table bias plus the causal -inf."""
    n = table.shape[-1]
    distances = (q_positions[:, None] - k_positions[None, :]).clamp(0, n - 1)
    block = table[:, distances].to(dtype)
    visible = torch.arange(k_positions.shape[0], device=table.device)[None, :] <= q_index[:, None]
    return block.masked_fill(~visible, float("-inf"))


def is_range(positions: Tensor) -> bool:
    """Whether positions (s,) are consecutive integers p0, p0 + 1, …"""
    s = positions.shape[0]
    if s == 0:
        return True
    start = int(positions[0])
    return torch.equal(positions, torch.arange(start, start + s, device=positions.device))


def toeplitz_source(table: Tensor, t: int) -> Tensor:
    """(h, t + n) source of Toeplitz bias blocks: t entries of -inf, then the table.

    With consecutive positions and the *keys in reverse order*, entry j' of block row i (query
    at distance D from key 0) is source[D + t - seen + 1 + j'] for the `seen` keys: table[D - j]
    for key j = seen - 1 - j', and -inf where D - j < 0 — exactly the causal mask. Every row
    starts one entry after the previous one, so a block is a zero-copy strided view with strides
    (t + n, 1, 1); no element is gathered.
    """
    pad = table.new_full((table.shape[0], t), float("-inf"))
    return torch.cat((pad, table), dim=-1)


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
    toeplitz = (
        n >= q_offset + s  # the table covers every distance the view will read
        and is_range(q_positions)
        and is_range(k_positions)
        and int(q_positions[0]) - int(k_positions[0]) == q_offset
    )
    t = k.shape[-2]
    source = toeplitz_source(table.to(bias_dtype(q)), t) if toeplitz else None
    outs = []
    for start in range(0, s, chunk_size):
        stop = min(start + chunk_size, s)
        seen = q_offset + stop  # keys visible to the chunk's last query
        if source is not None:
            # query i is at distance q_offset + i from key 0; keys are fed in reverse order
            block = source.as_strided(
                (source.shape[0], stop - start, seen),
                (source.stride(0), 1, 1),
                source.storage_offset() + q_offset + start + t - seen + 1,
            )
            keys, values = k[..., :seen, :].flip(-2), v[..., :seen, :].flip(-2)
        else:
            q_index = torch.arange(q_offset + start, q_offset + stop, device=q.device)
            block = bias_block(
                table, q_positions[start:stop], k_positions[:seen], q_index, bias_dtype(q)
            )
            keys, values = k[..., :seen, :], v[..., :seen, :]
        # a 4-D mask keeps SDPA on its fast CPU kernel (a 3-D one is 2.5x slower, measured)
        outs.append(
            F.scaled_dot_product_attention(
                q[..., start:stop, :], keys, values, attn_mask=block[None]
            )
        )
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-2)


@functools.cache
def _compiled_flex():  # noqa: ANN202  (a compiled callable)
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True)


def bidirectional_bias_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    signed_table: Tensor,
    q_positions: Tensor,
    k_positions: Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Tensor:
    """Encoder (non-causal) attention with a signed distance bias: every query sees every key,
    B[h, i, j] = signed_table[h, n - 1 + pos_i - pos_j] (see `signed_distance_bias`). Query
    chunks each gather only their own (h, c, t) block; differentiable in q, k, v and the table."""
    n = (signed_table.shape[-1] + 1) // 2
    outs = []
    for start in range(0, q.shape[-2], chunk_size):
        stop = min(start + chunk_size, q.shape[-2])
        offsets = (q_positions[start:stop, None] - k_positions[None, :]).clamp(1 - n, n - 1)
        block = signed_table[:, offsets + n - 1].to(bias_dtype(q))  # (h, c, t)
        outs.append(
            F.scaled_dot_product_attention(q[..., start:stop, :], k, v, attn_mask=block[None])
        )
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-2)


@functools.lru_cache(maxsize=32)
def causal_block_mask(s: int, t: int, q_offset: int, device: str):  # noqa: ANN201
    """FlexAttention's causal `BlockMask` (key j visible to query i iff j <= q_offset + i),
    cached per shape: building one costs 0.065 s at n = 4096 (~1 s at 16k) on CPU, more than
    half of a 4k attention call."""
    from torch.nn.attention.flex_attention import create_block_mask

    # a tensor, not a captured Python int: captured ints miscompile on CPU (torch 2.13)
    offset = torch.tensor(q_offset, device=device)

    def mask_mod(b, h, q_idx, kv_idx):  # noqa: ANN001, ANN202  (flex's signature)
        return kv_idx <= q_idx + offset

    return create_block_mask(mask_mod, None, None, s, t, device=device)


def flex_bias_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    table: Tensor,
    q_positions: Tensor,
    k_positions: Tensor,
    q_offset: int = 0,
) -> Tensor:
    """Distance-bias attention with FlexAttention: the (h, n) table is read inside `score_mod`,
    causality is a `BlockMask` (fully masked blocks are skipped). O(h·n) extra memory."""
    s, t = q.shape[-2], k.shape[-2]
    table = table.to(torch.float32)
    # an upper clamp on a captured int miscompiles on CPU (torch 2.13, dynamic=True); the table
    # covers every unmasked distance, and masked ones are clamped to 0 below.
    if is_range(q_positions) and is_range(k_positions):
        # consecutive positions: the distance is an index difference, one gather (the table)
        shift = (q_positions[0] - k_positions[0]).to(q.device)

        def score_mod(score, b, h, q_idx, kv_idx):  # noqa: ANN001, ANN202  (flex's signature)
            return score + table[h, (q_idx - kv_idx + shift).clamp(min=0)]

    else:

        def score_mod(score, b, h, q_idx, kv_idx):  # noqa: ANN001, ANN202
            distance = (q_positions[q_idx] - k_positions[kv_idx]).clamp(min=0)
            return score + table[h, distance]

    block_mask = causal_block_mask(s, t, q_offset, str(q.device))
    return _compiled_flex()(q, k, v, score_mod=score_mod, block_mask=block_mask)


def flex_available(device: torch.device) -> bool:
    """Whether FlexAttention can run here (it needs torch.compile: a C++ compiler on CPU)."""
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return False
    return device.type in ("cpu", "cuda")


def pick_backend(backend: Backend, needs_grad: bool, t: int, device: torch.device) -> str:
    """Resolve `auto` for a biased attention call (see module docstring)."""
    if backend != "auto":
        return backend
    if not flex_available(device):
        return "chunked"
    if device.type == "cuda":
        return "flex"
    return "flex" if (not needs_grad and t >= FLEX_MIN_LEN) else "chunked"


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
) -> Tensor:
    """Causal attention, with a distance-bias table when given (see module docstring).

    `causal=False` is encoder attention: every query sees every key, and `bias_table` is a
    signed (h, 2n - 1) table (`PositionalEncoding.signed_distance_bias`).

    q (b, h, s, d); k, v (b, h, t, d), t = q_offset + s; bias_table (h, n) with n > the largest
    position difference; q_positions (s,), k_positions (t,) default to the sequence indices.
    Returns (b, h, s, d).
    """
    if backend is not None:
        _check_backend(backend)
    if not causal:
        if bias_table is None:
            return F.scaled_dot_product_attention(q, k, v)
        s, t = q.shape[-2], k.shape[-2]
        q_positions = torch.arange(s, device=q.device) if q_positions is None else q_positions
        k_positions = torch.arange(t, device=q.device) if k_positions is None else k_positions
        return bidirectional_bias_attention(
            q, k, v, bias_table, q_positions, k_positions, chunk_size
        )
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
    chosen = pick_backend(backend or _default_backend, needs_grad, t, q.device)
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
        elif not _flex_failed:
            try:
                return flex_bias_attention(q, k, v, bias_table, q_positions, k_positions, q_offset)
            except Exception as exc:  # inductor's CPU codegen fails on some shapes (torch 2.13)
                _disable_flex(exc)
    if chosen == "sdpa":
        raise ValueError("backend 'sdpa' cannot apply a score bias; use 'chunked' or 'flex'")
    return chunked_bias_attention(
        q, k, v, bias_table, q_positions, k_positions, q_offset, chunk_size
    )


def two_branch_attention(
    q_near: Tensor,
    k_near: Tensor,
    q_far: Tensor,
    k_far: Tensor,
    v: Tensor,
    q_positions: Tensor,
    k_positions: Tensor,
    window: int,
    q_offset: int = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Tensor:
    """Causal attention whose score for a pair depends on its distance d = pos_i - pos_j:
    q_near·k_near for d < window, q_far·k_far beyond (ReRoPE, Self-Extend, STRING: two
    rotations of the same q/k). q_* (b, h, s, d); k_*, v (b, h, t, d). Scores are built per
    query chunk, O(b·h·c·t) memory; differentiable."""
    s, scale = q_near.shape[-2], q_near.shape[-1] ** -0.5
    outs = []
    for start in range(0, s, chunk_size):
        stop = min(start + chunk_size, s)
        seen = q_offset + stop
        near = q_near[..., start:stop, :] @ k_near[..., :seen, :].transpose(-1, -2)
        far = q_far[..., start:stop, :] @ k_far[..., :seen, :].transpose(-1, -2)
        distance = q_positions[start:stop, None] - k_positions[None, :seen]  # (c, t')
        scores = torch.where(distance < window, near, far).float() * scale
        q_index = torch.arange(q_offset + start, q_offset + stop, device=v.device)
        visible = torch.arange(seen, device=v.device)[None, :] <= q_index[:, None]
        scores = scores.masked_fill(~visible, float("-inf"))
        outs.append(scores.softmax(dim=-1).to(v.dtype) @ v[..., :seen, :])
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-2)
