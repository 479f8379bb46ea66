"""Batched greedy and beam-search decoding for `Seq2Seq`, built for speed on CPU.

Each source row i may produce at most `max_len_a · |src_i| + max_len_b` tokens (fairseq's
`--max-len-a/--max-len-b`); a row that reaches its limit is ended with EOS. Pad and BOS are never
emitted.

Beam search (Sutskever et al. 2014; length penalty of Wu et al. 2016, GNMT):

    score(y) = log p(y | x) / lp(y),   lp(y) = ((5 + |y|) / 6) ** alpha

`beam` hypotheses per sentence are kept by their summed log-probability; a finished hypothesis
stays in the beam, extended only by padding at no cost, so it competes with the live ones; a
sentence is done when every one of its (reachable) hypotheses is finished, and returns its best
by `score`. With beam 1 this is exactly greedy decoding (tested). |y| counts the tokens up to and
including EOS. These are the semantics of the first implementation (kept as the
reference the tests compare against, `tests/models/seq2seq_reference.py`); what differs is only the cost:

- all sentences × beams of a batch are one (b·k)-row decoder step; sentences are sorted by
  source length into batches of about `batch_tokens` source tokens × beam, so padding is short;
- cross-attention keys/values are computed once per source (`Seq2Seq.encode`), repeated per
  beam once;
- the decoder's self-attention KV cache is preallocated to the batch's longest possible output
  and stored time-major ((t, rows, h, d) memory, seen as (rows, h, t, d)): appending writes one
  slice in place, and reordering by beam origin is one `index_select` of the filled prefix only
  (no concatenation, no copy of unused capacity);
- a sentence whose hypotheses are all finished leaves the batch at once (its rows are dropped
  from the cache, the cross-attention memory and the search state in that same gather), so the
  batch shrinks as sentences end instead of running to its longest member.

Shapes: b sentences, k beams, r = live rows, S source length, V vocab, h heads, d head dim.
"""

from __future__ import annotations

import torch
from torch import Tensor

from extrapos.core.errors import UserError
from extrapos.models.gpt import KVCache
from extrapos.models.rotation_state import renew_if_stale
from extrapos.models.seq2seq import EncoderState, Seq2Seq

__all__ = ["beam_decode", "greedy_decode", "translate_ids"]


def _limits(src: Tensor, pad_id: int, max_len_a: float, max_len_b: int) -> Tensor:
    """(b,) int64 output-length limits a·|src| + b (at least 1)."""
    lengths = (src != pad_id).sum(-1)
    return (max_len_a * lengths.double() + max_len_b).floor().long().clamp(min=1)


def _new_cache(model: Seq2Seq, rows: int, capacity: int, device: torch.device) -> KVCache | None:
    """A decoder KV cache whose buffers hold `capacity` steps for `rows` rows, time-major (see
    the module docstring); None when the encoding's cached keys go stale."""
    cache = model.new_cache()
    if cache is None:
        return None
    cfg = model.config
    h, d = cfg.n_head, cfg.d_model // cfg.n_head
    dtype = model.embed.weight.dtype
    for layer in range(cfg.n_layer):
        for store in (cache.k, cache.v):
            store[layer] = torch.empty(capacity, rows, h, d, dtype=dtype, device=device).permute(
                1, 2, 0, 3
            )
    return cache


@torch.no_grad()
def _gather_cache(cache: KVCache, index: Tensor) -> None:
    """Rows `index` (r',) of every layer's cached keys/values, filled prefix only, time-major."""
    n = cache.length
    for store in (cache.k, cache.v):
        for layer, buf in enumerate(store):
            if buf is None:
                continue
            timed = buf.permute(2, 0, 1, 3)  # (capacity, r, h, d), contiguous when ours
            new = timed.new_empty(timed.shape[0], index.shape[0], *timed.shape[2:])
            torch.index_select(timed[:n], 1, index, out=new[:n])
            store[layer] = new.permute(1, 2, 0, 3)


def _gather_state(state: EncoderState, index: Tensor) -> EncoderState:
    return EncoderState(
        [(k.index_select(0, index), v.index_select(0, index)) for k, v in state.memory_kv],
        state.src_mask.index_select(0, index),
    )


def _next_logp(model: Seq2Seq, tokens: Tensor, t: int, state: EncoderState, cache) -> Tensor:  # noqa: ANN001
    """Log-probs (r, V) of the next token after tokens[:, : t + 1]; pad and BOS excluded."""
    if cache is not None and renew_if_stale(cache, model.decoder_encoding, t + 1):
        # dynamic NTK / LongRoPE: entries made under other frequencies than a full decode of
        # t + 1 tokens uses would be stale in deeper layers; refill the cache (exact)
        logits = model.decode(tokens[:, : t + 1], state, cache)
    elif cache is not None:
        logits = model.decode(tokens[:, t : t + 1], state, cache)
    else:  # an encoding whose cached keys go stale: recompute the prefix
        logits = model.decode(tokens[:, : t + 1], state)
    logits = logits[:, -1]
    logits[:, model.config.pad_id] = float("-inf")
    logits[:, model.config.bos_id] = float("-inf")
    return logits.log_softmax(-1)


def _strip(row: list[int], pad_id: int, eos_id: int) -> list[int]:
    """Ids before the first EOS, padding dropped."""
    if eos_id in row:
        row = row[: row.index(eos_id)]
    return [i for i in row if i != pad_id]


@torch.no_grad()
def beam_decode(
    model: Seq2Seq,
    src: Tensor,
    beam: int = 4,
    length_penalty: float = 1.0,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
) -> list[list[int]]:
    """Beam search (see the module docstring); src (b, S) right-padded -> per row the best
    hypothesis' ids (EOS and padding removed)."""
    if beam < 1:
        raise UserError(f"beam size must be >= 1, got {beam}")
    cfg = model.config
    b, k, device = src.shape[0], beam, src.device
    limit_of = _limits(src, cfg.pad_id, max_len_a, max_len_b)  # (b,)
    steps = int(limit_of.max())  # the longest row ends at its limit (no EOS needed)
    state = model.encode(src).repeat(k)  # rows r·k .. r·k + k - 1 are sentence r's beams
    cache = _new_cache(model, b * k, steps, device)
    tokens = torch.full((b * k, steps + 1), cfg.pad_id, dtype=torch.long, device=device)
    tokens[:, 0] = cfg.bos_id
    sentence = torch.arange(b, device=device)  # (b',) original index of each live sentence
    limits = limit_of.repeat_interleave(k)  # (r,)
    # only the first beam of each sentence is live at the start (the others are copies)
    scores = torch.full((b, k), float("-inf"), device=device)
    scores[:, 0] = 0.0
    scores = scores.view(-1)
    done = torch.zeros(b * k, dtype=torch.bool, device=device)
    lengths = torch.zeros(b * k, dtype=torch.long, device=device)
    results: list[list[int]] = [[] for _ in range(b)]
    for t in range(steps):
        logp = _next_logp(model, tokens, t, state, cache)  # (r, V)
        rows, vocab = logp.shape
        live = rows // k
        # a row at its length limit may only end; a finished row is extended by padding at 0
        at_limit = limits <= t
        if bool(at_limit.any()):
            eos = logp[:, cfg.eos_id].clone()
            logp.masked_fill_(at_limit[:, None], float("-inf"))
            logp[:, cfg.eos_id] = eos
        if bool(done.any()):
            logp.masked_fill_(done[:, None], float("-inf"))
            logp[:, cfg.pad_id] = torch.where(done, 0.0, logp[:, cfg.pad_id])
        candidates = (scores[:, None] + logp).view(live, k * vocab)
        top_scores, top = candidates.topk(k, dim=-1)  # (b', k)
        origin = (top // vocab + torch.arange(live, device=device)[:, None] * k).view(-1)
        token = (top % vocab).view(-1)
        scores = top_scores.view(-1)
        was_done = done.index_select(0, origin)
        lengths = lengths.index_select(0, origin) + (~was_done).long()
        done = was_done | (token == cfg.eos_id)
        tokens = tokens.index_select(0, origin)
        tokens[:, t + 1] = token
        # a sentence is finished when each of its reachable (finite-score) beams is
        finished = (done | ~torch.isfinite(scores)).view(live, k).all(-1)  # (b',)
        if t == steps - 1:
            finished = torch.ones_like(finished)
        if bool(finished.any()):
            _finish(results, finished, sentence, scores, lengths, tokens, k, length_penalty, cfg)
            keep_sent = (~finished).nonzero().view(-1)
            if keep_sent.numel() == 0:
                break
            keep = (keep_sent[:, None] * k + torch.arange(k, device=device)).view(-1)
            sentence = sentence.index_select(0, keep_sent)
            scores, done, lengths = scores[keep], done[keep], lengths[keep]
            tokens, limits = tokens.index_select(0, keep), limits.index_select(0, keep)
            state = _gather_state(state, keep)
            origin = origin.index_select(0, keep)
        if cache is not None:
            _gather_cache(cache, origin)
    return results


def _finish(
    results: list[list[int]],
    finished: Tensor,
    sentence: Tensor,
    scores: Tensor,
    lengths: Tensor,
    tokens: Tensor,
    k: int,
    length_penalty: float,
    cfg,  # noqa: ANN001
) -> None:
    """Write the best hypothesis (by the length-penalized score) of each finished sentence."""
    which = finished.nonzero().view(-1)
    penalty = ((5.0 + lengths.double()) / 6.0) ** length_penalty
    final = (scores.double() / penalty).view(-1, k)[which]
    final = torch.where(torch.isfinite(final), final, torch.full_like(final, float("-inf")))
    best = final.argmax(-1) + which * k
    for s, row in zip(sentence[which].tolist(), tokens[best, 1:].tolist(), strict=True):
        results[s] = _strip(row, cfg.pad_id, cfg.eos_id)


@torch.no_grad()
def greedy_decode(
    model: Seq2Seq, src: Tensor, max_len_a: float = 1.5, max_len_b: int = 10
) -> list[list[int]]:
    """src (b, S) right-padded -> per row the generated ids (EOS and padding removed); a row
    leaves the batch when it ends."""
    cfg = model.config
    b, device = src.shape[0], src.device
    limits = _limits(src, cfg.pad_id, max_len_a, max_len_b)
    steps = int(limits.max())
    state = model.encode(src)
    cache = _new_cache(model, b, steps, device)
    tokens = torch.full((b, steps + 1), cfg.pad_id, dtype=torch.long, device=device)
    tokens[:, 0] = cfg.bos_id
    row_of = torch.arange(b, device=device)
    results: list[list[int]] = [[] for _ in range(b)]
    for t in range(steps):
        token = _next_logp(model, tokens, t, state, cache).argmax(-1)
        token = torch.where(limits <= t, cfg.eos_id, token)
        tokens[:, t + 1] = token
        ended = token == cfg.eos_id
        if t == steps - 1:  # the longest row ends at its limit
            ended = torch.ones_like(ended)
        if not bool(ended.any()):
            continue
        for r, row in zip(row_of[ended].tolist(), tokens[ended, 1:].tolist(), strict=True):
            results[r] = _strip(row, cfg.pad_id, cfg.eos_id)
        keep = (~ended).nonzero().view(-1)
        if keep.numel() == 0:
            break
        row_of, limits = row_of[keep], limits[keep]
        tokens = tokens.index_select(0, keep)
        state = _gather_state(state, keep)
        if cache is not None:
            _gather_cache(cache, keep)
    return results


def translate_ids(
    model: Seq2Seq,
    sources: list[Tensor],
    beam: int = 4,
    length_penalty: float = 1.0,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    batch_tokens: int = 4096,
) -> list[list[int]]:
    """Translate 1-D source id tensors (no specials) in length-sorted batches of at most
    `batch_tokens` source tokens · beam; returns the output ids in input order."""
    cfg = model.config
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    results: list[list[int]] = [[] for _ in sources]
    start = 0
    device = next(model.parameters()).device
    while start < len(order):
        stop = start + 1
        longest = max(len(sources[order[start]]), 1)
        while stop < len(order):
            longest_next = max(longest, len(sources[order[stop]]))
            if (stop - start + 1) * longest_next * beam > batch_tokens:
                break
            longest, stop = longest_next, stop + 1
        batch = [sources[i] for i in order[start:stop]]
        src = torch.full((len(batch), longest), cfg.pad_id, dtype=torch.long)
        for row, ids in enumerate(batch):
            src[row, : len(ids)] = ids
            if len(ids) == 0:  # an empty source still needs one real key
                src[row, 0] = cfg.eos_id
        src = src.to(device)
        if beam == 1:
            outs = greedy_decode(model, src, max_len_a, max_len_b)
        else:
            outs = beam_decode(model, src, beam, length_penalty, max_len_a, max_len_b)
        for i, ids in zip(order[start:stop], outs, strict=True):
            results[i] = ids
        start = stop
    return results
