"""A learned continuous function of position at the input site: PE(pos) = f_θ(φ(pos)).

    φ(pos) = [sin(pos·ω_l), cos(pos·ω_l)]_{l=0..F-1} ⊕ [log(1 + pos) / log(base)]
    ω_l = base^(-l/F)                           (fixed, log-spaced: Vaswani et al.'s frequencies)
    f_θ = Linear(2F+1 -> hidden) -> GELU -> Linear(hidden -> D)   (learned)

The family: an MLP over Fourier features of the position, as in Li et al. 2021, "Learnable
Fourier Features for Multi-Dimensional Spatial Positional Encoding" (NeurIPS; learnable
frequencies, here fixed) and Tancik et al. 2020 (Fourier features for coordinate MLPs); the
log(1 + pos) input is FIRE's log transform (Li et al. 2023, arXiv:2310.04418) applied to the
absolute position. Continuous-position encodings in the same spirit: CAPE (Likhomanenko et al.
2021) and Wang et al. 2020, "Encoding Word Order in Complex Embeddings" (learned amplitude,
frequency and phase per dim).

Extrapolation by construction: φ is defined, bounded (the Fourier part in [-1, 1]; the log part
grows like log pos, 1.5 at pos = 10^6 for base 10^4) and smooth (Lipschitz in pos) at every
real position, so f_θ(φ(pos)) is finite and smooth for any pos; nothing is tabulated. Angles are
float64 (pos·ω keeps its digits at 10^6), the MLP float32.

Shapes: positions (s,) int64 (or float, for the pure `functional_features`) -> (s, D) float32.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from extrapos.core.errors import UserError
from extrapos.encodings.absolute import sinusoidal_table
from extrapos.encodings.base import EMBEDDING_INIT_STD, PositionalEncoding, check_base
from extrapos.encodings.registry import register


def functional_features(positions: Tensor, num_frequencies: int, base: float) -> Tensor:
    """φ(pos): (s,) positions (int or float, >= 0) -> (s, 2F + 1) float32.

    Columns 0 .. 2F-1 are sinusoids interleaved (sin, cos) at ω_l = base^(-l/F) (exactly
    `sinusoidal_table` of width 2F for integer positions); the last is log(1 + pos)/log(base).
    """
    pos = positions.to(torch.float64)
    inv_freq = base ** (-torch.arange(num_frequencies, dtype=torch.float64) / num_frequencies)
    angles = pos[:, None] * inv_freq.to(pos.device)[None, :]
    fourier = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)
    log_pos = torch.log1p(pos)[:, None] / math.log(base)
    return torch.cat((fourier, log_pos), dim=-1).float()


@register("functional")
class Functional(PositionalEncoding):
    """PE(pos) = MLP(φ(pos)), a learned function of the position defined at every position
    (module docstring: formula, family, extrapolation).

    Args:
        d_model: model width D (set by the model).
        num_frequencies: F, the number of fixed log-spaced frequencies (2F sinusoid inputs).
        hidden: width of the MLP's hidden layer.
        base: the longest wavelength is 2π·base; also normalizes the log(1 + pos) input.
        init_std: std of the output layer's init weights; with the default, PE starts on the
            order of the token embeddings' 0.02 (its RMS is 0.02 × the hidden activations' RMS).
    """

    def __init__(
        self,
        d_model: int,
        num_frequencies: int = 16,
        hidden: int = 64,
        base: float = 10000.0,
        init_std: float = EMBEDDING_INIT_STD,
    ) -> None:
        super().__init__()
        if num_frequencies < 1:
            raise UserError(f"functional: num_frequencies must be >= 1, got {num_frequencies}")
        if hidden < 1:
            raise UserError(f"functional: hidden must be >= 1, got {hidden}")
        base = check_base("functional", base)
        if not init_std > 0:
            raise UserError(f"functional: init_std must be > 0, got {init_std}")
        self.num_frequencies, self.base = int(num_frequencies), float(base)
        self.mlp = nn.Sequential(
            nn.Linear(2 * num_frequencies + 1, hidden), nn.GELU(), nn.Linear(hidden, d_model)
        )
        nn.init.normal_(self.mlp[2].weight, std=init_std)
        nn.init.zeros_(self.mlp[2].bias)

    def input_embedding(self, positions: Tensor) -> Tensor:
        return self.mlp(functional_features(positions, self.num_frequencies, self.base))

    def extra_repr(self) -> str:
        return f"num_frequencies={self.num_frequencies}, base={self.base:g}, {super().extra_repr()}"


# sinusoidal_table is the same Fourier block for integer positions (tested); imported for users.
__all__ = ["Functional", "functional_features", "sinusoidal_table"]
