"""A learned, stable recurrence at the input site: PE(pos) = A · PE(pos - 1), PE(0) = v.

A is block-diagonal: block l (dims 2l, 2l+1) is a rotation by a learned angle θ_l times a
learned contraction ρ_l = exp(-λ_l) in (0, 1), λ_l = exp(ν_l) > 0; for odd D the last dim is a
1×1 block ρ. The recurrence has the closed form

    PE(pos)[2l:2l+2] = ρ_l^pos · R(pos·θ_l) · v[2l:2l+2]

so any position costs O(D), with no table and no loop over positions. Stability is built in:
|PE(pos)| <= |v| for every pos >= 0 (each block is a rotation times ρ <= 1), so the encoding is
bounded and finite at 10^6 and beyond; far positions fade toward 0 at learned per-block rates.

Sources. This is FLOATER (Liu et al. 2020, "Learning to Encode Position for Transformer with
Continuous Dynamical Model", ICML) with linear time-invariant dynamics dp/dt = W p whose matrix is
normal (2×2 blocks [[-λ, -θ], [θ, -λ]]): A = exp(W) and the ODE is solved exactly rather than
numerically. The parametrization ρ = exp(-exp(ν)) is the LRU's (Orvieto et al. 2023,
"Resurrecting Recurrent Neural Networks for Long Sequences"), which keeps |ρ| < 1 for every ν.
Init: θ_l = base^(-2l/D) (the sinusoidal frequencies), λ log-spaced from max_decay (l = 0) to
min_decay, v = (s, 0) per block with s = √2·0.02, so at init PE(pos) is the sinusoidal table at
the token-embedding scale times a per-frequency decay.

Angles and decays are float64 (pos·θ keeps its digits at 10^6), cast to float32 at the end.
Shapes: positions (s,) int64 >= 0 -> (s, D) float32.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from extrapos.core.errors import UserError
from extrapos.encodings.base import EMBEDDING_INIT_STD, PositionalEncoding
from extrapos.encodings.registry import register


def recurrent_closed_form(
    positions: Tensor, angles: Tensor, decays: Tensor, initial: Tensor
) -> Tensor:
    """A^pos · v for the block-diagonal A described in the module docstring.

    positions (s,) >= 0; angles θ (P,) and decays λ (B,) with B = P or P + 1 (the extra one for
    an odd last dim); initial v (D,), D = 2P or 2P + 1 -> (s, D) in float64 (differentiable).
    """
    pos = positions.to(torch.float64)[:, None]
    pairs = angles.shape[0]
    rho = torch.exp(-pos * decays.double()[None, :])  # (s, B)
    phase = pos * angles.double()[None, :]  # (s, P)
    cos, sin = phase.cos(), phase.sin()
    v = initial.double()
    a, b = v[0 : 2 * pairs : 2], v[1 : 2 * pairs : 2]  # (P,)
    first = rho[:, :pairs] * (a * cos - b * sin)
    second = rho[:, :pairs] * (a * sin + b * cos)
    out = torch.stack((first, second), dim=-1).flatten(-2)  # (s, 2P) interleaved
    if initial.shape[0] > 2 * pairs:  # odd D: the last dim only decays
        out = torch.cat((out, rho[:, pairs:] * v[2 * pairs :]), dim=-1)
    return out


def recurrence_matrix(angles: Tensor, decays: Tensor, dim: int) -> Tensor:
    """The (D, D) float64 matrix A of one recurrence step (for tests and inspection)."""
    a = torch.zeros(dim, dim, dtype=torch.float64)
    for index, (theta, lam) in enumerate(zip(angles.double(), decays.double(), strict=False)):
        rho = torch.exp(-lam)
        c, s = torch.cos(theta), torch.sin(theta)
        block = torch.stack((torch.stack((c, -s)), torch.stack((s, c)))) * rho
        a[2 * index : 2 * index + 2, 2 * index : 2 * index + 2] = block
    if dim % 2:
        a[-1, -1] = torch.exp(-decays.double()[-1])
    return a


@register("recurrent")
class Recurrent(PositionalEncoding):
    """PE(pos) = A·PE(pos - 1): learned damped rotations, evaluated in closed form (module
    docstring: formula, sources, init, stability).

    Args:
        d_model: model width D (set by the model).
        base: sets the initial angles θ_l = base^(-2l/D), as in the sinusoidal encoding.
        min_decay, max_decay: the initial decay rates λ (per position), log-spaced between them;
            the defaults keep 88% .. ~100% of a block's norm at position 128 and 13% .. 99.8%
            at 2048; the fastest block is at 4.5e-5 by position 10^4.
        scale: initial norm per block of PE(0) (the default matches the sinusoidal encoding's
            token-embedding scale).
    """

    def __init__(
        self,
        d_model: int,
        base: float = 10000.0,
        min_decay: float = 1e-6,
        max_decay: float = 1e-3,
        scale: float = math.sqrt(2) * EMBEDDING_INIT_STD,
    ) -> None:
        super().__init__()
        if not base > 1:
            raise UserError(f"recurrent: base must be > 1, got {base}")
        if not 0 < min_decay <= max_decay:
            raise UserError(
                f"recurrent: need 0 < min_decay <= max_decay, got min_decay={min_decay}, "
                f"max_decay={max_decay}"
            )
        if not scale > 0:
            raise UserError(f"recurrent: scale must be > 0, got {scale}")
        pairs, blocks = d_model // 2, (d_model + 1) // 2
        self.angles = nn.Parameter(base ** (-2.0 * torch.arange(pairs) / d_model))
        log_decays = torch.linspace(math.log(max_decay), math.log(min_decay), blocks)
        self.log_decay = nn.Parameter(log_decays)  # ν, λ = exp(ν)
        initial = torch.zeros(d_model)
        initial[0::2] = scale  # v = (s, 0) per block
        self.initial = nn.Parameter(initial)

    @property
    def decays(self) -> Tensor:
        """λ (blocks,) > 0; ρ = exp(-λ)."""
        return self.log_decay.exp()

    def input_embedding(self, positions: Tensor) -> Tensor:
        if positions.numel() and int(positions.min()) < 0:
            raise UserError(
                f"recurrent: positions must be >= 0 (PE(pos) = A^pos·PE(0)), got {int(positions.min())}"
            )
        return recurrent_closed_form(positions, self.angles, self.decays, self.initial).float()


__all__ = ["Recurrent", "recurrence_matrix", "recurrent_closed_form"]
