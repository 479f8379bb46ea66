"""RoPE scalings that treat frequency bands differently: YaRN, Llama 3, LongRoPE (a factor
per frequency) and proportional (p-RoPE). Formulas in the package docstring.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from extrapos.core.errors import UserError
from extrapos.encodings.rope_scaling.common import (
    default_inv_freq,
    original_length,
    register,
    require,
    yarn_correction_dim,
    yarn_mscale,
)


@register(
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
    original = original_length(scaling, max_position_embeddings, "yarn")
    factor = scaling["factor"]
    if factor is None:
        length = require(
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
            attention_factor = yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
        else:
            attention_factor = yarn_mscale(factor)

    beta_fast = scaling.get("beta_fast") or 32
    beta_slow = scaling.get("beta_slow") or 1
    low = yarn_correction_dim(beta_fast, head_dim, base, original)
    high = yarn_correction_dim(beta_slow, head_dim, base, original)
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


@register(
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
    original = original_length(scaling, max_position_embeddings, "llama3")
    factor = scaling["factor"]
    low_freq_factor, high_freq_factor = scaling["low_freq_factor"], scaling["high_freq_factor"]
    low_freq_wavelen = original / low_freq_factor
    high_freq_wavelen = original / high_freq_factor

    inv_freq = default_inv_freq(head_dim, base)
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled), 1.0


@register(
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
    seq_len = require(seq_len, "seq_len", "longrope", "it picks short_factor or long_factor")
    original = original_length(scaling, max_position_embeddings, "longrope")
    factor = scaling.get("factor")
    if factor is None:
        length = require(
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


@register("proportional", optional=("factor", "partial_rotary_factor"))
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
