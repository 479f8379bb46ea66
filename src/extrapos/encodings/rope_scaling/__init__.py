"""RoPE inverse frequencies and attention factor for every inference-time scaling.

One pure function per scaling type, all with one signature, registered in one dict
(`common.py`: the registry and shared math; `interpolation.py`: default, linear, ntk, dynamic;
`per_frequency.py`: yarn, llama3, longrope, proportional); the entry point is `rope_inv_freq`, here
with `validate_rope_scaling`. The schema is the `transformers` `rope_scaling` dict (its v5 name is
`rope_parameters`): `{"rope_type": "yarn", "factor": 4.0, ...}`; the legacy key `type` is read
as `rope_type`. For every type that `transformers` has, the numbers equal its
`ROPE_INIT_FUNCTIONS` to float32 precision: the same operations run in the same order (float64
Python scalars for bases and corrections, float32 tensors for frequencies), because bf16 or a
reordered float32 formula drifts at long positions.

Notation: d = `head_dim`, the number of rotated dims (rotary_dim; callers with partial rotary
pass rotary_dim), i = 0 .. d/2 - 1, L = original (trained) length, s = current sequence length.

    default       inv_freq_i = base^(-2i/d)                                 (Su et al. 2021)
    linear        inv_freq_i / factor                                 (PI, Chen et al. 2023)
    ntk           base' = base * factor^(d/(d-2))           (NTK-aware, bloc97 2023; fixed)
    dynamic       base' = base * (factor*s/L - (factor-1))^(d/(d-2)), s >= L  (dynamic NTK)
    yarn          ramp between extrapolation and PI; attention factor 0.1 ln(factor) + 1
                                                                     (YaRN, Peng et al. 2023)
    llama3        PI for long wavelengths, none for short, smooth between  (Llama 3, Meta 2024)
    longrope      inv_freq_i / ext_i, ext = short_factor (s <= L) or long_factor (s > L)
                                                                  (LongRoPE, Ding et al. 2024)
    proportional  p-RoPE: rotate only the first p*d/2 (highest) frequencies, the rest are 0
                                                           (Barbero et al. 2024; Gemma family)

Length arguments. `max_position_embeddings` stands for `config.max_position_embeddings` in
`transformers`: dynamic NTK uses it as L; yarn, llama3 and longrope read L from the dict's
`original_max_position_embeddings` and fall back to it; yarn (factor None) and longrope (no
factor) derive factor = max_position_embeddings / L. `seq_len` is the current length s.

Validation is stricter than `transformers` (which mostly logs warnings): bad input raises
`UserError` (a `ValueError`) naming the key and what is allowed. Where this changes behaviour:
`factor` < 1 is refused where `transformers` warns about it; dynamic and longrope require
`seq_len` (transformers silently uses the initial length); `truncate` must be a bool (a None
there means False in transformers); `partial_rotary_factor` is refused except for proportional
(pass rotary_dim as `head_dim` instead); `rope_theta` in the dict is accepted only if it equals
`base`; `base` must be > 1 and ntk/dynamic need head_dim >= 4 (d - 2 divides). A key whose
value is None counts as absent, as `transformers` reads it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from extrapos.core.errors import UserError
from extrapos.encodings.rope_scaling import interpolation, per_frequency  # noqa: F401  (registers them, in order)
from extrapos.encodings.rope_scaling.common import (  # noqa: F401  (RopeScalingFn re-exported)
    SCALINGS,
    RopeScalingFn,
)

__all__ = ["ROPE_SCALING_TYPES", "rope_inv_freq", "validate_rope_scaling"]


#: every supported `rope_type`, in registration order.
ROPE_SCALING_TYPES: tuple[str, ...] = tuple(SCALINGS)


# ---------------------------------------------------------------------------------------------
# validation


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(key: str, value: Any) -> None:
    if not (_is_number(value) and value > 0):
        raise UserError(f"rope_scaling[{key!r}] must be a number > 0, got {value!r}")


def _non_negative(key: str, value: Any) -> None:
    if not (_is_number(value) and value >= 0):
        raise UserError(f"rope_scaling[{key!r}] must be a number >= 0, got {value!r}")


def _positive_int(key: str, value: Any) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        raise UserError(f"rope_scaling[{key!r}] must be a positive integer, got {value!r}")


def _boolean(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise UserError(f"rope_scaling[{key!r}] must be true or false, got {value!r}")


def _proportion(key: str, value: Any) -> None:
    if not (_is_number(value) and 0 <= value <= 1):
        raise UserError(f"rope_scaling[{key!r}] must be a number in [0, 1], got {value!r}")


def _factor_list(key: str, value: Any) -> None:
    if not (isinstance(value, (list, tuple)) and all(_is_number(x) and x > 0 for x in value)):
        raise UserError(f"rope_scaling[{key!r}] must be a list of numbers > 0, got {value!r}")


_KEY_CHECKS: dict[str, Callable[[str, Any], None]] = {
    "factor": _positive,
    "original_max_position_embeddings": _positive_int,
    "beta_fast": _positive,
    "beta_slow": _positive,
    "mscale": _non_negative,
    "mscale_all_dim": _non_negative,
    "attention_factor": _positive,
    "low_freq_factor": _positive,
    "high_freq_factor": _positive,
    "short_factor": _factor_list,
    "long_factor": _factor_list,
    "truncate": _boolean,
    "partial_rotary_factor": _proportion,
    "rope_theta": _positive,
}


def validate_rope_scaling(scaling: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check a `rope_scaling` dict and return a normalized copy (`type` -> `rope_type`).

    None or {} means plain RoPE, `{"rope_type": "default"}`; a dict without a type is read as
    "default", as `transformers` does. Raises `UserError` naming the bad key: an unknown
    `rope_type` (listing `ROPE_SCALING_TYPES`), a missing required key, a key that type does not
    read (listing the allowed ones), or a bad value. Checks that need `head_dim`, `base` or the
    lengths happen in `rope_inv_freq`.
    """
    if scaling is None:
        return {"rope_type": "default"}
    if not isinstance(scaling, Mapping):
        raise UserError(f"rope_scaling must be a dict or None, got {type(scaling).__name__}")
    params = dict(scaling)
    legacy = params.pop("type", None)
    if legacy is not None:
        if params.get("rope_type", legacy) != legacy:
            raise UserError(
                f"rope_scaling: 'type'={legacy!r} and 'rope_type'={params['rope_type']!r} "
                "disagree; give only 'rope_type'"
            )
        params["rope_type"] = legacy
    implicit = params.get("rope_type") is None
    rope_type = params["rope_type"] = "default" if implicit else params["rope_type"]
    if rope_type not in SCALINGS:
        raise UserError(f"rope_scaling: {SCALINGS.unknown(rope_type)}")
    spec = SCALINGS.get(rope_type)

    allowed = {"rope_type", *spec.required, *spec.optional}
    for key in params:
        if key not in allowed:
            hint = " (no rope_type was given, so 'default' was assumed)" if implicit else ""
            if key == "partial_rotary_factor":
                hint = "; for partial rotary pass rotary_dim as head_dim instead"
            raise UserError(
                f"rope_scaling: unknown key {key!r} for rope_type {rope_type!r}; allowed: "
                f"{', '.join(sorted(allowed))}{hint}"
            )
    for key in spec.required:
        if key not in params:
            raise UserError(
                f"rope_scaling: rope_type {rope_type!r} requires key {key!r} "
                f"(required: {', '.join(spec.required)})"
            )
    for key, value in params.items():
        if key == "rope_type":
            continue
        if value is None and key != "truncate":  # None counts as absent, as in transformers
            if key in spec.required and key not in spec.nullable:
                raise UserError(
                    f"rope_scaling: rope_type {rope_type!r} requires a value for {key!r}"
                )
            continue
        _KEY_CHECKS[key](key, value)

    factor = params.get("factor")
    if spec.factor_min is not None and factor is not None and factor < spec.factor_min:
        raise UserError(
            f"rope_scaling['factor'] must be >= {spec.factor_min:g} for rope_type {rope_type!r} "
            f"(it is the context extension ratio), got {factor!r}"
        )
    beta_fast, beta_slow = params.get("beta_fast") or 32, params.get("beta_slow") or 1
    if beta_fast < beta_slow:
        raise UserError(
            f"rope_scaling['beta_fast'] ({beta_fast}) must be >= rope_scaling['beta_slow'] "
            f"({beta_slow}); defaults are 32 and 1"
        )
    low, high = params.get("low_freq_factor"), params.get("high_freq_factor")
    if low is not None and high is not None and high <= low:
        raise UserError(
            f"rope_scaling['high_freq_factor'] ({high}) must be > "
            f"rope_scaling['low_freq_factor'] ({low})"
        )
    return params


def rope_inv_freq(
    head_dim: int,
    base: float,
    scaling: dict | None = None,
    max_position_embeddings: int | None = None,
    seq_len: int | None = None,
) -> tuple[Tensor, float]:
    """RoPE inverse frequencies and attention factor for a `transformers`-schema scaling.

    Args:
        head_dim: d, the number of rotated dims (pass rotary_dim for partial rotary; the full
            head dim for `proportional`). Positive and even.
        base: the frequency base (> 1), e.g. 10000 (RoFormer) or 500000 (Llama 3).
        scaling: a `rope_scaling` dict, e.g. `{"rope_type": "yarn", "factor": 4.0,
            "original_max_position_embeddings": 2048}`; None = plain RoPE. See the module
            docstring for each type's formula and keys.
        max_position_embeddings: stands for `config.max_position_embeddings`: L for dynamic,
            the fallback for `original_max_position_embeddings`, the numerator of a derived
            factor.
        seq_len: the current sequence length s (needed by dynamic and longrope).

    Returns:
        (inv_freq float32 (d/2,), attention_factor): angles are position * inv_freq, and cos
        and sin are multiplied by attention_factor.
    """
    params = validate_rope_scaling(scaling)
    if (
        not (isinstance(head_dim, int) and not isinstance(head_dim, bool))
        or head_dim <= 0
        or head_dim % 2
    ):
        raise UserError(
            f"rope: head_dim (rotated dims) must be a positive even integer, got {head_dim!r}"
        )
    if not (_is_number(base) and base > 1):
        raise UserError(f"rope: base must be a number > 1, got {base!r}")
    for name, value in (("max_position_embeddings", max_position_embeddings), ("seq_len", seq_len)):
        if value is not None and not (
            isinstance(value, int) and not isinstance(value, bool) and value > 0
        ):
            raise UserError(f"rope: {name} must be a positive integer or None, got {value!r}")
    theta = params.get("rope_theta")
    if theta is not None and float(theta) != float(base):
        raise UserError(
            f"rope_scaling['rope_theta'] ({theta}) disagrees with base ({base}); "
            "drop it or make them equal"
        )
    for key in ("short_factor", "long_factor"):
        if key in params and len(params[key]) != head_dim // 2:
            raise UserError(
                f"rope_scaling[{key!r}] must have head_dim // 2 = {head_dim // 2} entries, "
                f"got {len(params[key])}"
            )
    fn = SCALINGS.get(params["rope_type"]).fn
    inv_freq, attention_factor = fn(head_dim, float(base), params, max_position_embeddings, seq_len)
    return inv_freq, float(attention_factor)
