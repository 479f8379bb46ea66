"""The one dispatch: which site an encoding acts at inside attention is decided here, and only here.

    encoded_attention(enc, q, k, v, positions, layer)   # -> (b, h, s, d)

is what every attention layer of the model calls (`extrapos.models.gpt`), what `hybrid` calls
for the encoding of each layer, and — through the model, with a probe — what the attention
diagnostics read (`extrapos.probes.diagnostics`). Per site:

| sites | what happens to q (b, h, s, d) and k, v (b, h, t, d) |
|---|---|
| `attention` | the encoding attends itself from raw q, k: `enc.attend(q, k, v, positions, layer, probe)` |
| `qk` | q, k rotated by `enc.rotate_qk`, then `extrapos.kernels.attention.attention` |
| `bias` | the (h, n) distance table (`bias_table`) applied by the attention kernel |
| none / `input` / `ffn` | plain causal softmax attention (those sites act outside attention) |

KV cache (`append(k, v) -> all keys, values`, the cache of this layer): with `enc.cache ==
"raw"` the new keys are cached before rotation and all keys are rotated (or handed to `attend`)
at every step; otherwise (`"rotated"`) the new keys are rotated first and cached rotated
(with `positions.center`, when the cache holds one: xPos's scaling centre).

Probe: `probe(start, probs)` receives the attention probabilities (b, h, c, t') of every query
chunk. Attention-site encodings fill it from their own chunk loop; for the other sites the
dispatch computes softmax(q·kᵀ/√d + B + M) explicitly by query chunks of `probe_chunk` rows
(`extrapos.kernels.chunks.blockwise_attention`) instead of calling the fused kernels, which never
form the matrix (as HF's `output_attentions` switches to eager attention).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from extrapos.core.errors import UserError
from extrapos.encodings.base import PositionalEncoding, Positions
from extrapos.kernels.attention import DEFAULT_CHUNK_SIZE, attention, bias_block
from extrapos.kernels.chunks import Probe, QueryChunk, blockwise_attention

Append = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def bias_table(enc: PositionalEncoding, positions: Positions, causal: bool = True) -> Tensor | None:
    """The distance-bias table of a `bias`-site encoding for one attention call, or None:
    (h, n) over distances 0 .. n-1 covering every query-key pair when causal; the signed
    (h, 2n - 1) table (`signed_distance_bias`) over the queries' span otherwise."""
    if "bias" not in enc.sites:
        return None
    if causal:
        n = int(positions.q.max() - positions.k.min()) + 1
        if enc.prefix_stable_table and not torch.is_grad_enabled():
            return enc.stable_distance_bias(n)  # inference: one table kept across calls
        return enc.distance_bias(n)
    return enc.signed_distance_bias(int(positions.q.max() - positions.q.min()) + 1)


def encoded_attention(
    enc: PositionalEncoding,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    positions: Positions,
    layer: int = 0,
    *,
    table: Tensor | None = None,
    causal: bool = True,
    append: Append | None = None,
    probe: Probe | None = None,
    probe_chunk: int = DEFAULT_CHUNK_SIZE,
    key_mask: Tensor | None = None,
) -> Tensor:
    """Attention of new queries q (b, h, s, d) over keys k, v (b, h, s, d) — the new ones when
    `append` adds them to a cache, else all t — with `enc` acting at its site(s); see the module
    docstring. `table`: the bias table when the caller built it once for every layer (default:
    built here). `key_mask` (b, t) bool, non-causal only: False keys (padding of an encoder
    batch) get no attention. Returns (b, h, s, d)."""
    acting = enc.acting_encoding(layer)
    if acting is not enc:  # a composite's layer (hybrid): the inner encoding, with the cache
        return encoded_attention(
            acting,
            q,
            k,
            v,
            positions,
            layer,
            causal=causal,
            append=append,
            probe=probe,
            probe_chunk=probe_chunk,
            key_mask=key_mask,
        )
    raw = enc.cache == "raw"
    if append is not None and raw:  # cache keys before any rotation
        k, v = append(k, v)
    if "attention" in enc.sites:
        if causal:
            return enc.attend(q, k, v, positions, layer, probe)
        if not enc.bidirectional_attend:
            raise UserError(
                f"encoding '{enc.name}' computes causal attention itself and has no "
                f"bidirectional form; use causal=True or an input/q-k/bias encoding"
            )
        return enc.attend(q, k, v, positions, layer, probe, causal=False, key_mask=key_mask)
    if "qk" in enc.sites:
        k_positions = positions.for_keys(k.shape[-2])
        if positions.center is None:
            q, k = enc.rotate_qk(q, k, positions.q, k_positions)
        else:  # the centre the cached keys carry (xPos with a KV cache)
            q, k = enc.rotate_qk(q, k, positions.q, k_positions, center=positions.center)
    if append is not None and not raw:
        k, v = append(k, v)  # (b, h, t, d)
    if table is None:
        table = bias_table(enc, positions, causal)
    if probe is None:
        return attention(
            q,
            k,
            v,
            bias_table=table,
            q_positions=positions.q,
            k_positions=positions.k,
            q_offset=positions.q_offset,
            causal=causal,
            key_mask=key_mask,
        )
    if key_mask is not None:
        raise UserError("attention probes do not take a key mask; probe unpadded sequences")
    return probed_attention(q, k, v, positions, table, causal, probe, probe_chunk)


def probed_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    positions: Positions,
    table: Tensor | None,
    causal: bool,
    probe: Probe,
    rows: int = DEFAULT_CHUNK_SIZE,
) -> Tensor:
    """softmax(q·kᵀ/√d + B + M) v by query chunks, handing each chunk's probabilities to
    `probe`: the same function as `extrapos.kernels.attention.attention` (B from the (h, n)
    table, or the signed (h, 2n - 1) one when not causal), formed explicitly."""
    bias = None
    if table is not None and causal:

        def bias(chunk: QueryChunk) -> Tensor:
            q_index = torch.arange(
                positions.q_offset + chunk.start, positions.q_offset + chunk.stop, device=q.device
            )
            return bias_block(
                table,
                positions.q[chunk.start : chunk.stop],
                positions.k[: chunk.seen],
                q_index,
                torch.promote_types(q.dtype, torch.float32),
            )

    elif table is not None:
        n = (table.shape[-1] + 1) // 2

        def bias(chunk: QueryChunk) -> Tensor:
            offsets = positions.q[chunk.start : chunk.stop, None] - positions.k[None, :]
            return table[:, offsets.clamp(1 - n, n - 1) + n - 1]

    return blockwise_attention(
        q, k, v, q_offset=positions.q_offset, rows=rows, bias=bias, probe=probe, causal=causal
    )


__all__ = ["bias_table", "encoded_attention", "probed_attention"]
