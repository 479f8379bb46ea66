"""Per-layer hybrids: a different relative encoding in each layer (e.g. NoPE every 4th layer,
RoPE elsewhere — "RNoPE", Yang et al. 2025, "Rope to Nope and Back Again: A New Hybrid
Attention Strategy"; Llama 4's interleaved NoPE layers).

    hybrid(layers=["rope", "rope", "rope", "nope"])   # layer ℓ uses layers[ℓ mod len(layers)]

Each named encoding is built once and shared by the layers that use it. Only encodings that
act inside attention can differ per layer (q/k rotation, distance bias, none, or their own
`attend`); input-site and FFN-site encodings act once per model and are refused.

Each layer's attention runs as its own encoding's, KV cache included (`acting_encoding`, which
the one dispatch, `extrapos.encodings.dispatch.encoded_attention`, asks first): a RoPE layer
caches rotated keys and rotates only the new one per decoding step, as a RoPE model does. The
exception is an encoding whose cached keys carry a model-wide scaling centre (xPos,
`decode_center`), which the hybrid does not keep: its layers get raw keys (`cache = "raw"`) and
rotate all of them at every step, each call with its own centre.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from extrapos.core.errors import UserError
from extrapos.encodings.base import PositionalEncoding, Positions
from extrapos.encodings.dispatch import encoded_attention
from extrapos.encodings.registry import build_for_model, register
from extrapos.kernels.chunks import Probe


@register("hybrid")
class Hybrid(PositionalEncoding):
    """Layer ℓ attends with encoding `layers[ℓ mod len(layers)]`.

    Args:
        d_model, num_heads, head_dim, num_layers: set by the model.
        layers: encoding names, cycled over the layers (default: RNoPE's three RoPE layers
            then one NoPE layer).
        params: per-name constructor parameters, e.g. {"rope": {"base": 500000}}.
    """

    shift_invariant = True  # every allowed inner encoding is relative (checked below)
    cache = "raw"  # for the layers it attends itself (see the module docstring)

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        head_dim: int,
        num_layers: int = 1,
        layers: list[str] | tuple[str, ...] = ("rope", "rope", "rope", "nope"),
        params: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        if not layers:
            raise UserError('hybrid: layers must list encodings, e.g. ["rope", "rope", "nope"]')
        params = params or {}
        unused = sorted(set(params) - set(layers))
        if unused:
            raise UserError(f"hybrid: params given for {unused}, which no layer uses")
        self.layers = list(layers)
        self.inner = nn.ModuleDict()
        for name in dict.fromkeys(layers):
            enc = build_for_model(
                name,
                params.get(name, {}),
                d_model=d_model,
                num_heads=num_heads,
                head_dim=head_dim,
                num_layers=num_layers,
            )
            if enc.sites & {"input", "ffn"} or not enc.shift_invariant:
                raise UserError(
                    f"hybrid: '{name}' acts at the {sorted(enc.sites)} site(s); per-layer "
                    f"encodings must act inside attention and be relative (q/k, bias, none)"
                )
            if enc.cache == "none":
                raise UserError(f"hybrid: '{name}' cannot be cached")
            self.inner[name] = enc

    def layer_encoding(self, layer: int) -> PositionalEncoding:
        return self.inner[self.layers[layer % len(self.layers)]]

    def rotation_parts(self) -> list[PositionalEncoding]:
        """The distinct layer encodings: the hybrid's rotation is theirs, so a KV cache goes
        stale when a length-dependent one (dynamic NTK, LongRoPE) changes its frequencies
        (`extrapos.models.rotation_state`)."""
        return list(self.inner.values())

    def acting_encoding(self, layer: int) -> PositionalEncoding:
        """The layer's encoding, caching keys its own way; the hybrid itself (raw keys, `attend`)
        for an encoding whose cached keys need the model's scaling centre (xPos)."""
        inner = self.layer_encoding(layer)
        return self if hasattr(inner, "decode_center") else inner

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        positions: Positions,
        layer: int = 0,
        probe: Probe | None = None,
    ) -> Tensor:
        return encoded_attention(self.layer_encoding(layer), q, k, v, positions, layer, probe=probe)

    def extra_repr(self) -> str:
        return f"layers={self.layers}"
