"""The positional-encoding interface: four sites where position can enter a Transformer.

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
| `attention` | `attend(q, k, v, q_positions, k_positions, q_offset, layer)` | the attention output |

The `attention` site is for methods that remap relative positions pairwise and so cannot be
expressed as one rotation or one table (ReRoPE, Self-Extend, STRING): the encoding receives
raw, unrotated q and k (the model caches keys before rotation for it) and computes attention.
Content-dependent scores (CoPE, DAPE, Transformer-XL's u/v terms) use the same site.

An encoding overrides the hooks of the sites it uses; `sites` is derived from which hooks a class
overrides, so attention and the model call exactly what is implemented and no `use_*` flags exist.
Positions are explicit 1-D int64 tensors (shared across the batch); the default is `arange`.

Biases are added to the *scaled* scores, softmax(q·kᵀ/√d + B), as in the ALiBi and T5 code.
Distance-only biases are Toeplitz, so the encoding returns one value per distance and head; the
attention code never materializes an (h, n, n) tensor from it (see `extrapos.kernels.attention`).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from extrapos.core.errors import UserError

Site = Literal["input", "qk", "bias", "ffn"]

#: standard deviation of the token-embedding init in `extrapos.models.gpt` (GPT-2's); input-site
#: encodings size their vectors against it.
EMBEDDING_INIT_STD = 0.02

_SITE_HOOKS: dict[str, str] = {
    "input": "input_embedding",
    "qk": "rotate_qk",
    "bias": "distance_bias",
    "ffn": "ffn_term",
    "attention": "attend",
}


class PositionalEncoding(nn.Module):
    """Base class. Subclasses override the hooks of the sites they use (see module docstring).

    Class attributes:
        name: the registry name (set by `register`).
        max_len: the number of positions the encoding can represent, or None when unbounded.
            Only encodings with a true limit (a learned table) set it; asking past it raises.
        rotation_depends_on_length: whether the q/k rotation changes with the sequence length
            (dynamic NTK, LongRoPE): the model then caches keys *before* rotation and rotates
            the whole cache at each step, so decoding stays exact.
        supports_kv_cache: whether keys computed at earlier steps stay valid when the sequence
            grows, so incremental decoding equals a full forward.
    """

    name: str = "?"
    max_len: int | None = None
    supports_kv_cache: bool = True
    rotation_depends_on_length: bool = False

    @property
    def sites(self) -> frozenset[str]:
        """The sites whose hooks this encoding implements."""
        cls = type(self)
        return frozenset(
            site
            for site, hook in _SITE_HOOKS.items()
            if getattr(cls, hook) is not getattr(PositionalEncoding, hook)
        )

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

    # --- the four sites; each default says the site is unused -----------------------------

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

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        q_positions: Tensor,
        k_positions: Tensor,
        q_offset: int,
        layer: int = 0,
    ) -> Tensor:
        """Causal attention from raw q (b, h, s, d) and raw k, v (b, h, t, d) -> (b, h, s, d);
        `layer` indexes per-layer parameters (see `num_layers` in the registry)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"sites={sorted(self.sites)}"


def default_positions(length: int, offset: int = 0, device: torch.device | None = None) -> Tensor:
    """Positions offset .. offset + length - 1 as a (length,) int64 tensor."""
    return torch.arange(offset, offset + length, device=device, dtype=torch.long)
