"""Dialogue probes: does a model keep using earlier turns once the history passes train_len?

Two measurements on the held-out (deduplicated) test dialogues of a `DialogueCorpus`
(`extrapos.data.dialogue`), for a model trained at length L:

History use. For each response turn t >= 1 of each dialogue, the NLL (nats per token) of its
body (the utterance and its newline, not the speaker mark) given the last k turns,

    NLL_k = - (1 / N) · Σ_{t, i} log p(body_t[i] | turns t-k .. t-1, mark_t, body_t[:i])

with k = 0, 1, 2, 4, 8 and all (the whole dialogue so far); the context always starts at
position 0. k >= t is the whole history, so those cases reuse the k = all score, which is one
forward pass over the whole dialogue. The k = all scores are also binned by the history's length
h_t (tokens before turn t) as a multiple of L: <=1, 1-2, 2-4, 4-8, 8-16 (a bin (a, b] holds
a·L < h_t <= b·L). An encoding that extrapolates keeps gaining from history past L (NLL_all <
NLL_8 < ... < NLL_0 and flat or falling across bins); one that breaks loses the gain or ends
above NLL_0. Only dialogues of at most `max_len` tokens (default 16·L) are used, so every
forward stays within 16·L.

Recall across turns (a dialogue form of passkey retrieval, Mohtashami & Jaggi 2023). A fact —
a name, a number or a place, from templates filled from fixed lists — is stated in turn 0;
filler turns (consecutive utterances of real test dialogues, their speakers following the
alternation) follow until the whole sequence reaches the target distance D in {1, 2, 4, 8, 16}·L
tokens (the fact-to-answer span; D is an upper bound, and the skeleton alone when it is
longer); then the fact is asked for and the answer prefix given ("Your name is"). The right
value and `candidates - 1` others from the same list are ranked by their log-likelihood
Σ log p(value tokens | prefix); a trial counts when the right one ranks first. The right value is
uniform among the candidates, so a model that ignores the fact scores chance = 1 / candidates.

Cost. History use: one forward per turn start s, over turns s .. s + 8, scores turn s + j with
exactly j turns of history for every j <= 8 (so every k < all at once), plus one forward of the
whole dialogue when it has more than 9 turns; batched by length; recall: with a KV cache, one forward per prompt,
its cache then tiled over the candidates; encodings without a reusable cache run prompt +
candidate rows. Everything is deterministic given the seed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from extrapos.core.errors import UserError
from extrapos.data.dialogue import DialogueCorpus, speaker, turn_pieces
from extrapos.models.gpt import GPT, KVCache
from extrapos.models.rotation_state import changes_with_length
from extrapos.probes.perplexity import BATCH_TOKENS
from extrapos.probes.scored import PositionLimit

__all__ = [
    "HISTORY_KS",
    "LENGTH_BINS",
    "RECALL_FACTORS",
    "DialogueEvalConfig",
    "dialogue_eval",
    "history_use",
    "make_recall_prompts",
    "recall_across_turns",
    "score_candidates",
    "token_nll",
]

HISTORY_KS: tuple[int | str, ...] = (0, 1, 2, 4, 8, "all")
LENGTH_BINS: tuple[tuple[float, float, str], ...] = (
    (-1.0, 1.0, "<=1"),
    (1.0, 2.0, "1-2"),
    (2.0, 4.0, "2-4"),
    (4.0, 8.0, "4-8"),
    (8.0, 16.0, "8-16"),
)
RECALL_FACTORS: tuple[int, ...] = (1, 2, 4, 8, 16)

NAMES = (
    "Olivia", "Liam", "Emma", "Noah", "Ava", "Lucas", "Mia", "Ethan", "Sofia", "Mason",
    "Chloe", "Henry", "Grace", "Oscar", "Ruby", "Felix", "Alice", "Jack", "Nora", "Leo",
)  # fmt: skip
PLACES = (
    "Paris", "London", "Berlin", "Madrid", "Rome", "Tokyo", "Boston", "Dublin", "Vienna",
    "Oslo", "Lisbon", "Prague", "Sydney", "Toronto", "Chicago", "Seattle", "Cairo", "Delhi",
    "Athens", "Warsaw",
)  # fmt: skip
NUMBERS = tuple(str(n) for n in range(100, 1000))

# kind -> (fact, question by the fact's speaker, answer prefix to them,
#          question by the other speaker, answer prefix by the fact's speaker, values)
TEMPLATES: dict[str, tuple[str, str, str, str, str, tuple[str, ...]]] = {
    "name": (
        "My name is {x} .",
        "What is my name ?",
        "Your name is",
        "What is your name again ?",
        "My name is",
        NAMES,
    ),
    "number": (
        "My room number is {x} .",
        "What is my room number ?",
        "Your room number is",
        "What is your room number again ?",
        "My room number is",
        NUMBERS,
    ),
    "place": (
        "I am from {x} .",
        "Where am I from ?",
        "You are from",
        "Where are you from again ?",
        "I am from",
        PLACES,
    ),
}


@dataclass
class DialogueEvalConfig:
    """Settings of `dialogue_eval`; `train_len` is L (the model's training length)."""

    train_len: int
    max_len: int | None = None  # longest forward; None: 16 · train_len
    max_dialogues: int | None = 200  # test dialogues used for history use (file order); None: all
    recall_factors: tuple[int, ...] = RECALL_FACTORS
    recall_trials: int = 24  # prompts per distance (the three fact kinds in turn)
    candidates: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.train_len < 1:
            raise UserError(f"train_len must be >= 1, got {self.train_len}")
        if self.max_len is None:
            self.max_len = 16 * self.train_len
        if self.max_len < 2:
            raise UserError(f"max_len must be >= 2, got {self.max_len}")
        if self.max_dialogues is not None and self.max_dialogues < 1:
            raise UserError(f"max_dialogues must be >= 1, got {self.max_dialogues}")
        if self.recall_trials < 1 or not 2 <= self.candidates <= len(NAMES):
            raise UserError(
                f"recall_trials must be >= 1 and candidates in [2, {len(NAMES)}], got "
                f"{self.recall_trials} and {self.candidates}"
            )
        if not self.recall_factors or min(self.recall_factors) < 1:
            raise UserError(
                f"recall distances must be positive multiples of L: {self.recall_factors}"
            )
        self.recall_factors = tuple(sorted(set(self.recall_factors)))


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def token_nll(
    model: Any, seqs: Sequence[Tensor], batch_tokens: int = BATCH_TOKENS, progress: bool = False
) -> list[Tensor]:
    """Per-token NLL of each 1-D int64 sequence: out[i][j] = -log p(seqs[i][j+1] | seqs[i][:j+1]),
    shape (len - 1,), float64. Sequences are sorted by length and right-padded in batches of
    about `batch_tokens` tokens (causal attention: padding never reaches a scored position)."""
    device = _device(model)
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    out: list[Tensor | None] = [None] * len(seqs)
    i = 0
    bar = tqdm(total=len(seqs), disable=not progress, leave=False, desc="score")
    while i < len(order):
        width = len(seqs[order[i]])
        rows = order[i : i + max(1, batch_tokens // max(width, 1))]
        batch = torch.zeros(len(rows), width, dtype=torch.long)
        for r, j in enumerate(rows):
            batch[r, : len(seqs[j])] = seqs[j]
        batch = batch.to(device)
        logits = model(batch[:, :-1])
        nll = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="none").view(
            len(rows), width - 1
        )
        nll = nll.double().cpu()
        for r, j in enumerate(rows):
            out[j] = nll[r, : len(seqs[j]) - 1]
        i += len(rows)
        bar.update(len(rows))
    bar.close()
    return out  # type: ignore[return-value]


def _encoded_turns(dialogue: Sequence[str], tokenizer: Any) -> list[tuple[Tensor, Tensor]]:
    return [(tokenizer.encode(m), tokenizer.encode(b)) for m, b in turn_pieces(tuple(dialogue))]


def _mean(total: float, count: int) -> float | None:
    return total / count if count else None


def history_use(
    model: Any,
    tokenizer: Any,
    corpus: DialogueCorpus,
    config: DialogueEvalConfig,
    progress: bool = False,
) -> tuple[dict[str, Any], int, dict[str, Any]]:
    """({"k": {"0": nll, ..., "all": nll}, "by_length": {"<=1": nll, ...}}, dialogues used,
    extra); see the module docstring. A bin with no response token is None. `extra` holds, per
    length bin, the k = 0 NLL of the same turns ("by_length_k0", so gain = k0 - by_length) and
    the number of scored tokens ("by_length_tokens")."""
    tok = tokenizer
    max_len = config.max_len or 16 * config.train_len
    chosen: list[list[tuple[Tensor, Tensor]]] = []
    for dialogue in corpus.dialogues["test"]:
        if len(dialogue) < 2:
            continue
        turns = _encoded_turns(dialogue, tok)
        if sum(len(m) + len(b) for m, b in turns) <= max_len:
            chosen.append(turns)
        if config.max_dialogues is not None and len(chosen) >= config.max_dialogues:
            break
    if not chosen:
        raise UserError(
            f"no test dialogue of 2+ turns fits in max_len={max_len} tokens; raise --max-len"
        )
    # One forward per turn start s over turns s .. s + K (K = the largest finite k) scores turn
    # s + j with exactly j turns of history for every j <= K; k = all for turns past K needs
    # the whole dialogue, so dialogues longer than K + 1 turns get one more forward from 0.
    top = max(k for k in HISTORY_KS if k != "all")
    seqs: list[Tensor] = []
    owners: list[tuple[int, int]] = []  # (dialogue, first turn; -1: the whole dialogue)
    for d, turns in enumerate(chosen):
        for s in range(len(turns)):
            seqs.append(torch.cat([torch.cat(p) for p in turns[s : s + top + 1]]))
            owners.append((d, s))
        if len(turns) > top + 1:
            seqs.append(torch.cat([torch.cat(p) for p in turns]))
            owners.append((d, -1))
    scores = dict(zip(owners, token_nll(model, seqs, progress=progress), strict=True))
    sums: dict[str, list[float]] = {str(k): [0.0, 0] for k in HISTORY_KS}
    bins: dict[str, list[float]] = {label: [0.0, 0] for *_, label in LENGTH_BINS}
    bins_k0: dict[str, float] = {label: 0.0 for *_, label in LENGTH_BINS}

    def body_nll(d: int, s: int, t: int) -> tuple[float, int]:
        """Summed NLL of turn t's body in the forward from turn s (s = -1: from 0, whole)."""
        turns = chosen[d]
        first = max(s, 0)
        start = sum(len(m) + len(b) for m, b in turns[first:t]) + len(turns[t][0])
        n = len(turns[t][1])
        nll = scores[(d, s)]
        return float(nll[start - 1 : start - 1 + n].sum()), n  # target i is predicted at i-1

    for d, turns in enumerate(chosen):
        history = len(turns[0][0]) + len(turns[0][1])
        for t in range(1, len(turns)):
            whole = body_nll(d, 0 if t <= top else -1, t)
            alone = body_nll(d, t, t)
            for k in HISTORY_KS:
                part, n = whole if k == "all" or k >= t else body_nll(d, t - k, t)
                sums[str(k)][0] += part
                sums[str(k)][1] += n
            ratio = history / config.train_len
            for lo, hi, label in LENGTH_BINS:
                if lo < ratio <= hi:
                    bins[label][0] += whole[0]
                    bins[label][1] += whole[1]
                    bins_k0[label] += alone[0]
            history += len(turns[t][0]) + len(turns[t][1])
    result = {
        "k": {k: _mean(s, int(c)) for k, (s, c) in sums.items()},
        "by_length": {label: _mean(s, int(c)) for label, (s, c) in bins.items()},
    }
    extra = {
        "by_length_k0": {label: _mean(bins_k0[label], int(c)) for label, (_, c) in bins.items()},
        "by_length_tokens": {label: int(c) for label, (_, c) in bins.items()},
    }
    return result, len(chosen), extra


@dataclass
class RecallPrompt:
    """One recall trial: the prompt's token ids, the candidates' ids, the index of the right
    one, the distance label D and the actual prompt length."""

    kind: str
    prompt: Tensor
    candidates: list[Tensor]
    answer: int
    distance: int

    @property
    def length(self) -> int:
        return len(self.prompt) + max(len(c) for c in self.candidates)


def _question(kind: str, n_fill: int, encode: Any) -> Tensor:
    """The question turn after `n_fill` filler turns and the answer's prefix, encoded; the
    fact's speaker A asks on even turns ("What is my name ?"), B on odd ones ("What is your
    name again ?"), and the other one answers."""
    _, q_self, a_self, q_other, a_other, _ = TEMPLATES[kind]
    t = 1 + n_fill
    question, answer = (q_self, a_self) if t % 2 == 0 else (q_other, a_other)
    return encode(f"{speaker(t)} {question}\n{speaker(t + 1)} {answer}")


def make_recall_prompts(
    corpus: DialogueCorpus, tokenizer: Any, config: DialogueEvalConfig
) -> list[RecallPrompt]:
    """`recall_trials` prompts per distance D = factor · L (see the module docstring)."""
    rng = random.Random(config.seed)
    utterances = [u for d in corpus.dialogues["test"] for u in d]
    encode = tokenizer.encode
    prompts: list[RecallPrompt] = []
    kinds = list(TEMPLATES)
    for factor in config.recall_factors:
        distance = factor * config.train_len
        for trial in range(config.recall_trials):
            kind = kinds[trial % len(kinds)]
            fact, *_, values = TEMPLATES[kind]
            chosen = rng.sample(values, config.candidates)
            answer = rng.randrange(config.candidates)
            value = chosen[answer]
            cands = [encode(" " + v) for v in chosen]
            longest = max(len(c) for c in cands)
            head = encode(f"{speaker(0)} {fact.format(x=value)}\n")

            fill: list[Tensor] = []
            start = rng.randrange(len(utterances))
            used = len(head) + longest
            while True:
                t = 1 + len(fill)
                nxt = encode(f"{speaker(t)} {utterances[(start + len(fill)) % len(utterances)]}\n")
                if used + len(nxt) + len(_question(kind, len(fill) + 1, encode)) > distance:
                    break
                fill.append(nxt)
                used += len(nxt)
            prompt = torch.cat([head, *fill, _question(kind, len(fill), encode)])
            prompts.append(RecallPrompt(kind, prompt, cands, answer, distance))
    return prompts


@torch.inference_mode()
def score_candidates(model: Any, prompt: Tensor, candidates: Sequence[Tensor]) -> Tensor:
    """Log-likelihood Σ_i log p(cand[i] | prompt, cand[:i]) of each candidate, shape (C,).

    With a reusable KV cache: one forward over the prompt, its cache tiled over the C
    candidates, then one forward of the (right-padded) candidates; else C rows of
    prompt + candidate in one batch. Both give the same numbers (tests check it). A
    length-dependent rotation (dynamic NTK, LongRoPE) is scored by one unpadded forward per
    candidate: its numbers depend on the row's length."""
    device = _device(model)
    p = len(prompt)
    if isinstance(model, GPT) and changes_with_length(model.encoding):
        # dynamic NTK / LongRoPE choose their rotation by the length of the whole row, so
        # neither a cached prompt nor padding to the longest candidate gives the numbers of
        # the candidate's own forward over prompt + candidate: score each by that forward
        scores = []
        for x in candidates:
            row = torch.cat((prompt.to(device), x.to(device)))[None]
            logits = model(row[:, :-1])[:, p - 1 :]
            logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, row[:, p:, None])
            scores.append(logp.sum())
        return torch.stack(scores).double().cpu()
    c, width = len(candidates), max(len(x) for x in candidates)
    cands = torch.zeros(c, width, dtype=torch.long)
    mask = torch.zeros(c, width, dtype=torch.bool)
    for i, x in enumerate(candidates):
        cands[i, : len(x)] = x
        mask[i, : len(x)] = True
    cands, mask = cands.to(device), mask.to(device)
    reusable = (
        isinstance(model, GPT)
        and model.encoding.cache != "none"
        and not model.config.random_positions
    )
    if reusable:
        cache = KVCache(model.config.n_layer)
        first = model(prompt[None].to(device), cache=cache)[:, -1]  # (1, V)
        for layer in range(len(cache.k)):
            cache.k[layer] = cache.k[layer][:, :, :p].repeat(c, 1, 1, 1)
            cache.v[layer] = cache.v[layer][:, :, :p].repeat(c, 1, 1, 1)
        logits = first.expand(c, -1)[:, None]  # (C, 1, V)
        if width > 1:
            logits = torch.cat((logits, model(cands[:, :-1], cache=cache)), dim=1)  # (C, w, V)
    else:
        rows = torch.cat((prompt[None].expand(c, -1).to(device), cands), dim=1)
        logits = model(rows[:, :-1])[:, p - 1 :]
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, cands[..., None])[..., 0]
    return (logp * mask).sum(-1).double().cpu()


def recall_across_turns(
    model: Any,
    tokenizer: Any,
    corpus: DialogueCorpus,
    config: DialogueEvalConfig,
    progress: bool = False,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """({"<D>": accuracy}, one record per prompt: kind, distance, length, right)."""
    prompts = make_recall_prompts(corpus, tokenizer, config)
    records = []
    for pr in tqdm(prompts, disable=not progress, leave=False, desc="recall"):
        scores = score_candidates(model, pr.prompt, pr.candidates)
        right = int(torch.argmax(scores)) == pr.answer
        records.append(
            {"kind": pr.kind, "distance": pr.distance, "length": pr.length, "right": right}
        )
    accuracy: dict[str, float] = {}
    for factor in config.recall_factors:
        hits = [r["right"] for r in records if r["distance"] == factor * config.train_len]
        accuracy[str(factor * config.train_len)] = sum(hits) / len(hits)
    return accuracy, records


def dialogue_eval(
    model: Any,
    tokenizer: Any,
    corpus: DialogueCorpus,
    config: DialogueEvalConfig,
    progress: bool = False,
    details: bool = False,
) -> dict[str, Any]:
    """Both probes: {"history": {"k", "by_length"}, "recall": {"<D>": acc}, "chance",
    "n_dialogues"}; with `details`, also "settings", "recall_lengths" (mean prompt length per D)
    and "seconds"."""
    import time

    if not isinstance(corpus, DialogueCorpus):
        raise UserError(
            f"{corpus.name} is not a dialogue corpus; pass --data a DailyDialog-format folder "
            "(dialogues_train.txt, dialogues_validation.txt, dialogues_test.txt)"
        )
    max_len = config.max_len or 16 * config.train_len
    longest = max(max_len, max(config.recall_factors) * config.train_len)
    encoding = getattr(model, "encoding", None)
    if isinstance(encoding, PositionLimit):  # a learned table too short fails here
        encoding.check_positions(longest - 1)
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    try:
        history, n, extra = history_use(model, tokenizer, corpus, config, progress)
        t1 = time.perf_counter()
        recall, records = recall_across_turns(model, tokenizer, corpus, config, progress)
    finally:
        model.train(was_training)
    out: dict[str, Any] = {
        "history": history,
        "recall": recall,
        "chance": 1.0 / config.candidates,
        "n_dialogues": n,
    }
    if details:
        lengths: dict[str, float] = {}
        for key in recall:
            ls = [r["length"] for r in records if str(r["distance"]) == key]
            lengths[key] = float(np.mean(ls))
        out.update(extra)
        out["settings"] = {
            k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()
        }
        out["recall_lengths"] = lengths
        out["seconds"] = {
            "history": round(t1 - t0, 2),
            "recall": round(time.perf_counter() - t1, 2),
        }
    for v in out["history"]["k"].values():
        if v is not None and not math.isfinite(v):
            raise UserError("the model's loss is not finite on the dialogues; check the run")
    return out
