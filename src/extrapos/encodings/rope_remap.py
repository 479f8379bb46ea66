"""RoPE with pairwise position remapping: the `attention` site.

Each method keeps ordinary RoPE for near pairs, d = i - j < window, and gives far pairs a
relative position the model saw in training. A pair's score is q·R(f(d))·k, computed as two
rotations of the same q and k (near and far) and a per-pair choice, by query chunks
(`extrapos.kernels.chunks.blockwise_attention`):

| method | far relative position f(d), d >= window | far rotation of q at / k at |
|---|---|---|
| ReRoPE (Su 2023) | window | window / 0 |
| leaky ReRoPE (Su 2023) | window + (d - window) / k | i/k + window(1 - 1/k) / j/k |
| Self-Extend (Jin et al. 2024) | ⌊i/G⌋ - ⌊j/G⌋ + window - ⌊window/G⌋ | ⌊i/G⌋ + window - ⌊window/G⌋ / ⌊j/G⌋ |
| STRING (An et al. 2024) | d - shift + local_window, where window = shift | i - shift + local_window / j |

Papers: Su 2023, "Rectified Rotary Position Embeddings" (kexue.fm blog, github bojone/rerope);
Jin et al. 2024, "LLM Maybe LongLM: Self-Extend LLM Context Window Without Tuning"; An et al.
2024, "Why Does the Effective Context Length of LLMs Fall Short?" (STRING). All are usually
applied at inference to a model trained with plain RoPE (`extrapos.probes.extensions`); they are also
registered so they can be trained and checked like every encoding. The model caches raw keys
for them, so KV-cache decoding stays exact.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from extrapos.core.errors import UserError
from extrapos.encodings.base import Positions
from extrapos.encodings.registry import register
from extrapos.encodings.rotary import RoPE
from extrapos.kernels.attention import DEFAULT_CHUNK_SIZE
from extrapos.kernels.chunks import Probe, QueryChunk, blockwise_attention


class _RemappedRoPE(RoPE):
    """Shared machinery: near branch = RoPE at the true positions; subclasses give the far
    branch's q and k positions."""

    window: int  # distances below it use plain RoPE
    shift_invariant = True  # both branches depend on position differences only
    cache = "raw"  # both rotations are applied to the raw keys at every step

    def _set_window(self, window: int, what: str = "window") -> None:
        if window < 1:
            raise UserError(f"{self.name}: {what} must be >= 1, got {window}")
        self.window = int(window)

    def far_positions(self, q_positions: Tensor, k_positions: Tensor) -> tuple[Tensor, Tensor]:
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
        """Two-branch causal attention (module docstring): for a pair at distance
        d = pos_i - pos_j, score q_near·k_near/√d when d < window, q_far·k_far/√d beyond.
        q (b, h, s, d) raw; k, v (b, h, t, d) raw -> (b, h, s, d); differentiable."""
        q_positions, k_positions = positions.q, positions.k
        seq_len = max(int(q_positions.max()), int(k_positions.max())) + 1
        q_near, k_near = self.rotate_qk(q, k, q_positions, k_positions)
        qf_pos, kf_pos = self.far_positions(q_positions, k_positions)
        q_far = self.logn_scale(self.rotate_at(q, qf_pos, seq_len), q_positions)
        k_far = self.rotate_at(k, kf_pos, seq_len)
        scale = q.shape[-1] ** -0.5

        def logits(chunk: QueryChunk) -> Tensor:  # (b, h, c, t')
            rows, keys = slice(chunk.start, chunk.stop), slice(0, chunk.seen)
            near = q_near[..., rows, :] @ k_near[..., keys, :].transpose(-1, -2)
            far = q_far[..., rows, :] @ k_far[..., keys, :].transpose(-1, -2)
            distance = q_positions[rows, None] - k_positions[None, keys]  # (c, t')
            return torch.where(distance < self.window, near, far).float() * scale

        return blockwise_attention(
            q_near,
            k_near,
            v,
            q_offset=positions.q_offset,
            rows=DEFAULT_CHUNK_SIZE,
            logits=logits,
            probe=probe,
        )

    def extra_repr(self) -> str:
        return f"window={self.window}, {super().extra_repr()}"


@register("rerope")
class ReRoPE(_RemappedRoPE):
    """ReRoPE: relative positions beyond `window` are clamped to `window`; with `leak` k > 1
    (leaky ReRoPE) they grow as window + (d - window)/k instead.

    Args:
        head_dim: dims per head (set by the model).
        window: distances below it keep plain RoPE (e.g. half the trained length).
        leak: None for ReRoPE; k > 1 for leaky ReRoPE.
        base, rotary_dim, scaling, max_position_embeddings, logn_scale_len: as for `rope`.
    """

    def __init__(self, head_dim: int, window: int = 64, leak: float | None = None, **rope: Any):
        super().__init__(head_dim, **rope)
        self._set_window(window)
        if leak is not None and not leak > 1:
            raise UserError(f"rerope: leak must be > 1 (or None), got {leak}")
        self.leak = leak

    def far_positions(self, q_positions: Tensor, k_positions: Tensor) -> tuple[Tensor, Tensor]:
        w = float(self.window)
        if self.leak is None:
            return torch.full_like(q_positions, w, dtype=torch.float64), torch.zeros_like(
                k_positions, dtype=torch.float64
            )
        k = float(self.leak)
        return q_positions.double() / k + w * (1 - 1 / k), k_positions.double() / k


@register("self_extend")
class SelfExtend(_RemappedRoPE):
    """Self-Extend: beyond the neighbour `window`, positions are grouped by floor division by
    `group`, shifted so that the grouped distances continue where the window ends.

    Args:
        head_dim: dims per head (set by the model).
        window: neighbour window w_n (plain RoPE below it).
        group: group size G; distances up to (L - w_n)·G + w_n stay inside a trained length L.
        base, rotary_dim, scaling, max_position_embeddings, logn_scale_len: as for `rope`.
    """

    def __init__(self, head_dim: int, window: int = 64, group: int = 4, **rope: Any) -> None:
        super().__init__(head_dim, **rope)
        self._set_window(window)
        if group < 1:
            raise UserError(f"self_extend: group must be >= 1, got {group}")
        self.group = int(group)

    shift_invariant = False  # ⌊i/G⌋ - ⌊j/G⌋ depends on where the groups fall

    def far_positions(self, q_positions: Tensor, k_positions: Tensor) -> tuple[Tensor, Tensor]:
        g, w = self.group, self.window
        shift = w - w // g
        return (q_positions // g + shift).double(), (k_positions // g).double()


@register("string")
class STRING(_RemappedRoPE):
    """STRING: distances d >= `shift` are moved down to d - shift + local_window, reusing the
    well-trained small positions for far tokens (the near diagonal band keeps plain RoPE).

    Args:
        head_dim: dims per head (set by the model).
        shift: the offset S (the paper uses a third of the trained length); the near band is
            d < S.
        local_window: W, added back so shifted far pairs stay behind the W nearest tokens.
        base, rotary_dim, scaling, max_position_embeddings, logn_scale_len: as for `rope`.
    """

    def __init__(self, head_dim: int, shift: int = 64, local_window: int = 16, **rope: Any) -> None:
        super().__init__(head_dim, **rope)
        self._set_window(shift, "shift")
        if not 0 <= local_window <= shift:
            raise UserError(
                f"string: local_window must be in [0, shift={shift}], got {local_window}"
            )
        self.local_window = int(local_window)

    def far_positions(self, q_positions: Tensor, k_positions: Tensor) -> tuple[Tensor, Tensor]:
        offset = self.local_window - self.window
        return (q_positions + offset).double(), k_positions.double()
