"""Per-layer hybrids: a different relative encoding in each layer (e.g. NoPE every 4th layer,
RoPE elsewhere — "RNoPE", Yang et al. 2025, "Rope to Nope and Back Again: A New Hybrid
Attention Strategy"; Llama 4's interleaved NoPE layers).

    hybrid(layers=["rope", "rope", "rope", "nope"])   # layer ℓ uses layers[ℓ mod len(layers)]

Each named encoding is built once and shared by the layers that use it. Only encodings that
act inside attention can differ per layer (q/k rotation, distance bias, none, or their own
`attend`); input-site and FFN-site encodings act once per model and are refused. The hybrid
uses the `attention` site, so the model caches raw keys and each layer rotates them itself.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from extrapos.core.errors import UserError
from extrapos.encodings.base import PositionalEncoding
from extrapos.encodings.registry import build_for_model, register
from extrapos.kernels.attention import attention


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
            if enc.rotation_depends_on_length and not enc.supports_kv_cache:
                raise UserError(f"hybrid: '{name}' cannot be cached")
            self.inner[name] = enc

    def layer_encoding(self, layer: int) -> PositionalEncoding:
        return self.inner[self.layers[layer % len(self.layers)]]

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
        enc = self.layer_encoding(layer)
        if "attention" in enc.sites:
            return enc.attend(q, k, v, q_positions, k_positions, q_offset, layer)
        if "qk" in enc.sites:
            q, k = enc.rotate_qk(q, k, q_positions, k_positions)
        table = None
        if "bias" in enc.sites:
            table = enc.distance_bias(int(q_positions.max() - k_positions.min()) + 1)
        return attention(
            q,
            k,
            v,
            bias_table=table,
            q_positions=q_positions,
            k_positions=k_positions,
            q_offset=q_offset,
        )

    def extra_repr(self) -> str:
        return f"layers={self.layers}"
