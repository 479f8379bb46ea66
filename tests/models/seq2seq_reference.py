"""The first Seq2Seq decoder, kept as a test reference: batched greedy and beam search with a
per-step copy of the whole cache and no early exit. `extrapos.models.seq2seq_decoding` must give
the same outputs token for token (tests/models/test_seq2seq_decoding.py).

Each source row i may produce at most `max_len_a · |src_i| + max_len_b` tokens (fairseq's
`--max-len-a/--max-len-b`); a row that reaches its limit is ended with EOS. The decoder uses its
KV cache (one new token per step); the cross-attention keys/values are computed once per source
(`Seq2Seq.encode`) and shared by all beams of a sentence.

Beam search (Sutskever et al. 2014; length penalty of Wu et al. 2016, GNMT):

    score(y) = log p(y | x) / lp(y),   lp(y) = ((5 + |y|) / 6) ** alpha

`beam` hypotheses per sentence are kept by their summed log-probability; a finished hypothesis
stays in the beam, extended only by padding at no cost, so it competes with the live ones; the
search stops when every beam of every sentence is finished (or at the row's length limit), and
each sentence returns its best hypothesis by `score`. With beam 1 this is exactly greedy
decoding (tested). |y| counts the tokens up to and including EOS.

Shapes: b sentences, k beams, S source length, V vocab.
"""

from __future__ import annotations

import torch
from torch import Tensor

from extrapos.core.errors import UserError
from extrapos.models.gpt import KVCache
from extrapos.models.seq2seq import Seq2Seq


def reorder_cache(cache: KVCache, index: Tensor) -> None:
    """Keep rows `index` (b',) of every layer's cached keys/values (beam search), in place."""
    for layer in range(len(cache.k)):
        k, v = cache.k[layer], cache.v[layer]
        if k is not None and v is not None:
            cache.k[layer], cache.v[layer] = k.index_select(0, index), v.index_select(0, index)


def _limits(src: Tensor, pad_id: int, max_len_a: float, max_len_b: int) -> Tensor:
    """(b,) int64 output-length limits a·|src| + b (at least 1)."""
    lengths = (src != pad_id).sum(-1)
    return (max_len_a * lengths.double() + max_len_b).floor().long().clamp(min=1)


def _step(model: Seq2Seq, out: Tensor, state, cache) -> Tensor:  # noqa: ANN001
    """Log-probs (rows, V) of the next token after `out` (rows, t); padding and BOS, never
    targets in training, are excluded."""
    if cache is not None:
        logits = model.decode(out[:, -1:], state, cache)
    else:  # an encoding whose cached keys go stale: recompute the prefix
        logits = model.decode(out, state)
    logits = logits[:, -1]
    logits[:, [model.config.pad_id, model.config.bos_id]] = float("-inf")
    return logits.log_softmax(-1)


@torch.no_grad()
def greedy_decode(
    model: Seq2Seq, src: Tensor, max_len_a: float = 1.5, max_len_b: int = 10
) -> list[list[int]]:
    """src (b, S) right-padded -> per row the generated ids (EOS and padding removed)."""
    cfg = model.config
    limits = _limits(src, cfg.pad_id, max_len_a, max_len_b)
    state = model.encode(src)
    cache = model.new_cache()
    b = src.shape[0]
    out = torch.full((b, 1), cfg.bos_id, dtype=torch.long, device=src.device)
    done = torch.zeros(b, dtype=torch.bool, device=src.device)
    for t in range(int(limits.max())):
        logp = _step(model, out, state, cache)
        token = logp.argmax(-1)
        token = torch.where(limits <= t, torch.full_like(token, cfg.eos_id), token)
        token = torch.where(done, torch.full_like(token, cfg.pad_id), token)
        out = torch.cat((out, token[:, None]), dim=1)
        done |= token == cfg.eos_id
        if bool(done.all()):
            break
    return [_strip(row, cfg.pad_id, cfg.eos_id) for row in out[:, 1:].tolist()]


@torch.no_grad()
def beam_decode(
    model: Seq2Seq,
    src: Tensor,
    beam: int = 4,
    length_penalty: float = 1.0,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
) -> list[list[int]]:
    """Beam search (see module docstring); src (b, S) -> per row the best hypothesis' ids."""
    if beam < 1:
        raise UserError(f"beam size must be >= 1, got {beam}")
    cfg = model.config
    b, k, device = src.shape[0], beam, src.device
    limits = _limits(src, cfg.pad_id, max_len_a, max_len_b).repeat_interleave(k)  # (b·k,)
    state = model.encode(src).repeat(k)
    cache = model.new_cache()
    out = torch.full((b * k, 1), cfg.bos_id, dtype=torch.long, device=device)
    # only the first beam of each sentence is live at the start (the others are copies)
    scores = torch.full((b, k), float("-inf"), device=device)
    scores[:, 0] = 0.0
    scores = scores.view(-1)
    done = torch.zeros(b * k, dtype=torch.bool, device=device)
    lengths = torch.zeros(b * k, dtype=torch.long, device=device)
    for t in range(int(limits.max())):
        logp = _step(model, out, state, cache)  # (b·k, V)
        vocab = logp.shape[-1]
        # a row at its length limit may only end; a finished row is extended by padding at 0
        at_limit = limits <= t
        if bool(at_limit.any()):
            ended = torch.full_like(logp, float("-inf"))
            ended[:, cfg.eos_id] = logp[:, cfg.eos_id]
            logp = torch.where(at_limit[:, None], ended, logp)
        if bool(done.any()):
            padded = torch.full_like(logp, float("-inf"))
            padded[:, cfg.pad_id] = 0.0
            logp = torch.where(done[:, None], padded, logp)
        candidates = (scores[:, None] + logp).view(b, k * vocab)
        top_scores, top = candidates.topk(k, dim=-1)  # (b, k)
        origin = (top // vocab) + torch.arange(b, device=device)[:, None] * k  # row in b·k
        origin, token = origin.view(-1), (top % vocab).view(-1)
        scores = top_scores.view(-1)
        out = torch.cat((out.index_select(0, origin), token[:, None]), dim=1)
        was_done = done.index_select(0, origin)
        lengths = lengths.index_select(0, origin) + (~was_done).long()
        done = was_done | (token == cfg.eos_id)
        if cache is not None:
            reorder_cache(cache, origin)
        if bool(done.all()):
            break
    penalty = ((5.0 + lengths.double()) / 6.0) ** length_penalty
    final = (scores.double() / penalty).view(b, k)
    final = torch.where(torch.isfinite(final), final, torch.full_like(final, float("-inf")))
    best = final.argmax(-1) + torch.arange(b, device=device) * k
    rows = out.index_select(0, best)[:, 1:].tolist()
    return [_strip(row, cfg.pad_id, cfg.eos_id) for row in rows]


def _strip(row: list[int], pad_id: int, eos_id: int) -> list[int]:
    """Ids before the first EOS, padding dropped."""
    if eos_id in row:
        row = row[: row.index(eos_id)]
    return [i for i in row if i != pad_id]


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


__all__ = ["beam_decode", "greedy_decode", "translate_ids"]
