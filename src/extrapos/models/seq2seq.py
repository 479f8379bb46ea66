"""An encoder-decoder Transformer (Vaswani et al. 2017) whose positional encoding is one field.

    memory = Encoder(src)            bidirectional self-attention, the encoding's encoder form
    logits = Decoder(tgt_in, memory) causal self-attention (its causal form) + cross-attention

Both stacks are pre-norm (RMSNorm) with SwiGLU feed-forward layers: the encoder layers are the
GPT's `Block` run with `causal=False`, the decoder layers that same self-attention and FFN with a
cross-attention sub-layer between them. One embedding matrix serves source, target and output
(a shared joint-BPE vocabulary, tied embeddings as in Press & Wolf 2017 / Vaswani et al.).

Where position enters (the encoding is `Seq2SeqConfig.encoding`, built twice: one instance per
stack, so learned tables and biases are not shared, as in T5 and fairseq):

- encoder self-attention: the bidirectional form — input tables and q/k rotations as in the
  decoder; distance biases from `signed_distance_bias` (symmetric ALiBi -m·|i-j|, T5's
  both-sign buckets, symmetric KERPLE/Sandwich). Encodings at the `attention` site (FIRE,
  CoPE, ReRoPE, …) compute causal attention themselves and are refused by name.
- decoder self-attention: the causal form, exactly as in the GPT, with a KV cache.
- cross-attention: no positional term. This is what Vaswani et al. (positions only added to the
  inputs of both stacks) and T5 (relative biases only in self-attention; `EncDecAttention` has
  `has_relative_attention_bias=False`) do, and what Shaw et al. 2018 do (relative positions in
  self-attention only). A relative position between target i and source j is meaningless without
  an alignment, so no alternative is offered; input-site encodings (sinusoidal, learned) still
  reach cross-attention through the representations, as in the original Transformer.

Shapes: b batch, S source length, T target length, h heads, d head dim, D d_model, V vocab.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from extrapos.core.errors import UserError
from extrapos.encodings import PositionalEncoding, build_for_model
from extrapos.encodings.base import EMBEDDING_INIT_STD
from extrapos.kernels.attention import attention
from extrapos.models.gpt import (
    Block,
    CausalSelfAttention,
    GPTConfig,
    KVCache,
    PositionContext,
    SwiGLU,
    check_bidirectional,
    make_position_context,
)
from extrapos.models.seq2seq_config import NUM_SPECIALS, Seq2SeqConfig


class CrossAttention(nn.Module):
    """softmax(q·kᵀ/√d) v with q from the decoder and k, v from the encoder's output; no
    positional term (see the module docstring), padded source keys masked."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.head_dim
        self.q = nn.Linear(config.d_model, config.d_model, bias=False)
        self.kv = nn.Linear(config.d_model, 2 * config.d_model, bias=False)
        self.out = nn.Linear(config.d_model, config.d_model, bias=False)

    def memory_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """memory (b, S, D) -> k, v (b, h, S, d): computed once per source, reused each step."""
        b, S, _ = memory.shape
        k, v = self.kv(memory).view(b, S, 2, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor], src_mask: Tensor) -> Tensor:
        b, T, _ = x.shape
        q = self.q(x).view(b, T, self.n_head, self.head_dim).transpose(1, 2)  # (b, h, T, d)
        y = attention(q, kv[0], kv[1], causal=False, key_mask=src_mask)
        return self.out(y.transpose(1, 2).reshape(b, T, -1))


class DecoderBlock(nn.Module):
    """x + self_attn(norm x) [causal, cached]; x + cross_attn(norm x, memory); x + mlp(norm x)."""

    def __init__(self, config: GPTConfig, layer: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.attn = CausalSelfAttention(config, layer)
        self.norm_cross = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.cross = CrossAttention(config)
        self.norm2 = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.mlp = SwiGLU(config)
        self.dropout = float(dropout)

    def drop(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.dropout, self.training) if self.dropout else x

    def forward(
        self,
        x: Tensor,
        ctx: PositionContext,
        cache: KVCache | None,
        memory_kv: tuple[Tensor, Tensor],
        src_mask: Tensor,
    ) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x), ctx, cache))
        x = x + self.drop(self.cross(self.norm_cross(x), memory_kv, src_mask))
        return x + self.drop(self.mlp(self.norm2(x), ctx.ffn_term))


@dataclass
class EncoderState:
    """What decoding needs from one encoded batch: per-layer cross-attention k/v (computed
    once per source) and the source padding mask (b, S)."""

    memory_kv: list[tuple[Tensor, Tensor]]
    src_mask: Tensor

    def repeat(self, n: int) -> EncoderState:
        """Each row repeated n times in place (row r -> rows r·n .. r·n + n - 1), for beams."""
        return EncoderState(
            [(k.repeat_interleave(n, 0), v.repeat_interleave(n, 0)) for k, v in self.memory_kv],
            self.src_mask.repeat_interleave(n, 0),
        )


class Seq2Seq(nn.Module):
    """Encoder-decoder. `model(src, tgt_in)` with src (b, S), tgt_in (b, T) int64 (right-padded
    with `pad_id`) -> logits (b, T, V) float32."""

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        self.config = config
        enc_cfg, dec_cfg = config.stack_config(causal=False), config.stack_config(causal=True)
        self.encoder_encoding = self._build_encoding(enc_cfg)
        check_bidirectional(self.encoder_encoding)  # refuse attention-site encodings by name
        self.decoder_encoding = self._build_encoding(dec_cfg)
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = nn.ModuleList(
            Block(enc_cfg, i, config.dropout) for i in range(config.n_layer)
        )
        self.encoder_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.decoder = nn.ModuleList(
            DecoderBlock(dec_cfg, i, config.dropout) for i in range(config.n_layer)
        )
        self.decoder_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self._init_weights()

    @staticmethod
    def _build_encoding(cfg: GPTConfig) -> PositionalEncoding:
        return build_for_model(
            cfg.encoding,
            cfg.encoding_params,
            d_model=cfg.d_model,
            num_heads=cfg.n_head,
            head_dim=cfg.head_dim,
            num_layers=cfg.n_layer,
            d_ff=cfg.d_ff,
        )

    def _init_weights(self) -> None:
        # the GPT's init: N(0, 0.02), residual output projections scaled by 1/sqrt(2·layers)
        residual_std = EMBEDDING_INIT_STD / math.sqrt(2 * 2 * self.config.n_layer)
        for name, module in self.named_modules():
            if "encoding" in name.split(".")[0]:
                continue  # encodings initialize their own parameters
            if isinstance(module, nn.Linear):
                residual = name.endswith(("attn.out", "cross.out", "mlp.w2"))
                nn.init.normal_(module.weight, std=residual_std if residual else EMBEDDING_INIT_STD)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=EMBEDDING_INIT_STD)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _embed(self, idx: Tensor, enc: PositionalEncoding, positions: Tensor) -> Tensor:
        x = self.embed(idx)
        if "input" in enc.sites:
            x = x + enc.input_embedding(positions).to(x.dtype)
        d = self.config.dropout
        return F.dropout(x, d, self.training) if d else x

    def encode(self, src: Tensor) -> EncoderState:
        """src (b, S) int64, right-padded -> the cross-attention k/v of every decoder layer."""
        if src.ndim != 2 or src.shape[1] == 0:
            raise UserError(
                f"src must have shape (batch, seq) with seq >= 1, got {tuple(src.shape)}"
            )
        src_mask = src != self.config.pad_id  # (b, S)
        positions = torch.arange(src.shape[1], device=src.device)
        enc = self.encoder_encoding
        ctx = make_position_context(enc, positions, None, False, self.config.d_ff, src_mask)
        x = self._embed(src, enc, positions)
        for block in self.encoder:
            x = block(x, ctx, None)
        memory = self.encoder_norm(x)
        return EncoderState([blk.cross.memory_kv(memory) for blk in self.decoder], src_mask)

    def decode(self, tgt: Tensor, state: EncoderState, cache: KVCache | None = None) -> Tensor:
        """tgt (b, T) new target tokens after the cached ones -> logits (b, T, V) float32."""
        offset = cache.length if cache is not None else 0
        positions = torch.arange(offset, offset + tgt.shape[1], device=tgt.device)
        enc = self.decoder_encoding
        ctx = make_position_context(enc, positions, cache, True, self.config.d_ff)
        x = self._embed(tgt, enc, positions)
        for block, kv in zip(self.decoder, state.memory_kv, strict=True):
            x = block(x, ctx, cache, kv, state.src_mask)
        if cache is not None:
            cache.advance(positions)
        return F.linear(self.decoder_norm(x), self.embed.weight).float()

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        return self.decode(tgt_in, self.encode(src))

    def new_cache(self) -> KVCache | None:
        """A decoder KV cache, or None when the encoding's cached keys go stale (then decoding
        recomputes the target prefix each step)."""
        enc = self.decoder_encoding
        return KVCache(self.config.n_layer) if enc.cache != "none" else None


__all__ = [
    "NUM_SPECIALS",
    "CrossAttention",
    "DecoderBlock",
    "EncoderState",
    "Seq2Seq",
    "Seq2SeqConfig",
]
