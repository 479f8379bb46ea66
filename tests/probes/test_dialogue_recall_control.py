"""Positive and negative controls of the recall-across-turns probe (extrapos.probes.dialogue).

Every trained bench model scores at chance (1/5) on recall, so the probe's own ability to
separate must be shown: a model that *does* recall the stated fact must score far above
chance, and the same model denied the fact must score at chance.

The recalling model is an induction-head oracle ("copy what followed the longest earlier match
of the current suffix", Olsson et al. 2022): at the answer prefix "Your name is" its longest
match is the fact turn "My name is Olivia .", so it puts its mass on " Olivia" one byte after
the other. It is not told the answer, the candidates or the template: it only copies from its
context, as a model that recalls must. With `window` set it sees only its last `window` tokens
(the fact is out of reach) and has to guess: chance.

These controls fail if the scoring is broken: a candidate list scored out of order against
`answer`, or the answer span read one position off (the log-probs gathered at the prefix's last
token vs the candidate's), drops the oracle to chance (checked by hand by breaking each).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from extrapos.data import build_tokenizer, load_corpus
from extrapos.probes.dialogue import (
    DialogueEvalConfig,
    dialogue_eval,
    make_recall_prompts,
    recall_across_turns,
    score_candidates,
)

VOCAB = 256
MAX_MATCH = 24  # longest suffix length the oracle compares


def _dailydialog() -> Path | None:
    here = Path(__file__).resolve().parents[2]
    for root in (here.parent, here.parent.parent):
        if (root / "shared" / "data" / "dailydialog" / "dialogues_test.txt").is_file():
            return root / "shared" / "data" / "dailydialog"
    return None


DAILYDIALOG = _dailydialog()


class InductionOracle(nn.Module):
    """Logits (b, T, V): at each position i, +`strength` on the token that followed the most
    recent longest match of the suffix idx[.. i] in idx[.. i-1] (suffix length capped at
    MAX_MATCH), 0 elsewhere; uniform where nothing matches. With `window`, only positions
    j > i - window are searched (a model whose context cannot reach the fact)."""

    def __init__(self, window: int | None = None, strength: float = 8.0) -> None:
        super().__init__()
        self.window, self.strength = window, strength
        self.dummy = nn.Parameter(torch.zeros(()))  # the probe reads the device from it

    def forward(self, idx: Tensor) -> Tensor:
        b, T = idx.shape
        logits = torch.zeros(b, T, VOCAB)
        eq = idx[:, :, None] == idx[:, None, :]  # (b, i, j)
        # run[i, j] = length of the common suffix of idx[..i] and idx[..j], capped
        run = eq.long()
        for _ in range(MAX_MATCH - 1):
            shifted = torch.zeros_like(run)
            shifted[:, 1:, 1:] = run[:, :-1, :-1]
            run = eq.long() * (1 + shifted)
        i = torch.arange(T)[:, None]
        j = torch.arange(T)[None, :]
        allowed = j < i  # j + 1 <= i: the token after the match is in the context
        if self.window is not None:
            allowed &= j > i - self.window
        score = torch.where(allowed & (run > 0), run * T + j, torch.full_like(run, -1))
        best, where = score.max(-1)  # (b, T): longest, then most recent
        nxt = idx.gather(1, (where + 1).clamp(max=T - 1))
        hit = best >= 0
        logits[hit.nonzero(as_tuple=True) + (nxt[hit],)] = self.strength
        return logits


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, make_dialogue_folder):
    root = make_dialogue_folder(tmp_path_factory.mktemp("dd") / "dd", n_eval=40)
    return load_corpus(str(root))


CONFIG = DialogueEvalConfig(train_len=16, recall_trials=24, candidates=5)


def test_oracle_recalls_far_above_chance(corpus) -> None:
    tok = build_tokenizer("byte")
    accuracy, records = recall_across_turns(InductionOracle(), tok, corpus, CONFIG)
    assert len(records) == 24 * 5
    overall = sum(r["right"] for r in records) / len(records)
    # chance is 0.2; a copying model gets nearly every trial, at every distance
    assert overall >= 0.9, accuracy
    assert min(accuracy.values()) >= 0.75, accuracy


def test_oracle_without_the_fact_is_at_chance(corpus) -> None:
    tok = build_tokenizer("byte")
    _, records = recall_across_turns(InductionOracle(window=12), tok, corpus, CONFIG)
    overall = sum(r["right"] for r in records) / len(records)
    # 120 trials at p = 0.2: the 99.9% binomial interval is about [0.11, 0.31]
    assert 0.08 <= overall <= 0.34, overall


def test_oracle_scores_the_right_candidate_highest_per_token(corpus) -> None:
    """The span that is scored is exactly the candidate's tokens after the prompt: the right
    candidate's log-likelihood is ~0 (every byte predicted), a wrong one's far below."""
    tok = build_tokenizer("byte")
    oracle = InductionOracle(strength=30.0)
    prompt = next(p for p in make_recall_prompts(corpus, tok, CONFIG) if p.kind == "name")
    scores = score_candidates(oracle, prompt.prompt, prompt.candidates)
    assert scores[prompt.answer] > -1e-6
    others = [s for i, s in enumerate(scores.tolist()) if i != prompt.answer]
    assert max(others) < -20.0


def test_dialogue_eval_reports_the_oracle_recall(corpus) -> None:
    tok = build_tokenizer("byte")
    config = DialogueEvalConfig(train_len=16, max_dialogues=3, recall_trials=9, candidates=5)
    out = dialogue_eval(InductionOracle(), tok, corpus, config)
    assert out["chance"] == 0.2
    assert min(out["recall"].values()) >= 0.75, out["recall"]


@pytest.mark.skipif(
    DAILYDIALOG is None, reason="DailyDialog not found at ../shared/data/dailydialog"
)
def test_controls_on_real_filler() -> None:
    """Real DailyDialog fillers (which say "my name is", "from", numbers): still separated."""
    tok = build_tokenizer("byte")
    corpus = load_corpus(str(DAILYDIALOG))
    _, hits = recall_across_turns(InductionOracle(), tok, corpus, CONFIG)
    _, blind = recall_across_turns(InductionOracle(window=12), tok, corpus, CONFIG)
    assert sum(r["right"] for r in hits) / len(hits) >= 0.9
    assert 0.08 <= sum(r["right"] for r in blind) / len(blind) <= 0.34
