"""Extending a trained RoPE model at inference: swap its frequencies for a scaling.

RoPE has no parameters, so a trained model can be evaluated with any `rope_scaling` (PI, NTK,
dynamic NTK, YaRN, Llama 3, …) by replacing its encoding with one built from the same `base`
and `rotary_dim` and the new scaling. `extension_scaling` gives the usual choice for reading
`eval_len` tokens with a model trained at `train_len`: factor = eval_len / train_len (≥ 1).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from extrapos.encodings import build_encoding
from extrapos.encodings.rotary import RoPE
from extrapos.errors import UserError

#: scalings the bench applies to a trained RoPE model, as extra rows "rope+<name>".
EXTENSIONS: tuple[str, ...] = ("linear", "ntk", "dynamic", "yarn", "llama3")


def extension_scaling(kind: str, train_len: int, eval_len: int) -> dict[str, Any]:
    """The `rope_scaling` dict of extension `kind` for reading eval_len tokens after training
    at train_len: factor = max(1, eval_len / train_len); dynamic NTK picks its own factor from
    the running length (factor 1: base·(s/L)^(d/(d-2)) once s > L)."""
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
        raise UserError(f"unknown RoPE extension '{kind}'; known: {', '.join(EXTENSIONS)}")
    return scalings[kind]


@contextlib.contextmanager
def rope_scaled(
    model: Any, scaling: dict[str, Any] | None, max_position_embeddings: int
) -> Iterator[Any]:
    """Within the block, `model` (a GPT whose encoding is `rope`) uses `scaling`; the original
    encoding is restored afterwards. `max_position_embeddings` is the trained length."""
    original = model.encoding
    if not isinstance(original, RoPE):
        raise UserError(
            f"a RoPE scaling needs a model trained with encoding 'rope', not '{original.name}'"
        )
    model.encoding = build_encoding(
        "rope",
        head_dim=original.head_dim,
        base=original.base,
        rotary_dim=original.rotary_dim,
        scaling=scaling,
        max_position_embeddings=max_position_embeddings,
    )
    try:
        yield model
    finally:
        model.encoding = original
