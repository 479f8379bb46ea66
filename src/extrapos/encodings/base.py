"""The positional-encoding interface: five sites where position can enter a Transformer.

Notation used in every encoding module:

    b  batch size              s  query length (new tokens)     t  key length (cache + new)
    h  attention heads         d  head dim                      D  model width (d_model)
    n  number of distances (a distance-bias table covers i - j = 0 .. n-1)

| site    | hook                                   | returns                     |
|---------|----------------------------------------|-----------------------------|
| `input` | `input_embedding(positions)`           | (s, D) added to token embeddings |
| `qk`    | `rotate_qk(q, k, q_positions, k_positions)` | rotated (b, h, s, d) q and k |
| `bias`  | `distance_bias(num_distances)`         | (h, n) table, B[h, i, j] = table[h, pos_i - pos_j] |
| `ffn`   | `ffn_term(positions, d_ff)`            | (s, d_ff) added inside the FFN |
| `attention` | `attend(q, k, v, positions, layer, probe)` | the attention output (b, h, s, d) |

`positions` is a `Positions(q, k, q_offset)`: query positions (s,), key positions (t,) and the
sequence index of the first query (the cached length). Which site an encoding uses is decided in
one place, `extrapos.encodings.dispatch.encoded_attention`, called by the model (every layer),
by `hybrid` (per layer) and, through the model, by the attention diagnostics.

The `attention` site is for methods that remap relative positions pairwise and so cannot be
expressed as one rotation or one table (ReRoPE, Self-Extend, STRING): the encoding receives
raw, unrotated q and k (the model caches keys before rotation for it) and computes attention.
Content-dependent scores (CoPE, DAPE, Transformer-XL's u/v terms) use the same site.

An encoding overrides the hooks of the sites it uses; `sites` is derived from which hooks a class
overrides, so attention and the model call exactly what is implemented and no `use_*` flags exist.
Positions are explicit 1-D int64 tensors (shared across the batch); the default is `arange`.

KV-cache behaviour is one field, `cache`:

| `cache` | the model caches keys … | encodings |
|---|---|---|
| `"rotated"` | after the q/k rotation (the default; also for bias/input/FFN/no sites) | rope, alibi, xpos (with its centre, `Positions.center`), … |
| `"raw"` | before any rotation, and hands all raw keys to the encoding at each step | dynamic NTK, LongRoPE, every `attention`-site encoding |
| `"none"` | not at all: cached keys go stale as the sequence grows, `generate` recomputes | — |

`attend` receives an optional `probe(start, probs)` callback: an encoding that computes attention
itself calls it with the attention probabilities of each query chunk (b, h, c, t') — through
`extrapos.kernels.chunks.blockwise_attention`, the one query-chunk loop — so attention
diagnostics read the matrix the output is computed from.

Biases are added to the *scaled* scores, softmax(q·kᵀ/√d + B), as in the ALiBi and T5 code.
Distance-only biases are Toeplitz, so the encoding returns one value per distance and head; the
attention code never materializes an (h, n, n) tensor from it (see `extrapos.kernels.attention`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from extrapos.core.errors import UserError
from extrapos.kernels.chunks import Probe

Site = Literal["input", "qk", "bias", "ffn", "attention"]
CacheMode = Literal["rotated", "raw", "none"]
CACHE_MODES: tuple[str, ...] = ("rotated", "raw", "none")

#: standard deviation of the token-embedding init in `extrapos.models.gpt` (GPT-2's); input-site
#: encodings size their vectors against it.
EMBEDDING_INIT_STD = 0.02

_SITE_HOOKS: dict[Site, str] = {
    "input": "input_embedding",
    "qk": "rotate_qk",
    "bias": "distance_bias",
    "ffn": "ffn_term",
    "attention": "attend",
}


@dataclass(frozen=True)
class Positions:
    """Where the queries and keys of one attention call sit.

    q: (s,) int64 query positions; k: (t,) int64 key positions (cached keys first, then the s
    new ones, so k[q_offset:] are the queries' own); q_offset: sequence index of the first query
    (the number of cached keys). Causality is by sequence index, the encodings read positions.
    center: the scaling centre the cached keys were made with, for an encoding whose rotated
    keys carry one (xPos: `decode_center`); kept by the KV cache so that cached keys stay
    valid; None = the encoding centres each call on its own positions.
    """

    q: Tensor
    k: Tensor
    q_offset: int = 0
    center: float | None = None

    @classmethod
    def arange(cls, s: int, q_offset: int = 0, device: torch.device | None = None) -> Positions:
        """Consecutive positions: queries at q_offset .. q_offset + s - 1, keys at 0 .. that."""
        k = torch.arange(q_offset + s, device=device, dtype=torch.long)
        return cls(k[q_offset:], k, q_offset)

    def for_keys(self, t: int) -> Tensor:
        """Positions of the last t keys (the new ones when only they are passed): the `q`
        tensor itself when those are the queries' own keys, so per-positions memos (RoPE's
        cos/sin) serve queries and keys at once."""
        if t == self.q.shape[0] and self.k.shape[0] - t == self.q_offset:
            return self.q
        return self.k[self.k.shape[0] - t :]


def _storage_key(t: Tensor) -> tuple[int, int]:
    """A tensor's storage and in-place version (inference tensors have none: -1)."""
    return t.data_ptr(), -1 if t.is_inference() else t._version


class PositionalEncoding(nn.Module):
    """Base class. Subclasses override the hooks of the sites they use (see module docstring).

    Class attributes:
        name: the registry name (set by `register`).
        max_len: the number of positions the encoding can represent, or None when unbounded.
            Only encodings with a true limit (a learned table) set it; asking past it raises.
        cache: how the model caches keys (module docstring): "rotated" (after rotation),
            "raw" (before it; the rotation depends on the length, or the encoding attends
            itself) or "none" (cached keys go stale; no incremental decoding). Encodings at the
            `attention` site cache "raw" (their `attend` gets all raw keys) or "none".
        bidirectional_attend: for `attention`-site encodings, whether `attend` also takes
            `causal=False, key_mask=...` (an encoder form); the others are refused in encoders.
        prefix_stable_table: for `bias`-site encodings, whether `distance_bias(N)[:, :n]`
            equals `distance_bias(n)` bit for bit for every n <= N (each entry computed
            alone, by exact operations: ALiBi's products, T5's gather), so that inference may
            reuse one table across calls (`stable_distance_bias`). Not KERPLE: its log/pow
            may round an entry differently in a vectorised loop's body and its scalar tail.
    """

    name: str = "?"
    max_len: int | None = None
    cache: CacheMode = "rotated"
    bidirectional_attend: bool = False
    prefix_stable_table: bool = False

    @property
    def sites(self) -> frozenset[str]:
        """The sites whose hooks this encoding implements (a property of the class, computed
        once per class: every layer of every decoding step asks)."""
        return _class_sites(type(self))

    @property
    def shift_invariant(self) -> bool:
        """Whether positions enter only through differences pos_i - pos_j, so shifting all
        positions by a constant changes nothing. Derived from the sites (q/k rotations and
        distance biases are relative, input vectors are not); classes override it where the
        sites don't decide it."""
        return self.sites <= {"qk", "bias"}

    def check_positions(self, max_position: int) -> None:
        """Raise a `UserError` when `max_position` is past what the encoding can represent."""
        if self.max_len is not None and max_position >= self.max_len:
            raise UserError(
                f"encoding '{self.name}' has a table of max_len={self.max_len} positions, but "
                f"position {max_position} was requested (sequence length {max_position + 1}); "
                f"build it with max_len >= {max_position + 1}, or use an encoding that "
                f"extrapolates (e.g. alibi, rope)"
            )

    # --- the five sites; each default says the site is unused -----------------------------

    def input_embedding(self, positions: Tensor) -> Tensor:
        """(s,) int64 positions -> (s, D) float32 vectors added to the token embeddings."""
        raise NotImplementedError

    def rotate_qk(
        self, q: Tensor, k: Tensor, q_positions: Tensor, k_positions: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Rotate q (b, h, s, d) at q_positions (s,) and k (b, h, s', d) at k_positions (s',)."""
        raise NotImplementedError

    def distance_bias(self, num_distances: int) -> Tensor:
        """-> (h, n) float32 table: entry [h, k] is the score bias for pos_i - pos_j = k >= 0."""
        raise NotImplementedError

    def stable_distance_bias(self, num_distances: int) -> Tensor:
        """`distance_bias(num_distances)` without autograd, as a prefix of a table kept across
        calls while the encoding's parameters and buffers are unchanged (compared by value, or
        for large buffers by storage and in-place version) and grown by doubling: a decoding
        step otherwise rebuilds the whole (h, t) table per token. Only for
        `prefix_stable_table` encodings (the same numbers); the others get a fresh table."""
        if not self.prefix_stable_table:
            with torch.no_grad():
                return self.distance_bias(num_distances)
        kept = getattr(self, "_stable_table", None)  # (state, table), set below
        if kept is None or kept[1].shape[-1] < num_distances or not self._same_state(kept[0]):
            old = kept[1].shape[-1] if kept is not None else 0
            # grow by doubling only when the length outgrows the kept table; a parameter change
            # alone rebuilds it at its size (train/eval loops rebuild it after every step)
            size = max(num_distances, 2 * old, 256) if num_distances > old else old
            with torch.no_grad():
                table = self.distance_bias(size)
            # the state after building: a table cached in a buffer (Sandwich) is replaced then
            self._stable_table = kept = (self._table_state(), table)
        return kept[1][:, :num_distances]

    #: parameters and buffers up to this many elements are compared by value (a write through
    #: `.data`, or into an inference tensor, moves no version counter); larger ones (derived
    #: caches, e.g. Sandwich's table) by storage and version
    _STATE_BY_VALUE = 4096

    def _table_state(self) -> list[Any]:
        """What a kept table depends on: every parameter and buffer (see `_STATE_BY_VALUE`)."""
        return [
            t.detach().clone() if t.numel() <= self._STATE_BY_VALUE else _storage_key(t)
            for t in (*self.parameters(), *self.buffers())
        ]

    def _same_state(self, kept: list[Any]) -> bool:
        now = [*self.parameters(), *self.buffers()]
        if len(now) != len(kept):
            return False
        for t, was in zip(now, kept, strict=True):
            if isinstance(was, Tensor):
                if was.shape != t.shape or was.device != t.device or not torch.equal(was, t):
                    return False
            elif was != _storage_key(t):
                return False
        return True

    def signed_distance_bias(self, num_distances: int) -> Tensor:
        """Bias table for an encoder (non-causal) model: (h, 2n - 1) float32 whose entry
        [h, n - 1 + k] is the bias for pos_i - pos_j = k, k in [-(n - 1), n - 1].

        Default: the symmetric extension B(k) = B(|k|) of `distance_bias` — symmetric ALiBi
        (-m·|i - j|), KERPLE, Sandwich. T5 overrides it with its both-sign buckets.
        """
        table = self.distance_bias(num_distances)
        return torch.cat((table[:, 1:].flip(-1), table), dim=-1)

    def ffn_term(self, positions: Tensor, d_ff: int) -> Tensor:
        """(s,) positions -> (s, d_ff) term added to the FFN's hidden pre-activation."""
        raise NotImplementedError

    def acting_encoding(self, layer: int) -> PositionalEncoding:
        """The encoding that acts at `layer`, its KV cache included: this one. A composite
        that hands whole layers to an inner encoding (`hybrid`) names it, and the dispatch then
        runs that encoding there, caching keys as it does (rotated keys stay rotated)."""
        return self

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        positions: Positions,
        layer: int = 0,
        probe: Probe | None = None,
    ) -> Tensor:
        """Causal attention from raw q (b, h, s, d) and raw k, v (b, h, t, d) -> (b, h, s, d);
        `layer` indexes per-layer parameters (see `num_layers` in the registry); `probe`, when
        given, receives each query chunk's attention probabilities (module docstring)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"sites={sorted(self.sites)}"

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.cache not in CACHE_MODES:
            raise TypeError(f"{cls.__name__}.cache must be one of {CACHE_MODES}, got {cls.cache!r}")
        if cls.attend is not PositionalEncoding.attend and cls.cache == "rotated":
            raise TypeError(
                f"{cls.__name__} attends itself from raw keys: declare cache = 'raw' (or 'none')"
            )


@functools.cache
def _class_sites(cls: type) -> frozenset[str]:
    return frozenset(
        site
        for site, hook in _SITE_HOOKS.items()
        if getattr(cls, hook) is not getattr(PositionalEncoding, hook)
    )


def default_positions(length: int, offset: int = 0, device: torch.device | None = None) -> Tensor:
    """Positions offset .. offset + length - 1 as a (length,) int64 tensor."""
    return torch.arange(offset, offset + length, device=device, dtype=torch.long)


def check_base(owner: str, base: float) -> float:
    """`base` as a float, refusing what is not a usable frequency base: NaN, ±inf and values
    <= 1 (base^(-2i/d) would be NaN, 0 for every i > 0, or growing instead of decaying).
    NaN passed the old `base <= 1` checks, since every comparison with NaN is false."""
    try:
        value = float(base)
    except (TypeError, ValueError):
        raise UserError(f"{owner}: base must be a number > 1, got {base!r}") from None
    if not (math.isfinite(value) and value > 1):
        raise UserError(f"{owner}: base must be a finite number > 1, got {base!r}")
    return value
