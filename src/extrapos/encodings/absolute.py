"""Absolute encodings at the input site: a vector per position added to the token embedding.

x_pos = E[token] + PE(pos),   PE: (s,) positions -> (s, D)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from extrapos.core.errors import UserError
from extrapos.encodings.base import EMBEDDING_INIT_STD, PositionalEncoding, check_base
from extrapos.encodings.registry import register


def sinusoidal_table(positions: Tensor, dim: int, base: float = 10000.0) -> Tensor:
    """Vaswani et al. 2017, "Attention Is All You Need", section 3.5.

        PE(pos, 2i) = sin(pos / base^(2i/dim)),   PE(pos, 2i+1) = cos(pos / base^(2i/dim))

    positions (s,) -> (s, dim) float32, computed from the positions (no length ceiling).
    For odd `dim` the last cosine column is dropped.
    """
    half = (dim + 1) // 2
    inv_freq = base ** (-torch.arange(half, dtype=torch.float64, device=positions.device) * 2 / dim)
    # float64 angles: pos * inv_freq loses digits in float32 at positions ~1e5 and beyond.
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]
    table = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)
    return table[:, :dim].float()


@register("sinusoidal")
class Sinusoidal(PositionalEncoding):
    """Fixed sinusoids added at the input (Vaswani et al. 2017). Defined at every position.

    Args:
        d_model: model width D (set by the model).
        base: wavelength base (10000 in the paper).
        scale: multiplier of the table. The default, √2·0.02, makes its RMS (1/√2 before
            scaling) equal the token embeddings' init std, the balance the paper gets by
            multiplying embeddings by √D. Unscaled sinusoids swamp 0.02-std embeddings: in the
            quick bench that cost 2× perplexity at the train length (17.6 vs 8.4).
    """

    def __init__(
        self, d_model: int, base: float = 10000.0, scale: float = math.sqrt(2) * EMBEDDING_INIT_STD
    ) -> None:
        super().__init__()
        base = check_base("sinusoidal", base)
        if not scale > 0:
            raise UserError(f"sinusoidal: scale must be > 0, got {scale}")
        self.d_model = d_model
        self.base = float(base)
        self.scale = float(scale)

    def input_embedding(self, positions: Tensor) -> Tensor:
        return sinusoidal_table(positions, self.d_model, self.base) * self.scale


@register("learned")
class Learned(PositionalEncoding):
    """A trained table of `max_len` vectors (GPT-2; Radford et al. 2019). Has a true limit:
    positions >= max_len raise a `UserError` naming it.

    Args:
        d_model: model width D (set by the model).
        max_len: rows of the table; the longest sequence the model can read.
        init_std: standard deviation of the normal initialization.
    """

    def __init__(
        self, d_model: int, max_len: int = 1024, init_std: float = EMBEDDING_INIT_STD
    ) -> None:
        super().__init__()
        if max_len < 1:
            raise UserError(f"learned: max_len must be >= 1, got {max_len}")
        self.max_len = int(max_len)
        self.table = nn.Parameter(torch.randn(max_len, d_model) * init_std)

    def input_embedding(self, positions: Tensor) -> Tensor:
        if positions.numel() and int(positions.min()) < 0:  # table[-1] would be the last row
            raise UserError(
                f"learned: position {int(positions.min())} is negative; a table has rows "
                f"0..{self.max_len - 1} only"
            )
        self.check_positions(int(positions.max()))
        return self.table[positions]

    def extra_repr(self) -> str:
        return f"max_len={self.max_len}, {super().extra_repr()}"


@register("nope")
class NoPE(PositionalEncoding):
    """No positional encoding (Kazemnejad et al. 2023, "The Impact of Positional Encoding on
    Length Generalization in Transformers"). A causal mask alone lets a decoder infer position.
    Uses no site, so the model is exactly the position-free Transformer."""


__all__ = ["Learned", "NoPE", "Sinusoidal", "sinusoidal_table"]
