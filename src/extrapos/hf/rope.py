"""RoPE settings in `transformers` configs: read and write both schema versions.

transformers v4 (`config.json` and config objects up to 4.5x):

    {"rope_theta": 10000.0, "rope_scaling": {"rope_type": "yarn", "factor": 4.0, ...},
     "partial_rotary_factor": 0.5, "max_position_embeddings": 2048}

  `rope_scaling` may spell the type as the legacy `type`; GPT-NeoX names the base
  `rotary_emb_base` and the rotated fraction `rotary_pct`.

transformers v5 (`RotaryEmbeddingConfigMixin`, `modeling_rope_utils.py`):

    {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0,
                         "partial_rotary_factor": 0.5, ...}, "max_position_embeddings": 2048}

Reading follows `convert_rope_params_to_dict` + `standardize_rope_params` of transformers v5:
a `rope_scaling` dict wins over `rope_parameters`; a value inside the dict wins over the
top-level `rope_theta`/`partial_rotary_factor` (then `rotary_emb_base`/`rotary_pct`; default
base 10000, fraction 1); `type` is read as `rope_type` (missing: "default"); for `yarn`,
`llama3` and `longrope` a missing `original_max_position_embeddings` is
`max_position_embeddings`, and a top-level `original_max_position_embeddings` (Phi-3) overrides
the dict's. A raw dict with a `model_type` is first turned into that model's config class by
transformers itself (`AutoConfig.for_model`), so model-specific defaults (GPT-NeoX rotates 25%
of each head, Phi 50%) come out as transformers has them.

The rotated dims are `rotary_dim = int(head_dim * partial_rotary_factor)`, as every
transformers scaling function computes them, except for `proportional` (p-RoPE), where
`partial_rotary_factor` is the scaling's own parameter over the full head (see
`extrapos.encodings.rope_scaling`). Our checks are stricter than transformers' warnings: an
unknown key, a bad value or per-layer (nested) parameters raise `UserError` naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

from extrapos.core.errors import UserError
from extrapos.encodings.rope_scaling import rope_inv_freq, validate_rope_scaling

__all__ = ["RopeConfig", "rope_config_from_hf", "rope_config_to_hf", "hf_config_view"]

Schema = Literal["v4", "v5"]

#: rope types whose dict gets `original_max_position_embeddings` filled in by transformers.
_ORIGINAL_LENGTH_TYPES = ("llama3", "yarn", "longrope")
#: keys that live beside the scaling keys in a v5 `rope_parameters` dict, not in our scaling.
_BASE_KEYS = ("rope_theta", "partial_rotary_factor")
DEFAULT_BASE = 10000.0


class RopeConfig(NamedTuple):
    """RoPE settings in extrapos terms: what `extrapos.encodings.rotary.RoPE` takes.

    base: the frequency base (`rope_theta`). rotary_dim: rotated dims per head.
    scaling: a validated `rope_scaling` dict (our schema: `rope_type` + its keys, no
    `rope_theta`), None for plain RoPE. max_position_embeddings: the config's trained length.
    """

    base: float
    rotary_dim: int
    scaling: dict[str, Any] | None
    max_position_embeddings: int | None


def config_errors() -> tuple[type[BaseException], ...]:
    """The exceptions transformers raises for a bad config (incl. huggingface_hub's strict
    dataclass validation in v5)."""
    errors: tuple[type[BaseException], ...] = (ValueError, KeyError, TypeError)
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:
        return errors
    return (*errors, StrictDataclassError)


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (transformers' messages span several)."""
    return " ".join(str(exc).split())


def hf_config_view(config: Any) -> dict[str, Any]:
    """A plain dict of a transformers config (object or `config.json` dict).

    A dict with a `model_type` goes through `AutoConfig.for_model` so transformers applies its
    own defaults and renames; its errors become `UserError`.
    """
    if isinstance(config, Mapping):
        data = dict(config)
        model_type = data.get("model_type")
        if model_type:
            try:
                from transformers import AutoConfig
            except ImportError:
                return data
            fields = {
                k: v for k, v in data.items() if k not in ("model_type", "transformers_version")
            }
            try:
                config = AutoConfig.for_model(model_type, **fields)
            except config_errors() as exc:
                raise UserError(
                    f"transformers rejects this {model_type} config: {one_line(exc)}"
                ) from exc
        else:
            return data
    if not hasattr(config, "to_dict"):
        raise UserError(
            f"expected a transformers config or a config.json dict, got {type(config).__name__}"
        )
    data = config.to_dict()
    # attribute_map names (GPT-2's n_embd -> hidden_size) are not in to_dict(); add the ones we read
    for name in ("hidden_size", "num_attention_heads", "max_position_embeddings", "head_dim"):
        if name not in data and getattr(config, name, None) is not None:
            data[name] = getattr(config, name)
    return data


def _head_dim(view: Mapping[str, Any]) -> int:
    head_dim = view.get("head_dim")
    if head_dim:
        return int(head_dim)
    hidden, heads = view.get("hidden_size"), view.get("num_attention_heads")
    if not hidden or not heads:
        raise UserError(
            "the config gives neither head_dim nor hidden_size and num_attention_heads; "
            "add them to config.json"
        )
    return int(hidden) // int(heads)


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def rope_config_from_hf(config: Any) -> RopeConfig:
    """(base, rotary_dim, scaling, max_position_embeddings) of a transformers config.

    `config` is a config object (v4 or v5) or a `config.json` dict. The rules are transformers'
    (see the module docstring); the result is checked with `validate_rope_scaling` and
    `rope_inv_freq`, so a bad key or value raises `UserError` naming it. A config without RoPE
    (GPT-2, BERT, T5) raises `UserError`.
    """
    view = hf_config_view(config)
    raw = _first(view.get("rope_scaling") or None, view.get("rope_parameters") or None)
    has_rope = raw is not None or any(
        view.get(k) is not None
        for k in ("rope_theta", "rotary_emb_base", "rotary_pct", "partial_rotary_factor")
    )
    if not has_rope:
        kind = view.get("model_type") or "this model"
        raise UserError(
            f"{kind} has no rotary embedding settings (no rope_parameters, rope_scaling or "
            "rope_theta in its config); RoPE settings apply to RoPE models only"
        )
    if raw is not None and not isinstance(raw, Mapping):
        raise UserError(f"rope_parameters must be a dict, got {type(raw).__name__}")
    params = dict(raw or {})
    nested = sorted(k for k, v in params.items() if isinstance(v, Mapping))
    if nested:
        raise UserError(
            f"per-layer RoPE parameters ({', '.join(nested)}) are not supported; "
            "only one rope_parameters dict for all layers"
        )
    base = _first(params.pop("rope_theta", None), view.get("rope_theta"))
    base = _first(base, view.get("rotary_emb_base"), DEFAULT_BASE)
    fraction = _first(params.pop("partial_rotary_factor", None), view.get("partial_rotary_factor"))
    fraction = _first(fraction, view.get("rotary_pct"), 1.0)
    legacy = params.pop("type", None)
    rope_type = _first(params.get("rope_type"), legacy, "default")
    if legacy is not None and params.get("rope_type", legacy) != legacy:
        raise UserError(
            f"rope_scaling: 'type'={legacy!r} and 'rope_type'={params['rope_type']!r} disagree; "
            "give only 'rope_type'"
        )
    if view.get("model_type") == "phi3" and rope_type in ("su", "yarn"):
        rope_type = "longrope"  # Phi3Config's backward-compatible names
    params["rope_type"] = rope_type
    max_len = view.get("max_position_embeddings")
    if rope_type in _ORIGINAL_LENGTH_TYPES:
        if view.get("original_max_position_embeddings") is not None:
            params["original_max_position_embeddings"] = view["original_max_position_embeddings"]
        elif params.get("original_max_position_embeddings") is None and max_len is not None:
            params["original_max_position_embeddings"] = max_len

    head_dim = _head_dim(view)
    if rope_type == "proportional":
        rotary_dim = head_dim
        if fraction != 1.0:
            params["partial_rotary_factor"] = fraction
    else:
        if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
            raise UserError(
                f"partial_rotary_factor must be a number in (0, 1], got {fraction!r}; fix config.json"
            )
        rotary_dim = int(head_dim * fraction)
    scaling = validate_rope_scaling(params)
    if scaling == {"rope_type": "default"}:
        scaling = None
    # full check (head_dim, base, list lengths) with the numbers transformers would use
    rope_inv_freq(rotary_dim, float(base), scaling, max_len, seq_len=max_len or 1)
    return RopeConfig(float(base), rotary_dim, scaling, max_len)


def _partial_rotary_factor(rotary_dim: int, head_dim: int) -> float:
    fraction = rotary_dim / head_dim
    if int(head_dim * fraction) != rotary_dim:  # float round trip, as transformers computes it
        raise UserError(
            f"rotary_dim={rotary_dim} of head_dim={head_dim} has no exact partial_rotary_factor; "
            "use a rotary_dim that divides evenly"
        )
    return fraction


def rope_config_to_hf(
    base: float,
    rotary_dim: int,
    scaling: Mapping[str, Any] | None = None,
    max_position_embeddings: int | None = None,
    *,
    head_dim: int,
    schema: Schema = "v5",
) -> dict[str, Any]:
    """Config fields that give a transformers model this RoPE; merge them into its config.

    `schema="v5"`: `{"rope_parameters": {"rope_type", <keys>, "rope_theta",
    ["partial_rotary_factor"]}, "max_position_embeddings"}`. `schema="v4"`:
    `{"rope_theta", "rope_scaling" (None for plain RoPE), ["partial_rotary_factor"],
    "max_position_embeddings"}`. `partial_rotary_factor` (= rotary_dim / head_dim) is written
    only when rotary_dim < head_dim; `max_position_embeddings` only when given.

    Our `ntk` type (static NTK-aware, not in transformers) is written as plain RoPE with the
    scaled base `base * factor^(r/(r-2))`, which gives the same inv_freq bit for bit; reading
    it back therefore gives `default` with that base. `proportional` exists in v5 only.
    Arguments are in `RopeConfig` order: `rope_config_to_hf(*rope_config_from_hf(c), head_dim=d)`.
    """
    if schema not in ("v4", "v5"):
        raise UserError(f"schema must be 'v4' or 'v5', got {schema!r}")
    if not 0 < rotary_dim <= head_dim:
        raise UserError(f"rotary_dim must be in (0, head_dim={head_dim}], got {rotary_dim}")
    params = validate_rope_scaling(scaling)
    theta = params.pop("rope_theta", None)
    if theta is not None and float(theta) != float(base):
        raise UserError(f"scaling['rope_theta'] ({theta}) disagrees with base ({base}); drop it")
    rope_inv_freq(rotary_dim, float(base), params, max_position_embeddings, seq_len=1)
    if params["rope_type"] == "ntk":
        if rotary_dim < 4:
            raise UserError(f"rope_type 'ntk' needs rotary_dim >= 4, got {rotary_dim}")
        base = float(base) * params["factor"] ** (rotary_dim / (rotary_dim - 2))
        params = {"rope_type": "default"}
    if params["rope_type"] == "proportional":
        if schema == "v4":
            raise UserError(
                "rope_type 'proportional' exists in transformers v5 only; write schema='v5'"
            )
        if rotary_dim != head_dim:
            raise UserError(
                "rope_type 'proportional' sets its own rotated fraction (partial_rotary_factor "
                f"in the dict); use rotary_dim = head_dim = {head_dim}, got {rotary_dim}"
            )
    params = {k: v for k, v in params.items() if v is not None}
    fraction = _partial_rotary_factor(rotary_dim, head_dim) if rotary_dim < head_dim else None

    out: dict[str, Any] = {}
    if schema == "v5":
        rope_parameters = {**params, "rope_theta": float(base)}
        if fraction is not None:
            rope_parameters["partial_rotary_factor"] = fraction
        out["rope_parameters"] = rope_parameters
    else:
        out["rope_theta"] = float(base)
        out["rope_scaling"] = None if params == {"rope_type": "default"} else params
        if fraction is not None:
            out["partial_rotary_factor"] = fraction
    if max_position_embeddings is not None:
        out["max_position_embeddings"] = int(max_position_embeddings)
    return out
