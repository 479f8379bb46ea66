"""The decoder's configuration: shape and positional encoding, by name (serializable).

Kept free of torch so that building the command line (flags generated from these fields) is
instant; the encoding name is checked against the registry on creation.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from extrapos.core.errors import UserError
from extrapos.core.settings import check_known_fields, setting


@dataclass
class GPTConfig:
    """Model shape and encoding. Serializable (names, not classes); validated on creation."""

    vocab_size: int = 256
    n_layer: int = setting(4, "Transformer blocks")
    n_head: int = setting(4, "attention heads")
    d_model: int = setting(128, "model width")
    encoding: str = setting("rope", "positional encoding name (see `extrapos list`)")
    encoding_params: dict[str, Any] = setting({}, "encoding parameters, e.g. '{\"base\": 10000}'")
    d_ff: int | None = None  # SwiGLU hidden width; None = 8/3·D rounded up to a multiple of 16
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    # Randomized positions (Ruoss et al. 2023, "Randomized Positional Encodings Boost Length
    # Generalization of Transformers"): a sequence of s tokens gets a sorted random subset of
    # [0, random_positions) instead of 0..s-1, so positions of long test sequences were seen in
    # training. None: off.
    random_positions: int | None = None
    # False: an encoder — every token attends to every token, distance biases use their
    # bidirectional form (`signed_distance_bias`: symmetric ALiBi, T5's both-sign buckets). Not
    # trainable with next-token loss and not for generation.
    causal: bool = True
    # Token embeddings times sqrt(d_model) before the positional input is added: the recipe of
    # Vaswani et al. 2017 (§3.4) and fairseq's baseline (used by the ALiBi paper), where
    # unit-amplitude sinusoids are added to embeddings of that scale. False (default, what every
    # extrapos run did before this field existed): embeddings as initialized (std 0.02).
    embed_scale: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layer", "n_head", "d_model"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UserError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_head:
            raise UserError(
                f"GPTConfig.d_model={self.d_model} must be divisible by n_head={self.n_head}"
            )
        if self.d_ff is None:
            self.d_ff = 16 * math.ceil(8 * self.d_model / 3 / 16)
        elif self.d_ff < 1:
            raise UserError(f"GPTConfig.d_ff must be positive, got {self.d_ff}")
        if self.random_positions is not None and self.random_positions < 1:
            raise UserError(
                f"GPTConfig.random_positions must be a positive length, got {self.random_positions}"
            )
        if not self.norm_eps > 0:  # eps <= 0 divides by zero (or a negative) on a zero vector
            raise UserError(f"GPTConfig.norm_eps must be > 0, got {self.norm_eps}")
        from extrapos.encodings.registry import encoding_class  # torch: only when validating

        encoding_class(self.encoding)  # unknown name -> UserError listing the known ones
        self.encoding_params = dict(self.encoding_params)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GPTConfig:
        check_known_fields(cls, data, "model config")
        return cls(**data)
