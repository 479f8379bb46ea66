"""RoPE scalings that rescale every frequency alike: default (none), linear position
interpolation, NTK-aware (fixed) and dynamic NTK. Formulas in the package docstring.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from extrapos.core.errors import UserError
from extrapos.encodings.rope_scaling.common import (
    default_inv_freq,
    register,
    require,
)


@register("default")
def _default(
    head_dim: int,
    base: float,
    scaling: Mapping[str, Any],
    max_position_embeddings: int | None,
    seq_len: int | None,
) -> tuple[Tensor, float]:
    """Plain RoPE (Su et al. 2021, RoFormer): inv_freq_i = base^(-2i/d). Keys: none."""
    return default_inv_freq(head_dim, base), 1.0


@register("linear", required=("factor",), factor_min=1.0)
def _linear(
    head_dim: int,
    base: float,
    scaling: Mapping[str, Any],
    max_position_embeddings: int | None,
    seq_len: int | None,
) -> tuple[Tensor, float]:
    """Position interpolation (PI; Chen et al. 2023, arXiv:2306.15595; kaiokendev 2023).

    Positions m -> m / factor, equivalently inv_freq_i = base^(-2i/d) / factor. Keys: `factor`.
    """
    return default_inv_freq(head_dim, base) / scaling["factor"], 1.0


@register("ntk", required=("factor",))
def _ntk(
    head_dim: int,
    base: float,
    scaling: Mapping[str, Any],
    max_position_embeddings: int | None,
    seq_len: int | None,
) -> tuple[Tensor, float]:
    """Static NTK-aware scaling (bloc97 2023, "NTK-Aware Scaled RoPE", r/LocalLLaMA).

    base' = base * factor^(d/(d-2)): the highest frequency (i=0) is unchanged and the lowest
    (i=d/2-1) is divided by exactly `factor`, interpolating smoothly in between. Keys: `factor`.
    Not in `transformers`; equals its `dynamic` type at factor=1 and s = factor * L.
    """
    if head_dim < 4:
        raise UserError(f"rope_scaling: rope_type 'ntk' needs head_dim >= 4, got {head_dim}")
    scaled_base = base * scaling["factor"] ** (head_dim / (head_dim - 2))
    return default_inv_freq(head_dim, scaled_base), 1.0


@register("dynamic", required=("factor",), factor_min=1.0)
def _dynamic(
    head_dim: int,
    base: float,
    scaling: Mapping[str, Any],
    max_position_embeddings: int | None,
    seq_len: int | None,
) -> tuple[Tensor, float]:
    """Dynamic NTK scaling (emozilla and bloc97 2023, r/LocalLLaMA; used by Qwen, CodeLlama).

    base' = base * (factor * s / L - (factor - 1))^(d/(d-2)) with s = max(seq_len, L) and
    L = `max_position_embeddings`, so it is plain RoPE up to L and NTK-scaled past it. Keys:
    `factor`; needs `seq_len` and `max_position_embeddings`.
    """
    length = require(
        max_position_embeddings, "max_position_embeddings", "dynamic", "the trained length"
    )
    seq_len = require(seq_len, "seq_len", "dynamic", "the current sequence length")
    if head_dim < 4:
        raise UserError(f"rope_scaling: rope_type 'dynamic' needs head_dim >= 4, got {head_dim}")
    factor = scaling["factor"]
    seq_len = max(seq_len, length)
    scaled_base = base * ((factor * seq_len / length) - (factor - 1)) ** (head_dim / (head_dim - 2))
    return default_inv_freq(head_dim, scaled_base), 1.0
