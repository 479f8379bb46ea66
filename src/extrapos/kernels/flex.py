"""FlexAttention for distance-only biases: the (h, n) table read inside `score_mod`, a cached
causal `BlockMask`, and the per-key record of compile failures (a failure disables flex for
that score-mod kind, shapes, dtype and device only; `extrapos.kernels.attention` then takes
the exact chunked path for it).
"""

from __future__ import annotations

import functools
import logging
import warnings

import torch
from torch import Tensor

from extrapos.kernels.blocks import is_range

#: FlexAttention compile failures of this process, per `flex_key` -> the reason (one line)
_flex_failures: dict[tuple, str] = {}


_log = logging.getLogger(__name__)


def flex_key(
    q: Tensor, k: Tensor, table: Tensor, q_positions: Tensor, k_positions: Tensor
) -> tuple:
    """What a FlexAttention compile depends on here: the score_mod's kind (consecutive
    positions: one table gather; else: gathers through the positions), the shapes of q, k and
    the table, the dtype and the device. A compile failure disables flex for this key only."""
    kind = "range" if is_range(q_positions) and is_range(k_positions) else "positions"
    return (kind, tuple(q.shape), tuple(k.shape), tuple(table.shape), str(q.dtype), str(q.device))


def flex_failures() -> dict[tuple, str]:
    """The keys FlexAttention failed to compile for in this process, with the reason."""
    return dict(_flex_failures)


def flex_failed(key: tuple | None) -> bool:
    """Whether FlexAttention failed to compile for `key` in this process."""
    return key in _flex_failures


def disable_flex(key: tuple, exc: BaseException) -> None:
    """FlexAttention compiles through inductor; on CPU (torch 2.13) its C++ codegen fails for
    some shapes and layouts (e.g. `cur_kvSplitSize7 was not declared`). Fall back to the exact
    chunked path for this key (score-mod kind, shapes, dtype, device) only, and say so once
    per key, with the reason; other keys (another bias method, another length) still try
    flex."""
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    reason = f"{type(exc).__name__}: {first_line[:200]}"
    _flex_failures[key] = reason
    message = (
        f"FlexAttention failed to compile for {key} ({reason}); using the chunked path for "
        f"this key from now on (same numbers, O(h·chunk·n) memory)"
    )
    _log.warning(message)
    warnings.warn(message, stacklevel=3)


@functools.cache
def _compiled_flex():  # noqa: ANN202  (a compiled callable)
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True)


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
    # contiguous: inductor's CPU codegen fails on a transposed table (T5's weight[buckets].T,
    # measured on torch 2.13), and once failed for a key, flex stays off for it
    table = table.to(torch.float32).contiguous()
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
