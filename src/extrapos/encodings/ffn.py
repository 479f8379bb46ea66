"""Position inside the feed-forward block: an input-site encoding moved to the FFN site.

    FFN(x) = W2 (silu(W1 x + P·PE(pos)) ⊙ W3 x)        (the model's SwiGLU, `extrapos.models.gpt`)

PE is any input-site encoding (`inner`: sinusoidal, learned, functional, recurrent, ...), P a
learned (d_ff, D) projection; the term enters the gate's pre-activation of every layer, through
the `ffn_term(positions, d_ff)` hook, and never the residual stream. The model computes the term
once per forward pass, so P is shared by all layers (per-layer projections would need the hook to
know the layer).

Source: DESIGN.md's "PE in FFN" site. No paper that adds position inside the FFN's gate was found
for this module; the nearest published relative re-injects a position signal at every layer
(Universal Transformers, Dehghani et al. 2019, add their timing signal at each step). Treat it as
this library's variant, for comparison with the same PE at the input site.

Shapes: positions (s,) -> (s, d_ff) float32.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from extrapos.core.errors import UserError
from extrapos.encodings.base import PositionalEncoding
from extrapos.encodings.registry import build_for_model, register


def default_d_ff(d_model: int) -> int:
    """The model's default SwiGLU width, 8/3·D rounded up to a multiple of 16 (`GPTConfig`'s rule;
    a test keeps the two equal)."""
    return 16 * math.ceil(8 * d_model / 3 / 16)


@register("ffn")
class FFNPosition(PositionalEncoding):
    """Adds P·PE(pos) to the FFN gate's pre-activation (module docstring: formula, source).

    Args:
        d_model, num_heads, head_dim: the model's shape (set by the model; passed to `inner`).
        inner: name of an input-site encoding (one whose only site is "input").
        inner_params: parameters of `inner` (as `encoding_params` would give them).
        d_ff: the FFN width (set by the model; None = the model's default for d_model when the
            encoding is built alone). A mismatch with the model's FFN raises at the first
            forward, naming both values.
        init_std: std of P's init. PE at the input site is scaled like a token embedding (RMS
            0.02), so std 1 makes P·PE start at the size W1·x has for the unit-RMS x that W1 reads.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        head_dim: int,
        inner: str = "sinusoidal",
        inner_params: dict[str, Any] | None = None,
        d_ff: int | None = None,
        init_std: float = 1.0,
    ) -> None:
        super().__init__()
        if not isinstance(inner_params, (dict, type(None))):
            raise UserError(f"ffn: inner_params must be a dict, got {inner_params!r}")
        encoding = build_for_model(
            inner, dict(inner_params or {}), d_model=d_model, num_heads=num_heads, head_dim=head_dim
        )
        if encoding.sites != {"input"}:
            raise UserError(
                f"ffn: inner must be an input-site encoding (e.g. sinusoidal, learned, functional, "
                f"recurrent); '{inner}' uses sites {sorted(encoding.sites) or 'none'}"
            )
        d_ff = default_d_ff(d_model) if d_ff is None else d_ff
        if not isinstance(d_ff, int) or d_ff < 1:
            raise UserError(f"ffn: d_ff must be a positive integer, got {d_ff!r}")
        if not init_std > 0:
            raise UserError(f"ffn: init_std must be > 0, got {init_std}")
        self.inner = encoding
        self.max_len = encoding.max_len  # a learned inner table's limit is this encoding's too
        self.d_ff = d_ff
        self.proj = nn.Parameter(torch.randn(d_ff, d_model) * init_std)  # P

    def ffn_term(self, positions: Tensor, d_ff: int) -> Tensor:
        if d_ff != self.d_ff:
            raise UserError(
                f"ffn: built for d_ff={self.d_ff} but the model's FFN has d_ff={d_ff}; set "
                f"encoding_params {{'d_ff': {d_ff}}}"
            )
        return self.inner.input_embedding(positions) @ self.proj.T

    def extra_repr(self) -> str:
        return f"d_ff={self.d_ff}, {super().extra_repr()}"


__all__ = ["FFNPosition", "default_d_ff"]
