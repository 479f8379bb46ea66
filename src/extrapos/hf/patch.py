"""Swap the RoPE frequencies of a loaded `transformers` model for extrapos ones.

transformers v5 models compute cos/sin in one rotary module per model (`model.rotary_emb`, a
`LlamaRotaryEmbedding`-like class) from two attributes:

    freqs = position_ids · inv_freq        cos, sin = cos(freqs) · attention_scaling, ...

`patch_rope` finds every such module (an `inv_freq` buffer plus an `attention_scaling`
attribute), sets both from `extrapos.rope_inv_freq` and sets the module's `rope_type` to
"default" so transformers' own `dynamic_rope_update` stops changing them. Length-dependent
scalings (`dynamic`, `longrope`) are recomputed before every forward for its sequence length
s = max(position_ids) + 1, which is what transformers does for a single forward pass (it also
keeps grown frequencies across calls until a sequence shorter than the trained length comes;
we do not: each forward gets the frequencies of its own length, as extrapos' RoPE does).

The base and the rotated dims come from the model's config (`rope_config_from_hf`); the
scaling is the override (None: the model's own scaling, recomputed by us, which gives the same
logits as the unpatched model). On a p-RoPE (`proportional`) model an override scales only the
rotated dims and keeps the others unrotated (see `_override`), which is how a partial-rotary
extrapos export carries its rotary_dim.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from extrapos.core.errors import UserError
from extrapos.encodings.rope_scaling import rope_inv_freq, validate_rope_scaling
from extrapos.hf.rope import RopeConfig, rope_config_from_hf

__all__ = ["RopePatch", "patch_rope", "rotary_modules", "rotary_state"]

_LENGTH_DEPENDENT = ("dynamic", "longrope")


def rotary_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every rotary-embedding module: an `inv_freq` tensor + `attention_scaling`."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(getattr(module, "inv_freq", None), Tensor)
        and hasattr(module, "attention_scaling")
    ]


def rotary_state(model: nn.Module) -> Callable[[], None]:
    """A `restore()` that puts every length-dependent rotary module of `model` back in the state
    it has now, so that each forward is computed as if it were the first.

    transformers' `dynamic_rope_update` keeps state between calls: a dynamic RoPE grows its
    `inv_freq` (and `max_seq_len_cached`, `attention_scaling`) to the longest length seen and
    shrinks it again only below the original length, so a 256-token window scored after a
    512-token one uses the 512-token frequencies. LongRoPE caches `long_inv_freq`. Saved here:
    the module's buffers (`inv_freq`, `original_inv_freq`, per layer type `{type}_inv_freq`)
    and its plain number and tensor attributes (`max_seq_len_cached`, `attention_scaling`, ...);
    tensor attributes added later (`long_inv_freq`) are removed on restore. Modules of other
    types (and those `patch_rope` set, which it marks "default") keep no state and are left out.
    """
    saved = []
    for _, module in rotary_modules(model):
        rope_type = getattr(module, "rope_type", "")
        types = rope_type.values() if isinstance(rope_type, dict) else [rope_type]
        if not any("dynamic" in str(t) or t == "longrope" for t in types):
            continue
        buffers = {k: v.detach().clone() for k, v in module._buffers.items() if v is not None}
        attrs = {k: _copy(v) for k, v in vars(module).items() if _is_state(k, v)}
        saved.append((module, buffers, attrs))

    def restore() -> None:
        for module, buffers, attrs in saved:
            for name, value in buffers.items():
                current = module._buffers.get(name)
                device = current.device if current is not None else value.device
                module._buffers[name] = value.to(device, copy=True)
            for name in [k for k, v in vars(module).items() if _is_state(k, v) and k not in attrs]:
                delattr(module, name)
            for name, value in attrs.items():
                setattr(module, name, _copy(value))

    return restore


def _is_state(name: str, value: Any) -> bool:
    return not name.startswith("_") and (
        isinstance(value, Tensor)
        or (isinstance(value, (int, float)) and not isinstance(value, bool))
    )


def _copy(value: Any) -> Any:
    return value.detach().clone() if isinstance(value, Tensor) else value


@dataclass
class RopePatch:
    """What `patch_rope` changed; `remove()` restores the model."""

    rope: RopeConfig  # the RoPE now in use
    modules: list[nn.Module]
    _saved: list[tuple[nn.Module, dict[str, Any]]] = field(default_factory=list)
    _handles: list[Any] = field(default_factory=list)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        for module, attrs in self._saved:
            for name, value in attrs.items():
                if name in ("inv_freq", "original_inv_freq"):
                    module.register_buffer(name, value, persistent=False)
                else:
                    setattr(module, name, value)
        self._handles.clear()
        self._saved.clear()


def _override(
    own: RopeConfig, scaling: dict[str, Any], length: int | None
) -> tuple[RopeConfig, int]:
    """(the RoPE to compute, number of zero frequencies to append) for an override `scaling`.

    A p-RoPE model (`proportional`: rotate the first k = int(p·d/2) pairs with base^(-2i/d),
    zero the rest) is partial rotary over r = 2k dims with base^(r/d), since
    base^(-2i/d) = (base^(r/d))^(-2i/r); an override other than `proportional` scales those
    r dims and keeps the other d/2 - k frequencies at 0. So a partial-rotary extrapos export
    (`extrapos export-hf`) gets exactly the scaling our own partial RoPE would.
    """
    chosen = None if scaling == {"rope_type": "default"} else scaling
    own_type = (own.scaling or {}).get("rope_type")
    if own_type != "proportional" or (chosen or {}).get("rope_type") == "proportional":
        return RopeConfig(own.base, own.rotary_dim, chosen, length), 0
    fraction = own.scaling.get("partial_rotary_factor")
    pairs = int((1.0 if fraction is None else fraction) * own.rotary_dim // 2)
    if pairs == 0:
        raise UserError(
            "the model rotates no dims (proportional RoPE with partial_rotary_factor 0, i.e. "
            "NoPE); a RoPE scaling has nothing to scale"
        )
    rotary = 2 * pairs
    base = own.base ** (rotary / own.rotary_dim)
    return RopeConfig(base, rotary, chosen, length), own.rotary_dim // 2 - pairs


def _keep_unrotated(rotary_dim: int) -> Any:
    """A forward hook making cos = 1, sin = 0 on the dims past the rotated pairs.

    Zero frequencies alone leave those dims multiplied by the attention factor (transformers
    multiplies every cos/sin column by it); its partial-rotary models pass the unrotated dims
    through untouched, and so does our RoPE.
    """

    def hook(
        module: nn.Module, args: tuple, output: tuple[Tensor, Tensor]
    ) -> tuple[Tensor, Tensor]:
        cos, sin = output  # (b, s, d): columns i and i + d/2 belong to pair i
        half, pairs = cos.shape[-1] // 2, rotary_dim // 2
        cos, sin = cos.clone(), sin.clone()
        for start in (pairs, half + pairs):
            cos[..., start : start + half - pairs] = 1.0
            sin[..., start : start + half - pairs] = 0.0
        return cos, sin

    return hook


def _set_frequencies(module: nn.Module, inv_freq: Tensor, attention_factor: float) -> None:
    inv_freq = inv_freq.to(module.inv_freq.device)
    module.register_buffer("inv_freq", inv_freq, persistent=False)
    if isinstance(getattr(module, "original_inv_freq", None), Tensor):
        module.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)
    module.attention_scaling = attention_factor


def patch_rope(
    model: nn.Module,
    scaling: Mapping[str, Any] | None = None,
    *,
    max_position_embeddings: int | None = None,
) -> RopePatch:
    """Give a transformers RoPE model the frequencies of an extrapos `rope_scaling` dict.

    Args:
        model: a loaded transformers model with a rotary module (Llama, Mistral, Qwen2,
            GPT-NeoX, Phi, ... in transformers v5).
        scaling: a `rope_scaling` dict in our schema (e.g. `{"rope_type": "yarn", "factor": 4}`)
            replacing the model's own scaling; None keeps the model's own (recomputed by
            `rope_inv_freq`). `{"rope_type": "default"}` removes any scaling.
        max_position_embeddings: the trained length L that scalings read (dynamic's L, the
            fallback for `original_max_position_embeddings`); default the config's.

    Returns a `RopePatch` (`.rope`: the RoPE in use; `.remove()` undoes the patch). Raises
    `UserError` when the model has no rotary module, a per-layer RoPE config, a rotary layout
    whose frequency count differs from the config's rotated dims, or an invalid dict.
    """
    config = getattr(model, "config", None)
    if config is None:
        raise UserError("patch_rope needs a transformers model (with .config)")
    own = rope_config_from_hf(config)
    length = max_position_embeddings or own.max_position_embeddings
    modules = rotary_modules(model)
    if not modules:
        raise UserError(
            f"{type(model).__name__} has no rotary-embedding module (inv_freq + "
            "attention_scaling); --rope applies to RoPE models only"
        )
    for name, module in modules:
        if module.inv_freq.shape != (own.rotary_dim // 2,):
            raise UserError(
                f"rotary module {name} has {tuple(module.inv_freq.shape)} frequencies, but the "
                f"config rotates {own.rotary_dim} dims ({own.rotary_dim // 2} frequencies); "
                "this rotary layout is not supported"
            )
        if isinstance(getattr(module, "rope_type", None), Mapping):
            raise UserError(f"rotary module {name} has per-layer RoPE types; not supported")
    if scaling is None:
        rope, unrotated = RopeConfig(own.base, own.rotary_dim, own.scaling, length), 0
    else:
        rope, unrotated = _override(own, validate_rope_scaling(scaling), length)

    def frequencies(seq_len: int | None) -> tuple[Tensor, float]:
        inv_freq, factor = rope_inv_freq(
            rope.rotary_dim, rope.base, rope.scaling, length, seq_len=seq_len
        )
        return torch.cat((inv_freq, torch.zeros(unrotated))), factor

    length_dependent = bool(rope.scaling) and rope.scaling["rope_type"] in _LENGTH_DEPENDENT
    static = None if length_dependent else frequencies(length or 1)
    patch = RopePatch(rope, [m for _, m in modules])
    for _, module in modules:
        saved = {"inv_freq": module.inv_freq, "attention_scaling": module.attention_scaling}
        if isinstance(getattr(module, "original_inv_freq", None), Tensor):
            saved["original_inv_freq"] = module.original_inv_freq
        if hasattr(module, "rope_type"):
            saved["rope_type"] = module.rope_type
        patch._saved.append((module, saved))
        module.rope_type = "default"  # transformers' dynamic_rope_update leaves "default" alone
        if unrotated:
            patch._handles.append(module.register_forward_hook(_keep_unrotated(rope.rotary_dim)))
        if static is not None:
            _set_frequencies(module, *static)
            continue

        last: dict[str, int] = {}  # the length this module's frequencies were set for

        def pre_hook(mod: nn.Module, args: tuple, kwargs: dict, last: dict = last) -> None:
            position_ids = kwargs.get("position_ids", args[1] if len(args) > 1 else None)
            if position_ids is None:
                raise UserError("the rotary module was called without position_ids")
            seq_len = int(position_ids.max()) + 1
            if last.get("seq_len") != seq_len:
                _set_frequencies(mod, *frequencies(seq_len))
                last["seq_len"] = seq_len

        patch._handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
    return patch
