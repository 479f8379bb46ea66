"""xPos: rotary embedding with a per-dimension exponential decay (Sun et al. 2022, "A
Length-Extrapolatable Transformer", arXiv:2212.10554; reference: microsoft/torchscale).

Pair l of a head (dims l and l + d/2, RoPE's half-split layout) is rotated as in RoPE and scaled

    q at position n:  R_n q · ζ_l^((n - c)/scale_base)
    k at position m:  R_m k · ζ_l^(-(m - c)/scale_base)
    ζ_l = (l/(d/2) + γ)/(1 + γ),  l = 0 .. d/2 - 1,  γ = 0.4

so the score q_n·k_m = Σ_l (rotation term depending on n - m) · ζ_l^((n - m)/scale_base): a decay
with distance that is strongest (ζ_0 = γ/(1+γ) ≈ 0.29) in the fastest-rotating pairs and nearly
absent (ζ → 1) in the slowest. The centre c cancels in every score; it only keeps the factors
representable. torchscale's layout pairs adjacent dims (2l, 2l+1); ours pairs (l, l + d/2) with
the same ζ_l per pair, a fixed permutation of the head dims.

Float range. ζ_0^(x/scale_base) leaves float32 at |x| ≈ 88/1.25·scale_base ≈ 36k positions for
scale_base 512, so the factors are computed relative to a centre c:

- `center=None` (default, the reference's choice): c is the middle of the positions in the call,
  so any absolute position works (10^6 and beyond) as long as one call spans at most
  `max_span(dtype)` positions (≈ 67k in float32/bf16 at scale_base 512).
- `center=<int>`: a fixed centre; positions must lie within `max_distance(float32)` of it
  (`check_positions` raises).

KV cache (both modes, `cache = "rotated"`): the cached keys are the rotated, scaled ones, so a
decoding step rotates only its new token. The score factorises, ζ^((n - m)/s) =
ζ^((n - c)/s)·ζ^(-(m - c)/s), for any c: the cache keeps the centre its keys were made with
(`decode_center`: the prefill's own centre, kept while every position stays within
`max_distance` of it), and new queries and keys use that centre. When the positions outgrow it,
the centre moves to the middle of the cached and new positions and the cached keys are
rescaled once by ζ^((c_new - c_old)/s) (`rescale_keys`, O(t), amortised over the ~max_distance
steps until the next move) — instead of re-rotating the whole cache at every step. The scores
are the same function of n - m as in the one-pass forward (whose centre is the middle of all
positions), equal up to float rounding.

A call that would leave the range raises a `UserError` naming `scale_base` rather than returning
inf/NaN or clamped (and then wrong) factors. Scales are float64, the product is float32, cast to
the input dtype at the end.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from extrapos.core.errors import UserError
from extrapos.encodings.registry import register
from extrapos.encodings.rotary import (
    RoPE,
    one_pair,
    one_position,
    rotate_by_matrix,
    rotate_half_split,
    rotate_pair,
)

#: headroom left for the magnitudes of q and k entries (up to 2^10) when sizing the exponent range.
_HEADROOM = math.log(2.0**10)


def xpos_zeta(rotary_dim: int, gamma: float = 0.4) -> Tensor:
    """ζ_l = (l/(r/2) + γ)/(1 + γ) for l = 0 .. r/2 - 1 -> (r/2,) float64, in [γ/(1+γ), 1)."""
    half = rotary_dim // 2
    return (torch.arange(half, dtype=torch.float64) / half + gamma) / (1 + gamma)


def xpos_scale(
    positions: Tensor, zeta: Tensor, scale_base: float, center: float = 0.0, sign: int = 1
) -> Tensor:
    """ζ^(sign·(pos - center)/scale_base) for positions (s,) and ζ (r/2,) -> (s, r/2) float64
    (sign +1 for queries, -1 for keys)."""
    exponent = sign * (positions.to(torch.float64) - center) / scale_base
    return torch.exp(exponent[:, None] * zeta.to(positions.device).log()[None, :])


@register("xpos")
class XPos(RoPE):
    """xPos (Sun et al. 2022): RoPE on every head dim times the decay ζ^((n - m)/scale_base)
    (module docstring: formula, shapes, float range, KV cache).

    Args:
        head_dim: dims per head d (set by the model); even.
        base: RoPE frequency base (10000, as in the paper).
        scale_base: positions per e-fold of ζ's exponent (512 in the paper and torchscale).
        gamma: γ in ζ_l = (l/(d/2) + γ)/(1 + γ) (0.4 in the paper).
        center: None = centre each call on its own positions (any absolute position; a KV
            cache keeps its own centre, `decode_center`); an int = a fixed centre (positions
            within `max_distance(torch.float32)` of it).
    """

    def __init__(
        self,
        head_dim: int,
        base: float = 10000.0,
        scale_base: float = 512.0,
        gamma: float = 0.4,
        center: int | None = None,
    ) -> None:
        if head_dim < 2 or head_dim % 2:
            raise UserError(f"xpos: head_dim must be a positive even number, got {head_dim}")
        if not scale_base > 0:
            raise UserError(f"xpos: scale_base must be > 0, got {scale_base}")
        if not gamma > 0:
            raise UserError(f"xpos: gamma must be > 0, got {gamma}")
        if center is not None and (isinstance(center, bool) or not isinstance(center, int)):
            raise UserError(f"xpos: center must be an integer position or None, got {center!r}")
        super().__init__(head_dim, base)
        self.scale_base = float(scale_base)
        self.gamma = float(gamma)
        self.center = center
        self.zeta = xpos_zeta(head_dim, self.gamma)  # (d/2,) float64, a constant
        self._max_distances: dict[torch.dtype, int] = {}
        self._xpos_block: tuple[Tensor, float, Tensor] | None = None  # see `xpos_step_block`
        # rotated, scaled keys are cached; the cache holds their centre (`decode_center`)
        self.cache = "rotated"

    def max_distance(self, dtype: torch.dtype = torch.float32) -> int:
        """How far (in positions) any position may be from the call's centre: the factors
        ζ_0^(±distance/scale_base) stay within dtype's range with 2^10 of headroom for q and k."""
        if dtype not in self._max_distances:  # asked per layer per decoding step: kept
            limit = math.log(torch.finfo(dtype).max) - _HEADROOM  # allowed |exponent|, ln
            zeta0 = float(self.zeta[0])
            self._max_distances[dtype] = int(limit * self.scale_base / -math.log(zeta0))
        return self._max_distances[dtype]

    def max_span(self, dtype: torch.dtype = torch.float32) -> int:
        """The widest range of positions (max - min) one call may hold with per-call centring."""
        return 2 * self.max_distance(dtype)

    def check_positions(self, max_position: int) -> None:
        super().check_positions(max_position)
        if self.center is not None:
            self._check_range(float(self.center), 0, max_position, torch.float32)

    def _check_range(self, center: float, low: int, high: int, dtype: torch.dtype) -> None:
        """Raise a `UserError` when positions low .. high are too far from `center` for dtype."""
        farthest = low if abs(low - center) > abs(high - center) else high
        allowed = self.max_distance(dtype)
        if abs(farthest - center) <= allowed:
            return
        fix = (
            "use center=None (each call centred on its own positions)"
            if self.center is not None
            else "evaluate windows that span fewer positions"
        )
        raise UserError(
            f"xpos: position {farthest} is {abs(farthest - center):.0f} positions from the "
            f"scaling centre {center:g}, past the {allowed} that keep "
            f"ζ^(±(pos - centre)/scale_base) finite in {dtype} at scale_base="
            f"{self.scale_base:g}; {fix}, or use a larger scale_base"
        )

    def call_center(self, low: int, high: int) -> float:
        """The centre c of a call whose positions run from low to high: the fixed one, or
        their middle, an integer so that a common shift of all positions moves it exactly."""
        return float(self.center) if self.center is not None else float((low + high) // 2)

    def _min_position(self, positions: Tensor) -> int:
        return self._memo.get(positions, "min", lambda: int(positions.min()))

    def decode_center(self, previous: float | None, low: int, high: int) -> float:
        """The centre for a cached call whose cached and new positions run from low to high:
        the fixed one; else `previous` (the centre the cached keys carry) while low and high
        are within `max_distance(float32)` of it, otherwise the middle of low .. high (then
        the cached keys need `rescale_keys`)."""
        if self.center is not None:
            return float(self.center)
        allowed = self.max_distance(torch.float32)
        if previous is not None and max(previous - low, high - previous) <= allowed:
            return previous
        return self.call_center(low, high)

    def rescale_keys(self, k: Tensor, old: float, new: float) -> None:
        """Keys k (b, h, t, d) rotated and scaled with centre `old` become those of centre
        `new`, in place: k · ζ^((new - old)/scale_base) per pair (the rotation is unchanged).
        Computed in float64 (the factor alone may leave float32's range)."""
        factor = torch.exp((new - old) / self.scale_base * self.zeta.log()).to(k.device)
        k.copy_(k.double() * torch.cat((factor, factor)))

    def _scaled_step_matrix(self, positions: Tensor, center: float, sign: int) -> Tensor:
        """The (r, r) matrix of the one position in `positions` for q (sign +1) or k (-1), from
        `xpos_step_block` (its own position, not the call's last: a query before the keys)."""
        pair = self._step_pair(self.max_position(positions), center, positions.device)
        return pair[0] if sign > 0 else pair[1]

    def _step_pair(self, position: int, center: float, device: torch.device) -> Tensor:
        start, block = self.xpos_step_block(position, center, device)
        return block[position - start]

    def xpos_step_block(
        self, position: int, center: float, device: torch.device
    ) -> tuple[int, Tensor]:
        """(start, (B, 2, r, r)): for each position of RoPE's `step_block` holding `position`,
        the RoPE matrix with its columns scaled by ζ^(+(pos - c)/s) (for q) and divided by it
        (for k), built at once and kept while that block and the centre c are."""
        start, rot = self.step_block(position, device)
        kept = self._xpos_block
        if kept is None or kept[0] is not rot or kept[1] != center:
            positions = torch.arange(start, start + rot.shape[0], device=device)
            scale = xpos_scale(positions, self.zeta, self.scale_base, center, +1)
            scale = torch.cat((scale, scale), dim=-1).float()[:, None, :]  # (B, 1, r) columns
            self._xpos_block = kept = (rot, center, torch.stack((rot * scale, rot / scale), 1))
        return start, kept[2]

    def _scaled_rotation(
        self, x: Tensor, positions: Tensor, center: float, sign: int, seq_len: int
    ) -> Tensor:
        if one_position(x):
            key = ("xpos-matrix", seq_len, center, sign)
            matrix = self._memo.get(
                positions, key, lambda: self._scaled_step_matrix(positions, center, sign)
            )
            return rotate_by_matrix(x, matrix)

        def tables() -> tuple[Tensor, Tensor]:  # cos·ζ^(±(pos - c)/s), sin·ζ^(±(pos - c)/s)
            cos, sin = self.cos_sin(positions, seq_len)
            scale = xpos_scale(positions, self.zeta, self.scale_base, center, sign).float()
            return cos * scale, sin * scale

        # the scale is the same for both dims of a pair, so it folds into cos/sin: one
        # rotation, and the tables are built once per forward (`PositionsMemo`), not per layer
        cos, sin = self._memo.get(positions, ("xpos", seq_len, center, sign), tables)
        return rotate_half_split(x, cos, sin)  # float32 inside, cast back to x's dtype

    def rotate_qk(
        self,
        q: Tensor,
        k: Tensor,
        q_positions: Tensor,
        k_positions: Tensor,
        center: float | None = None,
    ) -> tuple[Tensor, Tensor]:
        """q at q_positions times ζ^((n - c)/s), k at k_positions times ζ^(-(m - c)/s), both
        rotated; c = `center` (a KV cache's, see `decode_center`) or `call_center`."""
        if one_pair(q, k, q_positions, k_positions):
            # decoding: one bmm rotates q and k; the checked matrices once per step, not per
            # layer (the key holds everything the checks read)
            mats = self._memo.get(
                q_positions,
                ("xpos-step", center, q.dtype),
                lambda: self._step_matrices(q_positions, center, q.dtype),
            )
            return rotate_pair(q, k, mats)
        center, seq_len = self._checked_center(q_positions, k_positions, center, q.dtype, k.dtype)
        return (
            self._scaled_rotation(q, q_positions, center, +1, seq_len),
            self._scaled_rotation(k, k_positions, center, -1, seq_len),
        )

    def _checked_center(
        self,
        q_positions: Tensor,
        k_positions: Tensor,
        center: float | None,
        *dtypes: torch.dtype,
    ) -> tuple[float, int]:
        """The call's centre and length (max position + 1), after checking that every
        position's factors stay finite in the narrowest of float32 and `dtypes`."""
        low = min(self._min_position(q_positions), self._min_position(k_positions))
        high = max(self.max_position(q_positions), self.max_position(k_positions))
        if center is None:
            center = self.call_center(low, high)
        # the factors are float32 here and then cast: the narrower range decides
        narrowest = min((torch.float32, *dtypes), key=lambda t: torch.finfo(t).max)
        self._check_range(center, low, high, narrowest)
        return center, high + 1

    def _step_matrices(self, positions: Tensor, center: float | None, dtype: torch.dtype) -> Tensor:
        """(2, r, r): a decoding step's matrices for q (+) and k (-), queries and keys at the
        same single position."""
        center, seq_len = self._checked_center(positions, positions, center, dtype)
        return self._step_pair(seq_len - 1, center, positions.device)

    def extra_repr(self) -> str:
        return (
            f"head_dim={self.head_dim}, base={self.base:g}, scale_base={self.scale_base:g}, "
            f"gamma={self.gamma:g}, center={self.center}, sites={sorted(self.sites)}"
        )


__all__ = ["XPos", "xpos_scale", "xpos_zeta"]
