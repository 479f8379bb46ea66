"""RoPE inverse frequencies and attention factor for every inference-time scaling.

One pure function per scaling type, all with one signature, registered in one dict; the entry
point is `rope_inv_freq`. The schema is the `transformers` `rope_scaling` dict (its v5 name is
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
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from extrapos.core.errors import UserError
from extrapos.core.registry import Registry

__all__ = ["ROPE_SCALING_TYPES", "rope_inv_freq", "validate_rope_scaling"]

#: (head_dim, base, validated scaling dict, max_position_embeddings, seq_len)
#:   -> (inv_freq float32 (head_dim // 2,), attention_factor)
RopeScalingFn = Callable[
    [int, float, Mapping[str, Any], int | None, int | None], tuple[Tensor, float]
]


@dataclass(frozen=True)
class _Scaling:
    fn: RopeScalingFn
    required: tuple[str, ...]
    optional: tuple[str, ...]
    factor_min: float | None  # None: factor must be > 0; else factor >= factor_min
    nullable: tuple[str, ...]  # required keys that may be None (meaning: derive the value)


_SCALINGS: Registry[_Scaling] = Registry("rope_type", plural="", ordered=True)


def _register(
    name: str,
    required: tuple[str, ...] = (),
    optional: tuple[str, ...] = (),
    factor_min: float | None = None,
    nullable: tuple[str, ...] = (),
) -> Callable[[RopeScalingFn], RopeScalingFn]:
    def add(fn: RopeScalingFn) -> RopeScalingFn:
        # `rope_theta` is `transformers`' v5 copy of `base`; accepted when it agrees.
        _SCALINGS.add(name, _Scaling(fn, required, (*optional, "rope_theta"), factor_min, nullable))
        return fn

    return add


# ---------------------------------------------------------------------------------------------
# shared math (operation order mirrors transformers, so float32 results agree bit for bit)


def _default_inv_freq(dim: int, base: float) -> Tensor:
    """base^(-2i/d), float32 (d/2,)."""
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def _original_length(
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


def _require(value: int | None, name: str, rope_type: str, why: str) -> int:
    if value is None:
        raise UserError(f"rope_scaling: rope_type {rope_type!r} needs {name} ({why}); got None")
    return value


def _yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _yarn_correction_dim(rotations: float, dim: int, base: float, length: int) -> float:
    """The (fractional) dim index whose wavelength fits `rotations` times into `length`."""
    return (dim * math.log(length / (rotations * 2 * math.pi))) / (2 * math.log(base))


# ---------------------------------------------------------------------------------------------
# one function per type


@_register("default")
def _default(
    head_dim: int,
    base: float,
    scaling: Mapping[str, Any],
    max_position_embeddings: int | None,
    seq_len: int | None,
) -> tuple[Tensor, float]:
    """Plain RoPE (Su et al. 2021, RoFormer): inv_freq_i = base^(-2i/d). Keys: none."""
    return _default_inv_freq(head_dim, base), 1.0


@_register("linear", required=("factor",), factor_min=1.0)
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
    return _default_inv_freq(head_dim, base) / scaling["factor"], 1.0


@_register("ntk", required=("factor",))
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
    return _default_inv_freq(head_dim, scaled_base), 1.0


@_register("dynamic", required=("factor",), factor_min=1.0)
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
    length = _require(
        max_position_embeddings, "max_position_embeddings", "dynamic", "the trained length"
    )
    seq_len = _require(seq_len, "seq_len", "dynamic", "the current sequence length")
    if head_dim < 4:
        raise UserError(f"rope_scaling: rope_type 'dynamic' needs head_dim >= 4, got {head_dim}")
    factor = scaling["factor"]
    seq_len = max(seq_len, length)
    scaled_base = base * ((factor * seq_len / length) - (factor - 1)) ** (head_dim / (head_dim - 2))
    return _default_inv_freq(head_dim, scaled_base), 1.0


@_register(
    "yarn",
    required=("factor",),
    optional=(
        "original_max_position_embeddings",
        "beta_fast",
        "beta_slow",
        "mscale",
        "mscale_all_dim",
        "attention_factor",
        "truncate",
    ),
    factor_min=1.0,
    nullable=("factor",),
)
def _yarn(
    head_dim: int,
    base: float,
    scaling: Mapping[str, Any],
    max_position_embeddings: int | None,
    seq_len: int | None,
) -> tuple[Tensor, float]:
    """YaRN (Peng et al. 2023, arXiv:2309.00071): "NTK-by-parts" plus attention temperature.

    Dims whose wavelength fits more than `beta_fast` (32) times into L keep their frequency
    (extrapolate), dims fitting fewer than `beta_slow` (1) times are interpolated (PI, /factor),
    and a linear ramp over the dim index blends the two in between:

        lo, hi  = d * ln(L / (2π beta)) / (2 ln base)   for beta = beta_fast, beta_slow
                  (floor/ceil unless `truncate` is False; clipped to [0, d-1])
        ramp_i  = clamp((i - lo) / (hi - lo), 0, 1)
        inv_freq_i = base^(-2i/d) * ((1 - ramp_i) + ramp_i / factor)

    Attention factor (scales cos and sin): `attention_factor` if given; else, if `mscale` and
    `mscale_all_dim` are both set (DeepSeek), m(factor, mscale) / m(factor, mscale_all_dim);
    else m(factor) with m(s, k) = 0.1 k ln(s) + 1 (1 for s <= 1). `factor` None (DeepSeek-V3)
    means max_position_embeddings / L. L: `original_max_position_embeddings`, else
    `max_position_embeddings`.
    """
    original = _original_length(scaling, max_position_embeddings, "yarn")
    factor = scaling["factor"]
    if factor is None:
        length = _require(
            max_position_embeddings,
            "max_position_embeddings",
            "yarn",
            "factor is None, so it is derived",
        )
        factor = length / original
        if factor < 1:
            raise UserError(
                "rope_scaling: rope_type 'yarn' with factor None derives factor = "
                f"max_position_embeddings / original_max_position_embeddings = {length}/{original}"
                " < 1; set 'factor' >= 1"
            )

    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
        if mscale and mscale_all_dim:  # truthiness, as transformers: 0 means "not set"
            attention_factor = _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim)
        else:
            attention_factor = _yarn_mscale(factor)

    beta_fast = scaling.get("beta_fast") or 32
    beta_slow = scaling.get("beta_slow") or 1
    low = _yarn_correction_dim(beta_fast, head_dim, base, original)
    high = _yarn_correction_dim(beta_slow, head_dim, base, original)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    # transformers clips at d - 1 (not d/2 - 1); kept so the numbers agree.
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp

    pos_freqs = base ** (torch.arange(0, head_dim, 2).float() / head_dim)
    extrapolated = 1.0 / pos_freqs
    interpolated = 1.0 / (factor * pos_freqs)
    ramp = torch.clamp(
        (torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1
    )
    keep = 1 - ramp  # weight of the unscaled frequency
    inv_freq = interpolated * (1 - keep) + extrapolated * keep
    return inv_freq, float(attention_factor)


@_register(
    "llama3",
    required=("factor", "low_freq_factor", "high_freq_factor"),
    optional=("original_max_position_embeddings",),
    factor_min=1.0,
)
def _llama3(
    head_dim: int,
    base: float,
    scaling: Mapping[str, Any],
    max_position_embeddings: int | None,
    seq_len: int | None,
) -> tuple[Tensor, float]:
    """Llama 3.1 frequency scaling (Meta 2024, "The Llama 3 Herd of Models", arXiv:2407.21783).

    With wavelength λ_i = 2π / inv_freq_i, L = `original_max_position_embeddings`:

        λ_i < L / high_freq_factor   ->  inv_freq_i                    (unchanged)
        λ_i > L / low_freq_factor    ->  inv_freq_i / factor           (PI)
        otherwise                    ->  (1 - t) inv_freq_i / factor + t inv_freq_i,
                                         t = (L / λ_i - low_freq_factor) / (high - low)

    Keys: `factor`, `low_freq_factor`, `high_freq_factor`, `original_max_position_embeddings`
    (else `max_position_embeddings`). Attention factor 1.
    """
    original = _original_length(scaling, max_position_embeddings, "llama3")
    factor = scaling["factor"]
    low_freq_factor, high_freq_factor = scaling["low_freq_factor"], scaling["high_freq_factor"]
    low_freq_wavelen = original / low_freq_factor
    high_freq_wavelen = original / high_freq_factor

    inv_freq = _default_inv_freq(head_dim, base)
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled), 1.0


@_register(
    "longrope",
    required=("short_factor", "long_factor"),
    optional=("original_max_position_embeddings", "factor", "attention_factor"),
    factor_min=1.0,
)
def _longrope(
    head_dim: int,
    base: float,
    scaling: Mapping[str, Any],
    max_position_embeddings: int | None,
    seq_len: int | None,
) -> tuple[Tensor, float]:
    """LongRoPE (Ding et al. 2024, arXiv:2402.13753; Phi-3): searched per-dim rescale factors.

        inv_freq_i = 1 / (ext_i * base^(2i/d)),  ext = long_factor if s > L else short_factor

    Both lists have d/2 entries. Attention factor: `attention_factor` if given, else
    sqrt(1 + ln(factor) / ln(L)) (1 when factor <= 1), where `factor` defaults to
    max_position_embeddings / L. L: `original_max_position_embeddings`, else
    `max_position_embeddings`. Needs `seq_len`.
    """
    seq_len = _require(seq_len, "seq_len", "longrope", "it picks short_factor or long_factor")
    original = _original_length(scaling, max_position_embeddings, "longrope")
    factor = scaling.get("factor")
    if factor is None:
        length = _require(
            max_position_embeddings,
            "max_position_embeddings",
            "longrope",
            "no 'factor' given, so factor = max_position_embeddings / original length",
        )
        factor = length / original
    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        attention_factor = (
            1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
        )

    ext = scaling["long_factor"] if seq_len > original else scaling["short_factor"]
    ext_factors = torch.tensor(ext, dtype=torch.float32)
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    return 1.0 / (ext_factors * base**exponent), float(attention_factor)


@_register("proportional", optional=("factor", "partial_rotary_factor"))
def _proportional(
    head_dim: int,
    base: float,
    scaling: Mapping[str, Any],
    max_position_embeddings: int | None,
    seq_len: int | None,
) -> tuple[Tensor, float]:
    """Proportional RoPE, `transformers`' name for p-RoPE (Barbero et al. 2024, "Round and Round
    We Go! What makes Rotary Positional Encodings useful?", arXiv:2410.06205; Gemma family).

    Unlike partial rotary (which recomputes base^(-2i/r) over the r rotated dims), p-RoPE keeps
    the full-width frequencies base^(-2i/d) and zeroes the lowest ones, so those dim pairs carry
    no position (NoPE channels) while the rotated ones keep their original frequency:

        k = int(p * d // 2),  inv_freq_i = base^(-2i/d) / factor  for i < k,  0 for i >= k

    Here `head_dim` is the full head dim; p = `partial_rotary_factor` (default 1), `factor`
    (default 1). Returns d/2 entries. Attention factor 1.
    """
    proportion = scaling.get("partial_rotary_factor")
    proportion = 1.0 if proportion is None else proportion
    factor = scaling.get("factor")
    factor = 1.0 if factor is None else factor
    rotated = int(proportion * head_dim // 2)
    exponent = torch.arange(0, 2 * rotated, 2, dtype=torch.int64).float() / head_dim
    inv_freq = torch.cat((1.0 / (base**exponent), torch.zeros(head_dim // 2 - rotated)))
    return inv_freq / factor, 1.0


#: every supported `rope_type`, in registration order.
ROPE_SCALING_TYPES: tuple[str, ...] = tuple(_SCALINGS)


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
    if rope_type not in _SCALINGS:
        raise UserError(f"rope_scaling: {_SCALINGS.unknown(rope_type)}")
    spec = _SCALINGS.get(rope_type)

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
    fn = _SCALINGS.get(params["rope_type"]).fn
    inv_freq, attention_factor = fn(head_dim, float(base), params, max_position_embeddings, seq_len)
    return inv_freq, float(attention_factor)
