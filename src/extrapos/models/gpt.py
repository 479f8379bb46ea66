"""A compact decoder-only GPT whose positional encoding is one config field.

Pre-norm blocks (RMSNorm), SwiGLU feed-forward (Shazeer 2020), tied input/output embeddings.
The encoding is built once per model from the registry and passed to every layer at forward
time, so adding an encoding never changes this file. Per forward pass the model resolves
positions once, and builds the distance-bias table and the FFN term once for all layers.

Shapes: b batch, s new tokens, t keys (cached + new), h heads, d head dim, D d_model, V vocab.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from extrapos.core.errors import UserError
from extrapos.encodings import PositionalEncoding, build_for_model
from extrapos.encodings.base import EMBEDDING_INIT_STD, Positions
from extrapos.encodings.dispatch import bias_table, encoded_attention
from extrapos.kernels.attention import DEFAULT_CHUNK_SIZE
from extrapos.models.config import GPTConfig
from extrapos.models.rotation_state import renew_if_stale

#: set by the run layer (`extrapos.training.run_dir`) so that `GPT.from_checkpoint` works
#: without the model knowing what a run directory is
_checkpoint_loader: Callable[[str | Path], GPT] | None = None


def set_checkpoint_loader(loader: Callable[[str | Path], GPT]) -> None:
    global _checkpoint_loader
    _checkpoint_loader = loader


@dataclass
class AttentionProbe:
    """Asks every attention layer for its attention probabilities (like HF's
    `output_attentions`): `record(layer, start, probs)` receives probs (b, h, c, t') for the
    queries [start, start + c) of `layer`, from the code that computes the layer's output
    (`extrapos.encodings.dispatch.encoded_attention`); `chunk_size` bounds c where the dispatch
    forms the matrix itself (encodings that attend themselves use their own chunks)."""

    record: Callable[[int, int, Tensor], None]
    chunk_size: int = DEFAULT_CHUNK_SIZE


@dataclass
class PositionContext:
    """What every layer needs to know about positions for one forward pass."""

    encoding: PositionalEncoding
    positions: Positions  # queries (s,), keys (t,), q_offset = cached length
    bias_table: Tensor | None  # (h, n), or (h, 2n - 1) signed when not causal, or None
    ffn_term: Tensor | None  # (s, d_ff) or None
    causal: bool = True
    # (b, t) bool, True where a key is a real token (encoders over padded batches); None: all
    key_mask: Tensor | None = None
    probe: AttentionProbe | None = None

    @property
    def q_positions(self) -> Tensor:
        return self.positions.q

    @property
    def k_positions(self) -> Tensor:
        return self.positions.k

    @property
    def q_offset(self) -> int:
        return self.positions.q_offset


class KVCache:
    """Keys (after rotation) and values of every layer, grown by doubling; plus key positions,
    and the scaling centre the cached keys carry for encodings with one (xPos; None else)."""

    def __init__(self, n_layer: int) -> None:
        self.k: list[Tensor | None] = [None] * n_layer
        self.v: list[Tensor | None] = [None] * n_layer
        self.positions = torch.empty(0, dtype=torch.long)
        self.length = 0
        self.center: float | None = None
        #: the `rotation_key` the entries were made under (length-dependent encodings: dynamic
        #: NTK, LongRoPE), kept by the decoding loop that refills the cache when it changes
        self.rotation: Any = None

    def clear(self) -> None:
        """Forget every entry (the buffers stay allocated): the next call refills from 0."""
        self.positions = self.positions[:0]
        self.length = 0
        self.center = None

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store new (b, h, s, d) keys/values of `layer`; return all (b, h, length + s, d)."""
        start, stop = self.length, self.length + k.shape[-2]
        buf_k, buf_v = self.k[layer], self.v[layer]
        if buf_k is None or buf_k.shape[-2] < stop:
            capacity = max(stop, 2 * (buf_k.shape[-2] if buf_k is not None else 0), 64)
            new_k = k.new_empty(*k.shape[:-2], capacity, k.shape[-1])
            new_v = v.new_empty(*v.shape[:-2], capacity, v.shape[-1])
            if buf_k is not None:
                new_k[..., :start, :] = buf_k[..., :start, :]
                new_v[..., :start, :] = buf_v[..., :start, :]
            self.k[layer], self.v[layer] = buf_k, buf_v = new_k, new_v
        buf_k[..., start:stop, :] = k
        buf_v[..., start:stop, :] = v
        return buf_k[..., :stop, :], buf_v[..., :stop, :]

    def advance(self, positions: Tensor) -> None:
        """Record that the tokens at `positions` (s,) were appended to every layer."""
        self.positions = torch.cat((self.positions.to(positions.device), positions))
        self.length += positions.shape[0]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int) -> None:
        super().__init__()
        self.n_head, self.head_dim, self.layer = config.n_head, config.head_dim, layer
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.out = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(self, x: Tensor, ctx: PositionContext, cache: KVCache | None) -> Tensor:
        b, s, _ = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        # q, k, v: (b, h, s, d); the encoding's site decides the rest, in one place
        y = encoded_attention(
            ctx.encoding,
            q,
            k,
            v,
            ctx.positions,
            self.layer,
            table=ctx.bias_table,
            causal=ctx.causal,
            append=None if cache is None else functools.partial(cache.append, self.layer),
            probe=None if ctx.probe is None else functools.partial(ctx.probe.record, self.layer),
            probe_chunk=DEFAULT_CHUNK_SIZE if ctx.probe is None else ctx.probe.chunk_size,
            key_mask=ctx.key_mask,
        )
        return self.out(y.transpose(1, 2).reshape(b, s, -1))


class SwiGLU(nn.Module):
    """FFN(x) = W2 (silu(W1 x + p) ⊙ W3 x), p the encoding's FFN-site term (or 0)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        assert config.d_ff is not None
        self.w1 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.w3 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.w2 = nn.Linear(config.d_ff, config.d_model, bias=False)

    def forward(self, x: Tensor, ffn_term: Tensor | None = None) -> Tensor:
        gate = self.w1(x)
        if ffn_term is not None:
            gate = gate + ffn_term.to(gate.dtype)
        return self.w2(F.silu(gate) * self.w3(x))


class Block(nn.Module):
    """x + attn(norm(x)), then x + mlp(norm(x)); `dropout` (residual dropout on each branch, as
    in Vaswani et al.) is used by the encoder-decoder; the GPT uses none."""

    def __init__(self, config: GPTConfig, layer: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.attn = CausalSelfAttention(config, layer)
        self.norm2 = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.mlp = SwiGLU(config)
        self.dropout = float(dropout)

    def drop(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.dropout, self.training) if self.dropout else x

    def forward(self, x: Tensor, ctx: PositionContext, cache: KVCache | None) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x), ctx, cache))
        return x + self.drop(self.mlp(self.norm2(x), ctx.ffn_term))


def check_token_ids(idx: Tensor, vocab_size: int) -> None:
    """Refuse what the embedding would not read as tokens: not (batch, seq), empty, not
    integers, or ids outside 0..vocab_size-1 (a negative id would otherwise crash deep in
    `nn.Embedding`, or on some devices read another row)."""
    if idx.ndim != 2:
        raise UserError(f"idx must have shape (batch, seq), got {tuple(idx.shape)}")
    if idx.numel() == 0:
        raise UserError(f"idx is empty (shape {tuple(idx.shape)}); give at least one token")
    if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
        raise UserError(f"idx must hold integer token ids, got dtype {idx.dtype}")
    low, high = (int(v) for v in torch.aminmax(idx))
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise UserError(
            f"token id {bad} is outside the vocabulary 0..{vocab_size - 1}; encode the text "
            "with the tokenizer the model was trained with"
        )


class GPT(nn.Module):
    """Decoder-only Transformer LM. `model(idx)` with idx (b, s) int64 -> logits (b, s, V)."""

    def __init__(self, config: GPTConfig, encoding: PositionalEncoding | None = None) -> None:
        """`encoding`: an encoding already built (e.g. `build_encoding(...)` with custom
        parameters, or one shared with another model) for this model's shape, used instead of
        building one from `config.encoding` / `config.encoding_params`; its registry name must
        be `config.encoding`, so the config still describes (and reloads) the model."""
        super().__init__()
        self.config = config
        if encoding is not None and not isinstance(encoding, PositionalEncoding):
            raise UserError(f"encoding must be a PositionalEncoding, got {type(encoding).__name__}")
        if encoding is not None and encoding.name != config.encoding:
            raise UserError(
                f"the given encoding is '{encoding.name}' but config.encoding is "
                f"'{config.encoding}'; set config.encoding='{encoding.name}'"
            )
        self.encoding = encoding or build_for_model(
            config.encoding,
            config.encoding_params,
            d_model=config.d_model,
            num_heads=config.n_head,
            head_dim=config.head_dim,
            num_layers=config.n_layer,
            d_ff=config.d_ff,
        )
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self._init_weights()
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def _init_weights(self) -> None:
        # GPT-2 init: N(0, 0.02); residual output projections scaled by 1/sqrt(2·n_layer).
        residual_std = EMBEDDING_INIT_STD / math.sqrt(2 * self.config.n_layer)
        for name, module in self.named_modules():
            if name.startswith("encoding"):
                continue  # encodings initialize their own parameters
            if isinstance(module, nn.Linear):
                std = residual_std if name.endswith(("attn.out", "mlp.w2")) else EMBEDDING_INIT_STD
                nn.init.normal_(module.weight, std=std)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=EMBEDDING_INIT_STD)

    def num_params(self) -> int:
        """Trainable parameters, tied weights counted once."""
        return sum(p.numel() for p in self.parameters())

    def position_context(
        self,
        s: int,
        positions: Tensor | None,
        cache: KVCache | None,
        device: torch.device,
        probe: AttentionProbe | None = None,
    ) -> PositionContext:
        offset = cache.length if cache is not None else 0
        if positions is None and self.config.random_positions and cache is None:
            positions = self.sample_positions(s, device)
        elif positions is None:
            if self.config.random_positions:
                raise UserError(
                    "a model trained with random_positions needs explicit positions when "
                    "decoding with a cache; generate() samples them for the whole sequence"
                )
            positions = torch.arange(offset, offset + s, device=device)
        elif positions.shape != (s,):
            raise UserError(f"positions must have shape ({s},), got {tuple(positions.shape)}")
        return make_position_context(
            self.encoding, positions, cache, self.config.causal, self.config.d_ff, probe=probe
        )

    def sample_positions(self, s: int, device: torch.device) -> Tensor:
        """A sorted random subset of s positions from [0, random_positions) (s,): fresh ones
        from the global RNG while training; in eval mode a fixed draw per length, so evaluation
        is deterministic."""
        limit = self.config.random_positions
        assert limit is not None
        if s > limit:
            raise UserError(
                f"sequence of {s} tokens is longer than random_positions={limit}, the range "
                f"positions are drawn from; train with a larger random_positions"
            )
        generator = None if self.training else torch.Generator().manual_seed(s)
        return torch.randperm(limit, generator=generator)[:s].sort().values.to(device)

    def forward(
        self,
        idx: Tensor,
        positions: Tensor | None = None,
        cache: KVCache | None = None,
        probe: AttentionProbe | None = None,
    ) -> Tensor:
        """idx (b, s) int64; positions (s,) int64, default offset .. offset+s-1 where offset is
        the cache length; cache: keys/values of earlier tokens, extended in place; probe:
        receives every layer's attention probabilities (`AttentionProbe`).
        Returns logits (b, s, V) in float32."""
        check_token_ids(idx, self.config.vocab_size)
        ctx = self.position_context(idx.shape[1], positions, cache, idx.device, probe)
        x = self.embed(idx)  # (b, s, D)
        if self.config.embed_scale:  # the Transformer paper's sqrt(D) (see GPTConfig)
            x = x * math.sqrt(self.config.d_model)
        if "input" in ctx.encoding.sites:
            x = x + ctx.encoding.input_embedding(ctx.q_positions).to(x.dtype)
        for block in self.blocks:
            x = block(x, ctx, cache)
        if cache is not None:
            cache.advance(ctx.q_positions)
        return self.lm_head(self.norm(x)).float()

    @torch.no_grad()
    def generate(
        self,
        idx: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        on_token: Callable[[Tensor], None] | None = None,
    ) -> Tensor:
        """Sample `max_new_tokens` after the prompt idx (b, s); returns (b, s + max_new_tokens).
        `on_token(token (b,))` is called with each new token as it is sampled (streaming).

        With a KV cache each step feeds only the new token. Encodings whose cached keys go
        stale as the sequence grows (`cache = "none"`) recompute the full sequence
        each step instead, with a warning. Encodings whose rotation depends on the length
        (dynamic NTK, LongRoPE) keep their cache while their rotation
        is unchanged and recompute the prefix when it changes (`extrapos.models.rotation_state`), so
        cached decoding gives the same logits as the full forward at every step. temperature 0
        means greedy decoding. Non-finite logits (NaN/inf weights) raise `UserError`.
        """
        if not self.config.causal:
            raise UserError("an encoder model (causal=False) cannot generate text; use causal=True")
        if use_cache and self.encoding.cache == "none":
            warnings.warn(
                f"encoding '{self.encoding.name}' cannot reuse cached keys; recomputing the full "
                f"sequence at every step",
                stacklevel=2,
            )
            use_cache = False
        cache = KVCache(self.config.n_layer) if use_cache else None
        s = idx.shape[1]
        positions = torch.arange(s + max_new_tokens, device=idx.device)
        if self.config.random_positions:
            positions = self.sample_positions(s + max_new_tokens, idx.device)
        if max_new_tokens < 0:
            raise UserError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if idx.ndim != 2 or idx.shape[1] == 0:
            raise UserError(f"the prompt must have shape (batch, seq >= 1), got {tuple(idx.shape)}")

        def seq_len(t: int) -> int:  # the length whose rotation a full forward over t tokens uses
            return int(positions[:t].max()) + 1

        # a rotation chosen by the length (dynamic NTK, LongRoPE, a hybrid with such layers):
        # the cache is exact only while that rotation stays the same
        if cache is not None:
            renew_if_stale(cache, self.encoding, seq_len(s))  # records the prefill's rotation
        out = idx
        logits = self(idx, positions=positions[:s], cache=cache)[:, -1]
        for step in range(max_new_tokens):
            _check_finite(logits, step)
            next_token = sample_next(logits, temperature, top_k, top_p, generator)
            out = torch.cat((out, next_token[:, None]), dim=1)
            if on_token is not None:
                on_token(next_token)
            if step == max_new_tokens - 1:
                break
            t = out.shape[1]
            if cache is not None and renew_if_stale(cache, self.encoding, seq_len(t)):
                # cached entries were made with other frequencies: recompute them (exact)
                logits = self(out, positions=positions[:t], cache=cache)
            elif cache is not None:
                logits = self(next_token[:, None], positions=positions[t - 1 : t], cache=cache)
            else:
                logits = self(out, positions=positions[:t])
            logits = logits[:, -1]
        return out

    @classmethod
    def from_checkpoint(cls, run_dir: str | Path) -> GPT:
        """The model of a trained run directory (weights and config; its tokenizer comes with
        `extrapos.training.run_dir.load_run`). Run directories are the run layer's business:
        it registers its loader here when imported (importing `extrapos` does)."""
        if _checkpoint_loader is None:
            raise UserError("no checkpoint loader: import extrapos.training.run_dir first")
        return _checkpoint_loader(run_dir)


def make_position_context(
    enc: PositionalEncoding,
    positions: Tensor,
    cache: KVCache | None,
    causal: bool,
    d_ff: int | None,
    key_mask: Tensor | None = None,
    probe: AttentionProbe | None = None,
) -> PositionContext:
    """The positions, bias table and FFN term of one forward pass over tokens at `positions`
    (s,), after the `cache`d ones. Causal: a one-sided (h, n) distance table; otherwise
    (encoders) the signed (h, 2n - 1) one, and encodings without a bidirectional form refuse."""
    enc.check_positions(int(positions.max()))
    device = positions.device
    k_positions = positions if cache is None else torch.cat((cache.positions.to(device), positions))
    offset = cache.length if cache is not None else 0
    if not causal:
        check_bidirectional(enc, cache)
    center = None if cache is None else _cache_center(enc, cache, k_positions)
    where = Positions(positions, k_positions, offset, center)
    table = bias_table(enc, where, causal)  # once for every layer
    ffn_term = enc.ffn_term(positions, d_ff) if "ffn" in enc.sites else None
    return PositionContext(
        enc, where, table, ffn_term, causal=causal, key_mask=key_mask, probe=probe
    )


def _cache_center(enc: PositionalEncoding, cache: KVCache, k_positions: Tensor) -> float | None:
    """The scaling centre of this cached call for an encoding whose rotated keys carry one
    (`decode_center`, xPos); when it moves, the cached keys of every layer are rescaled to it
    in place (once per move, not per step). None for every other encoding."""
    decode_center = getattr(enc, "decode_center", None)
    if decode_center is None:
        return None
    center = decode_center(cache.center, int(k_positions.min()), int(k_positions.max()))
    if cache.center is not None and center != cache.center and cache.length:
        for k in cache.k:
            if k is not None:
                enc.rescale_keys(k[..., : cache.length, :], cache.center, center)
    cache.center = center
    return center


def check_bidirectional(enc: PositionalEncoding, cache: KVCache | None = None) -> None:
    """Refuse what an encoder (non-causal) stack cannot do: a KV cache, or an encoding that
    computes causal attention itself (the `attention` site), named in the message."""
    if cache is not None:
        raise UserError(
            "an encoder model (causal=False) has no KV cache: every token sees the whole "
            "sequence; run it on the full sequence"
        )
    if "attention" in enc.sites and not enc.bidirectional_attend:
        raise UserError(
            f"encoding '{enc.name}' computes causal attention itself and has no "
            f"bidirectional form; use causal=True or an input/q-k/bias encoding"
        )


def _check_finite(logits: Tensor, step: int) -> None:
    if not bool(torch.isfinite(logits).all()):
        raise UserError(
            f"the model produced non-finite logits at generation step {step}: its weights are "
            "NaN/inf or it diverged in training; retrain it (e.g. a lower --lr)"
        )


def sample_next(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sample one token per row of logits (b, V) -> (b,) int64, with temperature, top-k and
    nucleus (top-p) filtering. temperature 0 -> argmax."""
    if not temperature >= 0:  # also catches NaN
        raise UserError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise UserError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"top_p must be in (0, 1], got {top_p}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    scaled = logits / temperature
    if not bool(torch.isfinite(scaled).all()) and bool(torch.isfinite(logits).all()):
        return logits.argmax(dim=-1)  # a temperature so small it overflows: its limit, greedy
    logits = scaled
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
