"""When cached keys and values stay exact: the rotation state of length-dependent encodings.

Dynamic NTK and LongRoPE choose their RoPE frequencies from the current sequence length. (xPos
caches its scaled keys with the centre they were made with and rescales them when it moves,
`XPos.decode_center`, so it needs none of this.) The model caches keys
before rotation and re-rotates them every step, which makes layer 0 exact; but the keys and
values of deeper layers come from hidden states computed with the frequencies of the length at
which each token was decoded. So a KV cache is exact only while every cached entry was made
under the rotation a full forward at the current length would use.

`rotation_key(encoding, seq_len)` names that rotation; `GPT.generate` keeps its cache while the
key stays equal and recomputes the prefix (a fresh cache) when it changes. Inside the trained
length the frequencies of dynamic NTK and LongRoPE do not change, so decoding is incremental;
past it LongRoPE switches once (one recomputation), dynamic NTK changes at every new length
(every step recomputes: the cost of the full forward, the price of exactness).
"""

from __future__ import annotations

from typing import Any

import torch


def rotation_key(encoding: Any, seq_len: int) -> Any:
    """What decides the q/k rotation of `encoding` for a sequence of `seq_len` positions: the
    (inv_freq, attention_factor) of a length-dependent RoPE scaling; `seq_len` itself for an
    encoding whose rotation may change with any length (unknown)."""
    if getattr(encoding, "length_dependent", False) and hasattr(encoding, "frequencies"):
        inv_freq, factor = encoding.frequencies(seq_len=seq_len)
        return inv_freq, float(factor)
    return seq_len


def same_rotation(a: Any, b: Any) -> bool:
    """Whether two `rotation_key`s are the same rotation (bitwise)."""
    if isinstance(a, tuple) and isinstance(b, tuple):
        return a[1] == b[1] and torch.equal(a[0], b[0])
    return not isinstance(a, tuple) and not isinstance(b, tuple) and a == b
