"""The registry of RoPE scaling types and the math they share (see the package docstring).

A scaling type is one pure function `(head_dim, base, scaling, max_position_embeddings, seq_len)
-> (inv_freq, attention_factor)` registered with `@register(name, required=..., optional=...)`;
the keys it reads are declared there, so `validate_rope_scaling` can check a dict before any
function runs. Operation order mirrors `transformers`, so float32 results agree bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from extrapos.core.errors import UserError
from extrapos.core.registry import Registry

#: (head_dim, base, validated scaling dict, max_position_embeddings, seq_len)
#:   -> (inv_freq float32 (head_dim // 2,), attention_factor)
RopeScalingFn = Callable[
    [int, float, Mapping[str, Any], int | None, int | None], tuple[Tensor, float]
]


@dataclass(frozen=True)
class Scaling:
    fn: RopeScalingFn
    required: tuple[str, ...]
    optional: tuple[str, ...]
    factor_min: float | None  # None: factor must be > 0; else factor >= factor_min
    nullable: tuple[str, ...]  # required keys that may be None (meaning: derive the value)


SCALINGS: Registry[Scaling] = Registry("rope_type", plural="", ordered=True)


def register(
    name: str,
    required: tuple[str, ...] = (),
    optional: tuple[str, ...] = (),
    factor_min: float | None = None,
    nullable: tuple[str, ...] = (),
) -> Callable[[RopeScalingFn], RopeScalingFn]:
    def add(fn: RopeScalingFn) -> RopeScalingFn:
        # `rope_theta` is `transformers`' v5 copy of `base`; accepted when it agrees.
        SCALINGS.add(name, Scaling(fn, required, (*optional, "rope_theta"), factor_min, nullable))
        return fn

    return add


# ---------------------------------------------------------------------------------------------
# shared math (operation order mirrors transformers, so float32 results agree bit for bit)


def default_inv_freq(dim: int, base: float) -> Tensor:
    """base^(-2i/d), float32 (d/2,)."""
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def original_length(
    scaling: Mapping[str, Any], max_position_embeddings: int | None, rope_type: str
) -> int:
    """The dict's `original_max_position_embeddings`, else `max_position_embeddings`."""
    original = scaling.get("original_max_position_embeddings")
    if original is None:
        original = max_position_embeddings
    if original is None:
        raise UserError(
            f"rope_scaling: rope_type {rope_type!r} needs the trained length: set "
            "'original_max_position_embeddings' in the dict or pass max_position_embeddings"
        )
    return original


def require(value: int | None, name: str, rope_type: str, why: str) -> int:
    if value is None:
        raise UserError(f"rope_scaling: rope_type {rope_type!r} needs {name} ({why}); got None")
    return value


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def yarn_correction_dim(rotations: float, dim: int, base: float, length: int) -> float:
    """The (fractional) dim index whose wavelength fits `rotations` times into `length`."""
    return (dim * math.log(length / (rotations * 2 * math.pi))) / (2 * math.log(base))
