"""One registry: encoding name -> class. A new encoding is one class and one `@register` line.

`build_encoding(name, **params)` validates the name (unknown -> `ValueError` listing the known
ones) and the parameters against the class's constructor (unknown -> `ValueError` naming them
and listing the accepted ones). Model dimensions (`d_model`, `num_heads`, `head_dim`, `num_layers`, `d_ff`)
are plain constructor parameters; `build_for_model` passes those a class accepts (an encoding with
per-layer parameters takes `num_layers`; its `attend` hook receives the layer index).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from extrapos.core.errors import UserError
from extrapos.core.registry import Registry
from extrapos.encodings.base import PositionalEncoding

_REGISTRY: Registry[type[PositionalEncoding]] = Registry("encoding")

#: constructor parameters a model supplies from its own shape; users do not set them.
MODEL_DIMENSIONS = ("d_model", "num_heads", "head_dim", "num_layers", "d_ff")

E = TypeVar("E", bound=type[PositionalEncoding])


def register(name: str) -> Callable[[E], E]:
    """Class decorator: make an encoding buildable by `name`."""

    def add(cls: E) -> E:
        _REGISTRY.add(name, cls)
        cls.name = name
        return cls

    return add


def list_encodings() -> list[str]:
    """Registered encoding names, sorted."""
    return _REGISTRY.names()


def encoding_class(name: str) -> type[PositionalEncoding]:
    """The class registered as `name`; `UserError` (a ValueError) listing the known names."""
    return _REGISTRY.get(name)


def encoding_parameters(name: str) -> dict[str, Any]:
    """Constructor parameters of encoding `name` -> default (inspect.Parameter.empty if
    required). A constructor taking **kwargs passes them to its base class, whose parameters
    are then included too."""
    params: dict[str, Any] = {}
    for cls in encoding_class(name).__mro__:
        if "__init__" not in vars(cls):
            continue
        signature = inspect.signature(cls.__init__)
        for p in signature.parameters.values():
            if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                params.setdefault(p.name, p.default)
        if not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
            break
    return params


def build_encoding(name: str, **params: Any) -> PositionalEncoding:
    """Build the encoding registered as `name` with `params`.

    Raises `ValueError` (`UserError`) for an unknown name, an unknown parameter, a missing required
    parameter, or an invalid value (the class's own validation).
    """
    accepted = encoding_parameters(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise UserError(
            f"encoding '{name}' has no parameter(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(accepted) or '(none)'}"
        )
    missing = sorted(
        p
        for p, default in accepted.items()
        if default is inspect.Parameter.empty and p not in params
    )
    if missing:
        raise UserError(f"encoding '{name}' needs parameter(s) {', '.join(missing)}")
    try:
        return encoding_class(name)(**params)
    except TypeError as exc:  # a value of the wrong type deep in a constructor
        raise UserError(f"encoding '{name}': invalid parameters {params}: {exc}") from exc


def build_for_model(
    name: str,
    params: dict[str, Any],
    *,
    d_model: int,
    num_heads: int,
    head_dim: int,
    num_layers: int = 1,
    d_ff: int | None = None,
) -> PositionalEncoding:
    """Build an encoding for a model of the given shape: the model's dimensions fill the
    constructor parameters of the same name; users may not set those themselves."""
    clash = sorted(set(params) & set(MODEL_DIMENSIONS))
    if clash:
        raise UserError(
            f"encoding parameter(s) {', '.join(clash)} are set by the model's shape; "
            f"remove them from encoding_params"
        )
    dims = {
        "d_model": d_model,
        "num_heads": num_heads,
        "head_dim": head_dim,
        "num_layers": num_layers,
        "d_ff": d_ff,
    }
    accepted = encoding_parameters(name)
    return build_encoding(name, **{k: v for k, v in dims.items() if k in accepted}, **params)
