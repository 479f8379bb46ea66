"""Rotary encodings at the q/k site (Su et al. 2021, "RoFormer", arXiv:2104.09864).

Each pair of rotated dims (i, i + r/2) of q and k at position m is turned by the angle m·θ_i,

    θ_i = inv_freq[i] = base^(-2i/r),   i = 0 .. r/2 - 1,   r = rotary_dim <= head_dim

so q_m·k_n depends on m - n only. Layout: "half-split" pairs (i, i + r/2), the `transformers`
(Llama/NeoX) convention, so weights move between us and `transformers` without permutation.
Partial rotary (GPT-NeoX, Black et al. 2022) rotates the first `rotary_dim` dims and leaves the
rest untouched. Inference-time scalings (PI, NTK, YaRN, ...) only change `inv_freq` and an
attention factor: see `extrapos.encodings.rope_scaling`.

cos/sin are computed in float64 angles, stored in float32 and grown on demand (no length
ceiling); q and k are rotated in float32 and cast back to their dtype.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from extrapos.core.errors import UserError
from extrapos.encodings.base import PositionalEncoding, check_base
from extrapos.encodings.registry import register
from extrapos.encodings.rope_scaling import rope_inv_freq, validate_rope_scaling

#: scalings whose frequencies depend on the current sequence length.
_LENGTH_DEPENDENT = ("dynamic", "longrope")


def _rotate_float32(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """The rotation written into one preallocated float32 buffer (4 fused multiply-adds, no
    temporaries): 2.5× faster than `x·cos + rotate_half(x)·sin` (benchmarks/RESULTS.md).
    Halves by slicing, not `chunk` (a decoding step is dominated by op count: 2 ops, not 7)."""
    x = x.float()
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    o1, o2 = out[..., :half], out[..., half:]
    torch.mul(x1, cos, out=o1)
    o1.addcmul_(x2, sin, value=-1.0)
    torch.mul(x2, cos, out=o2)
    o2.addcmul_(x1, sin)
    return out


class _HalfSplitRotation(torch.autograd.Function):
    """Rotation with its exact backward: the Jacobian of a rotation by θ is the rotation, so
    the gradient is the upstream gradient rotated by −θ."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        ctx.save_for_backward(cos, sin)
        ctx.dtype = x.dtype
        return _rotate_float32(x, cos, sin).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        cos, sin = ctx.saved_tensors
        return _rotate_float32(grad, cos, -sin).to(ctx.dtype), None, None


def rotate_half_split(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (i, i + r/2) of the last dim of x (..., s, r) by angles with cos/sin (s, r/2).

        out[:r/2] = x1·cos - x2·sin,   out[r/2:] = x2·cos + x1·sin

    Computed in float32 and cast back to x's dtype; differentiable in x (cos/sin are fixed).
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return _HalfSplitRotation.apply(x, cos, sin)
    return _rotate_float32(x, cos, sin).to(x.dtype)  # the same numbers, no autograd node


def rotation_matrix(cos: Tensor, sin: Tensor) -> Tensor:
    """(r, r) float32 R with x @ R = `rotate_half_split`(x) for one position: cos, sin (1, r/2).

        R[i, i] = R[i + r/2, i + r/2] = cos_i,   R[i + r/2, i] = -sin_i,   R[i, i + r/2] = sin_i

    A decoding step rotates one query and one key per layer: one matmul instead of the six
    small ops of the buffer rotation (7 vs 25 µs for (1, 4, 1, 32) here), the same numbers up
    to rounding (the sum runs over the zeros too)."""
    half = cos.shape[-1]
    return rotation_matrices(cos.reshape(1, half), sin.reshape(1, half))[0]


def rotation_matrices(cos: Tensor, sin: Tensor) -> Tensor:
    """(B, r, r) float32: `rotation_matrix` of each row of cos, sin (B, r/2), built by one
    `index_put_` of the 2r nonzero entries of each at their flat indices (cached per size):
    8 µs instead of 22 for four indexed writes, one matrix."""
    rows, half = cos.shape
    rot = torch.zeros(rows, 4 * half * half, dtype=torch.float32, device=cos.device)
    c, sn = cos.float(), sin.float()
    rot[:, _rotation_entries(half, cos.device)] = torch.cat((c, c, sn.neg(), sn), dim=-1)
    return rot.view(rows, 2 * half, 2 * half)


#: decoding steps (consecutive positions) whose rotation matrices are built at once
STEP_BLOCK = 64

_ROTATION_ENTRIES: dict[tuple[int, torch.device], Tensor] = {}


def _rotation_entries(half: int, device: torch.device) -> Tensor:
    """Flat indices into an (r, r) matrix, r = 2·half, of (i, i), (i + half, i + half),
    (i + half, i), (i, i + half) for i < half: where `rotation_matrix` puts cos, cos, -sin, sin."""
    key = (half, device)
    if key not in _ROTATION_ENTRIES:
        i = torch.arange(half, device=device)
        r, j = 2 * half, i + half
        _ROTATION_ENTRIES[key] = torch.cat((i * r + i, j * r + j, j * r + i, i * r + j))
    return _ROTATION_ENTRIES[key]


def rotate_by_matrix(x: Tensor, rot: Tensor) -> Tensor:
    """x (..., 1, r) @ rot (r, r) as one 2-d mm (a 4-d matmul dispatches ~13 ops, this 7),
    in float32 and cast back to x's dtype."""
    flat = x.reshape(-1, x.shape[-1])
    if flat.dtype != torch.float32:
        flat = flat.float()
    out = torch.mm(flat, rot).view(x.shape)
    return out if x.dtype == torch.float32 else out.to(x.dtype)


def rotate_pair(q: Tensor, k: Tensor, rot: Tensor) -> tuple[Tensor, Tensor]:
    """(q @ R_q, k @ R_k) for one position each, q and k (..., 1, r) of one shape: `rot` (r, r)
    one float32 matrix for both (RoPE) or (2, r, r) one each (xPos), as one bmm; in float32 and
    cast back. A decoding step's rotation per layer in ~7 ops instead of two `rotate_by_matrix`
    calls; the same numbers as those calls (`tests/encodings/test_rotary_memo.py`)."""
    r = q.shape[-1]
    mats = rot.expand(2, r, r) if rot.dim() == 2 else rot
    # a bmm of two batches, not one mm of q and k stacked: an mm over twice the rows may
    # round differently from the per-tensor mm (1 ulp at 4 rows vs 2, measured); the batches
    # of a bmm are the per-tensor products
    out = torch.bmm(torch.stack((q.reshape(-1, r), k.reshape(-1, r))).float(), mats)
    q_out, k_out = out[0], out[1]
    if q.dtype != torch.float32:
        q_out, k_out = q_out.to(q.dtype), k_out.to(q.dtype)
    return q_out.view(q.shape), k_out.view(k.shape)


def one_pair(q: Tensor, k: Tensor, q_positions: Tensor, k_positions: Tensor) -> bool:
    """Whether q and k are one decoding step's single query and key at the same position, of
    one shape (`rotate_pair`)."""
    return (
        k_positions is q_positions
        and q.shape == k.shape
        and q.dtype == k.dtype
        and one_position(q)
        and one_position(k)
    )


def one_position(x: Tensor) -> bool:
    """Whether x (..., s, r) is a single position without autograd: a decoding step, which
    takes the `rotation_matrix` path."""
    return x.shape[-2] == 1 and not (torch.is_grad_enabled() and x.requires_grad)


class PositionsMemo:
    """Values derived from a positions tensor, kept while that very tensor object lives
    unchanged (same object, same in-place version): every layer of one forward passes the
    same positions, so cos/sin gathers and maxima are computed once per forward, not once per
    layer (a decoding step is dominated by such small ops). Holds a few positions tensors at
    once (queries and keys may differ); values never depend on anything else the key omits."""

    def __init__(self, slots: int = 4) -> None:
        self._slots = slots
        self._entries: dict[int, tuple[weakref.ref, int, dict[Any, Any]]] = {}

    def get(self, positions: Tensor, key: Any, compute: Callable[[], Any]) -> Any:
        version = -1 if positions.is_inference() else positions._version
        entry = self._entries.get(id(positions))
        if entry is None or entry[0]() is not positions or entry[1] != version:
            if len(self._entries) >= self._slots:
                self._entries.clear()
            entry = (weakref.ref(positions), version, {})
            self._entries[id(positions)] = entry
        values = entry[2]
        # values made under inference mode cannot enter autograd later: keep them apart
        key = (key, torch.is_inference_mode_enabled())
        if key not in values:
            values[key] = compute()
        return values[key]

    def clear(self) -> None:
        self._entries.clear()


@register("rope")
class RoPE(PositionalEncoding):
    """Rotary position embedding, with optional partial rotary and inference-time scaling.

    Args:
        head_dim: dims per head d (set by the model).
        base: frequency base (10000 in RoFormer; 500000 in Llama 3).
        rotary_dim: how many leading dims of each head rotate (even, <= head_dim); None = all.
        scaling: a `transformers`-schema `rope_scaling` dict, e.g. {"rope_type": "yarn",
            "factor": 4.0, "original_max_position_embeddings": 128}; None = plain RoPE.
        max_position_embeddings: the trained length, read by scalings that need it.
        logn_scale_len: log-n attention temperature (Chiang & Cholak 2022, "Overcoming a
            Theoretical Limitation of Self-Attention"; Su 2021): the query at position i is
            scaled by max(1, ln(i + 1) / ln(logn_scale_len)), keeping attention entropy from
            growing with the context; usually the trained length. None = off.
    """

    def __init__(
        self,
        head_dim: int,
        base: float = 10000.0,
        rotary_dim: int | None = None,
        scaling: dict[str, Any] | None = None,
        max_position_embeddings: int | None = None,
        logn_scale_len: int | None = None,
    ) -> None:
        super().__init__()
        rotary_dim = head_dim if rotary_dim is None else int(rotary_dim)
        if rotary_dim <= 0 or rotary_dim % 2 or rotary_dim > head_dim:
            raise UserError(
                f"rope: rotary_dim must be a positive even number <= head_dim={head_dim}, "
                f"got {rotary_dim}"
            )
        base = check_base("rope", base)
        if logn_scale_len is not None and logn_scale_len < 2:
            raise UserError(f"rope: logn_scale_len must be >= 2, got {logn_scale_len}")
        self.logn_scale_len = logn_scale_len
        self.head_dim = head_dim
        self.rotary_dim = rotary_dim
        self.base = float(base)
        self.scaling = validate_rope_scaling(scaling) if scaling else None
        self.max_position_embeddings = max_position_embeddings
        self.length_dependent = (
            bool(self.scaling) and self.scaling["rope_type"] in _LENGTH_DEPENDENT
        )
        if self.length_dependent:  # frequencies change with the length: cache raw keys
            self.cache = "raw"
        self._cos = torch.empty(0, rotary_dim // 2)
        self._sin = torch.empty(0, rotary_dim // 2)
        self._cache_key: int | None = None  # seq_len the cached tables were built for
        self._memo = PositionsMemo()  # per forward: gathered cos/sin, maxima of positions
        self._step_block: tuple[int, int, Tensor, Tensor] | None = None  # see `step_block`

    def frequencies(self, seq_len: int | None = None) -> tuple[Tensor, float]:
        """(inv_freq (r/2,) float32, attention_factor) for a sequence of `seq_len` positions."""
        return rope_inv_freq(
            self.rotary_dim,
            self.base,
            self.scaling,
            max_position_embeddings=self.max_position_embeddings,
            seq_len=seq_len,
        )

    def cos_sin(self, positions: Tensor, seq_len: int | None = None) -> tuple[Tensor, Tensor]:
        """cos, sin (s, r/2) float32 at `positions` (s,), scaled by the attention factor.

        `seq_len` (default: max position + 1) is the length that length-dependent scalings
        (dynamic NTK, LongRoPE) choose their frequencies for.
        """
        return self._memo.get(
            positions, ("cos_sin", seq_len), lambda: self._gather(positions, seq_len)
        )

    def max_position(self, positions: Tensor) -> int:
        """int(positions.max()), once per positions tensor (`PositionsMemo`)."""
        return self._memo.get(positions, "max", lambda: int(positions.max()))

    def _gather(self, positions: Tensor, seq_len: int | None) -> tuple[Tensor, Tensor]:
        self._ensure_tables(max(self.max_position(positions) + 1, seq_len or 0), positions.device)
        return self._cos[positions], self._sin[positions]

    def _ensure_tables(self, needed: int, device: torch.device) -> None:
        """The cos/sin tables cover positions 0 .. needed - 1 on `device` (grown by doubling;
        rebuilt per length for length-dependent scalings)."""
        key = needed if self.length_dependent else None
        if self._cos.shape[0] < needed or key != self._cache_key or self._cos.device != device:
            size = needed if self.length_dependent else max(needed, 2 * self._cos.shape[0], 256)
            inv_freq, attention_factor = self.frequencies(seq_len=needed)
            angles = torch.arange(size, dtype=torch.float64)[:, None] * inv_freq.double()[None, :]
            self._cos = (angles.cos() * attention_factor).float().to(device)
            self._sin = (angles.sin() * attention_factor).float().to(device)
            self._cache_key = key

    def step_block(self, position: int, device: torch.device) -> tuple[int, Tensor]:
        """(start, (B, r, r) `rotation_matrix`es of positions start .. start + B - 1), a block
        holding `position`: decoding steps are consecutive positions, so their matrices are
        built `STEP_BLOCK` at a time (one batched build instead of ~10 ops per step), from the
        rows of the cos/sin tables the per-step gather reads (the same numbers). Kept while
        those tables are; not for length-dependent scalings (their tables change per length)."""
        self._ensure_tables(position + 1, device)
        kept = self._step_block
        if kept is None or kept[2] is not self._cos or not kept[0] <= position < kept[1]:
            stop = min(position + STEP_BLOCK, self._cos.shape[0])
            mats = rotation_matrices(self._cos[position:stop], self._sin[position:stop])
            self._step_block = kept = (position, stop, self._cos, mats)
        return kept[0], kept[3]

    def rotate(self, x: Tensor, positions: Tensor, seq_len: int | None = None) -> Tensor:
        """Rotate x (b, h, s, d) at positions (s,)."""
        cos, sin = self.cos_sin(positions, seq_len)
        r = self.rotary_dim
        if r == x.shape[-1]:
            if one_position(x):  # decoding: one mm by the step's cached matrix
                key = ("matrix", seq_len)
                rot = self._memo.get(positions, key, lambda: rotation_matrix(cos, sin))
                return rotate_by_matrix(x, rot)
            return rotate_half_split(x, cos, sin)
        return torch.cat((rotate_half_split(x[..., :r], cos, sin), x[..., r:]), dim=-1)

    def _step_matrix(self, positions: Tensor) -> Tensor:
        """(r, r): the one position's `rotation_matrix` (a decoding step: queries and keys at
        the same positions, so the length is the position + 1), from its `step_block`."""
        seq_len = self.max_position(positions) + 1
        if self.length_dependent:
            return rotation_matrix(*self.cos_sin(positions, seq_len))
        start, block = self.step_block(seq_len - 1, positions.device)
        return block[seq_len - 1 - start]

    def rotate_at(self, x: Tensor, positions: Tensor, seq_len: int | None = None) -> Tensor:
        """Rotate x (b, h, s, d) at real-valued positions (s,) (e.g. the fractional positions
        of leaky ReRoPE); computed directly in float64 angles, not cached."""
        inv_freq, attention_factor = self.frequencies(seq_len=seq_len)
        angles = positions.double()[:, None] * inv_freq.double().to(positions.device)[None, :]
        cos = (angles.cos() * attention_factor).float()
        sin = (angles.sin() * attention_factor).float()
        r = self.rotary_dim
        if r == x.shape[-1]:
            return rotate_half_split(x, cos, sin)
        return torch.cat((rotate_half_split(x[..., :r], cos, sin), x[..., r:]), dim=-1)

    def logn_scale(self, q: Tensor, q_positions: Tensor) -> Tensor:
        """q (b, h, s, d) times max(1, ln(i + 1) / ln(logn_scale_len)) at position i."""
        if self.logn_scale_len is None:
            return q
        scale = torch.log1p(q_positions.double()) / math.log(self.logn_scale_len)
        return q * scale.clamp(min=1.0).to(q.dtype)[:, None]

    def rotate_qk(
        self, q: Tensor, k: Tensor, q_positions: Tensor, k_positions: Tensor
    ) -> tuple[Tensor, Tensor]:
        if (
            self.rotary_dim == q.shape[-1]
            and self.logn_scale_len is None
            and one_pair(q, k, q_positions, k_positions)
        ):  # decoding: one mm by the step's cached matrix rotates the query and the key
            rot = self._memo.get(q_positions, "step", lambda: self._step_matrix(q_positions))
            return rotate_pair(q, k, rot)
        seq_len = max(self.max_position(q_positions), self.max_position(k_positions)) + 1
        q = self.logn_scale(self.rotate(q, q_positions, seq_len), q_positions)
        return q, self.rotate(k, k_positions, seq_len)

    def extra_repr(self) -> str:
        return (
            f"rotary_dim={self.rotary_dim}/{self.head_dim}, base={self.base:g}, "
            f"scaling={self.scaling}, logn_scale_len={self.logn_scale_len}, "
            f"{super().extra_repr()}"
        )
