"""What a probe needs from a model: `ScoredLM`.

Probes (perplexity, passkey, tasks, diagnostics) score any causal LM that maps token ids to
next-token logits, not only extrapos's `GPT`: the `transformers` adapter
(`extrapos.hf.HFCausalLM`) satisfies the same protocol, so every probe runs on both.

Shapes: b batch, s tokens, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn


@runtime_checkable
class PositionLimit(Protocol):
    """How far a model's positions reach: `max_len` None when unbounded; `check_positions(p)`
    raises `UserError` (saying why and what to do) when position p cannot be represented."""

    max_len: int | None

    def check_positions(self, max_position: int) -> None: ...


@runtime_checkable
class ScoredLM(Protocol):
    """A causal LM: `model(idx (b, s) int64) -> logits (b, s, V)`; its parameters (for the
    device); train/eval modes; and, where positions are bounded, an `encoding` that is a
    `PositionLimit` (a learned table, GPT-2's position embeddings)."""

    training: bool

    def __call__(self, idx: Tensor) -> Tensor: ...

    def parameters(self) -> Iterator[nn.Parameter]: ...

    def eval(self) -> Any: ...

    def train(self, mode: bool = True) -> Any: ...
