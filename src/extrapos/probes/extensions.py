"""Extending a trained RoPE model at inference: swap its encoding for an extension.

RoPE has no parameters, so a model trained with `rope` can be evaluated with any other
rotation of the same `base` and `rotary_dim` by replacing its encoding:

- a `rope_scaling` (PI `linear`, `ntk`, `dynamic` NTK, `yarn`, `llama3`) with factor =
  eval length / train length (≥ 1);
- a pairwise position remap: `rerope` (window = train length / 2), `self_extend` (neighbour
  window train length / 2, group size just large enough to keep every grouped distance inside
  the train length);
- `logn`: plain RoPE with log-n query scaling relative to the train length.

STRING (`string`) is an encoding too, but it reuses positions *inside* the trained length and
is not meant to read past it, so it is not among the bench's extensions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from extrapos.core.errors import UserError
from extrapos.encodings import PositionalEncoding, build_encoding
from extrapos.encodings.rotary import RoPE

SCALINGS: tuple[str, ...] = ("linear", "ntk", "dynamic", "yarn", "llama3")
REMAPS: tuple[str, ...] = ("rerope", "self_extend", "logn")
#: what the bench applies to a trained RoPE model, as extra rows "rope+<name>".
EXTENSIONS: tuple[str, ...] = SCALINGS + REMAPS


def extension_scaling(kind: str, train_len: int, eval_len: int) -> dict[str, Any]:
    """The `rope_scaling` dict of scaling `kind` for reading eval_len tokens after training at
    train_len: factor = max(1, eval_len / train_len); dynamic NTK picks its own factor from the
    running length (factor 1: base·(s/L)^(d/(d-2)) once s > L)."""
    factor = max(1.0, eval_len / train_len)
    scalings: dict[str, dict[str, Any]] = {
        "linear": {"rope_type": "linear", "factor": factor},
        "ntk": {"rope_type": "ntk", "factor": factor},
        "dynamic": {"rope_type": "dynamic", "factor": 1.0},
        "yarn": {
            "rope_type": "yarn",
            "factor": factor,
            "original_max_position_embeddings": train_len,
        },
        "llama3": {
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": train_len,
        },
    }
    if kind not in scalings:
        raise UserError(f"unknown RoPE scaling '{kind}'; known: {', '.join(SCALINGS)}")
    return scalings[kind]


def extension_encoding(
    kind: str, trained: PositionalEncoding, train_len: int, eval_len: int
) -> PositionalEncoding:
    """The encoding that extension `kind` puts in place of a trained `rope` encoding."""
    if not isinstance(trained, RoPE) or trained.name != "rope":
        raise UserError(
            f"RoPE extensions need a model trained with encoding 'rope', not '{trained.name}'"
        )
    same = {"head_dim": trained.head_dim, "base": trained.base, "rotary_dim": trained.rotary_dim}
    if kind in SCALINGS:
        scaling = extension_scaling(kind, train_len, eval_len)
        return build_encoding("rope", **same, scaling=scaling, max_position_embeddings=train_len)
    window = max(1, train_len // 2)
    if kind == "rerope":
        return build_encoding("rerope", **same, window=window)
    if kind == "self_extend":
        group = self_extend_group(train_len, eval_len, window)
        return build_encoding("self_extend", **same, window=window, group=group)
    if kind == "logn":
        return build_encoding("rope", **same, logn_scale_len=train_len)
    raise UserError(f"unknown RoPE extension '{kind}'; known: {', '.join(EXTENSIONS)}")


def describe_extension(kind: str, train_len: int, eval_len: int) -> dict[str, Any]:
    """The parameters extension `kind` uses at eval_len (for results files)."""
    enc = extension_encoding(kind, build_encoding("rope", head_dim=2), train_len, eval_len)
    keys = ("scaling", "window", "group", "logn_scale_len")
    return {k: getattr(enc, k) for k in keys if getattr(enc, k, None) is not None}


@contextlib.contextmanager
def extended(model: Any, encoding: PositionalEncoding) -> Iterator[Any]:
    """Within the block, `model` (a GPT) uses `encoding`; its own is restored afterwards."""
    original = model.encoding
    model.encoding = encoding
    try:
        yield model
    finally:
        model.encoding = original


@contextlib.contextmanager
def rope_extended(model: Any, kind: str, train_len: int, eval_len: int) -> Iterator[Any]:
    """`extended` with `extension_encoding(kind, model.encoding, train_len, eval_len)`."""
    with extended(model, extension_encoding(kind, model.encoding, train_len, eval_len)):
        yield model


def self_extend_group(train_len: int, eval_len: int, window: int) -> int:
    """The smallest group size G whose farthest grouped distance stays a trained distance.

    Self-Extend maps a pair (i, j) beyond the window to ⌊i/G⌋ + w - ⌊w/G⌋ - ⌊j/G⌋ (see
    `extrapos.encodings.rope_remap.SelfExtend`), which is largest for i = eval_len - 1, j = 0:
    (eval_len - 1)//G + w - w//G must be <= train_len - 1, the largest distance trained on.
    """
    for group in range(1, max(2, eval_len + 1)):
        if (eval_len - 1) // group + window - window // group <= train_len - 1:
            return group
    raise UserError(
        f"no Self-Extend group size keeps length {eval_len} inside the trained {train_len} "
        f"with window {window}; use a smaller window"
    )
