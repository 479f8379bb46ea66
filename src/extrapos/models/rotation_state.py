"""When cached keys and values stay exact: the rotation state of length-dependent encodings.

Dynamic NTK and LongRoPE choose their RoPE frequencies from the current sequence length. (xPos
caches its scaled keys with the centre they were made with and rescales them when it moves,
`XPos.decode_center`, so it needs none of this.) The model caches keys
before rotation and re-rotates them every step, which makes layer 0 exact; but the keys and
values of deeper layers come from hidden states computed with the frequencies of the length at
which each token was decoded. So a KV cache is exact only while every cached entry was made
under the rotation a full forward at the current length would use.

`rotation_key(encoding, seq_len)` names that rotation; `GPT.generate` keeps its cache while the
key stays equal and recomputes the prefix (the cache cleared, `KVCache.clear`) when it
changes; so does seq2seq decoding (`seq2seq_decoding._next_logp`). Only encodings that
declare `length_dependent` are watched: every other cached encoding (RoPE, ReRoPE, Self-Extend,
STRING, biases, contextual ones) gives each token's keys and values independently of the tokens
after it, so its cache stays exact without recomputation. A composite encoding (the per-layer
hybrid) lists the encodings it is made of in `rotation_parts()`; it is length-dependent when one
of them is, and its key is theirs. Inside the trained
length the frequencies of dynamic NTK and LongRoPE do not change, so decoding is incremental;
past it LongRoPE switches once (one recomputation), dynamic NTK changes at every new length
(every step recomputes: the cost of the full forward, the price of exactness).
"""

from __future__ import annotations

from typing import Any

import torch


def changes_with_length(encoding: Any) -> bool:
    """Whether the q/k rotation of `encoding` (or of one of its `rotation_parts`) changes with
    the sequence length, so that cached entries of deeper layers can go stale."""
    parts = getattr(encoding, "rotation_parts", None)
    if parts is not None:
        return any(changes_with_length(part) for part in parts())
    return bool(getattr(encoding, "length_dependent", False))


def rotation_key(encoding: Any, seq_len: int) -> Any:
    """What decides the q/k rotation of `encoding` for a sequence of `seq_len` positions: the
    (inv_freq, attention_factor) of a length-dependent RoPE scaling; None for an encoding whose
    rotation does not depend on the length; a list of its parts' keys for a composite; and
    `seq_len` itself for a length-dependent encoding that does not say how (any new length is a
    new rotation)."""
    parts = getattr(encoding, "rotation_parts", None)
    if parts is not None:
        return [rotation_key(part, seq_len) for part in parts()]
    if not changes_with_length(encoding):
        return None
    if hasattr(encoding, "frequencies"):
        inv_freq, factor = encoding.frequencies(seq_len=seq_len)
        return inv_freq, float(factor)
    return seq_len


def same_rotation(a: Any, b: Any) -> bool:
    """Whether two `rotation_key`s are the same rotation (bitwise)."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(same_rotation, a, b))
    if isinstance(a, tuple) and isinstance(b, tuple):
        return a[1] == b[1] and torch.equal(a[0], b[0])
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return False
    return a == b


def renew_if_stale(cache: Any, encoding: Any, seq_len: int) -> bool:
    """Whether `cache` (a `KVCache`) holds entries made under another rotation than a full
    forward over `seq_len` positions uses — possible only for a length-dependent `encoding`.
    If so it is cleared and takes the new key: the caller refills it with the whole prefix."""
    if not changes_with_length(encoding):
        return False
    key = rotation_key(encoding, seq_len)
    if same_rotation(key, cache.rotation):
        return False
    cache.clear()
    cache.rotation = key
    return True
