"""Tests for extrapos.probes.dialogue: history use and recall across turns."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from extrapos.core.errors import UserError
from extrapos.data import build_tokenizer, load_corpus
from extrapos.data.dialogue import turn_pieces
from extrapos.models.gpt import GPT, GPTConfig
from extrapos.probes.dialogue import (
    HISTORY_KS,
    LENGTH_BINS,
    DialogueEvalConfig,
    dialogue_eval,
    history_use,
    make_recall_prompts,
    score_candidates,
    token_nll,
)


def _dailydialog() -> Path | None:
    """../shared/data/dailydialog beside the checkout (or one level up, from a worktree)."""
    here = Path(__file__).resolve().parents[2]
    for root in (here.parent, here.parent.parent):
        if (root / "shared" / "data" / "dailydialog" / "dialogues_test.txt").is_file():
            return root / "shared" / "data" / "dailydialog"
    return None


DAILYDIALOG = _dailydialog()


def _model(encoding: str, n_layer: int = 2, **params) -> GPT:
    """A seeded tiny byte GPT with sharpened attention (at init attention is near uniform, so
    a misplaced context or position would barely move the logits)."""
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(
            vocab_size=256,
            n_layer=n_layer,
            n_head=2,
            d_model=32,
            encoding=encoding,
            encoding_params=params,
        )  # fmt: skip
    )
    with torch.no_grad():
        for p in model.encoding.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        for block in model.blocks:
            block.attn.qkv.weight.mul_(8.0)
    return model.eval()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, make_dialogue_folder):
    return load_corpus(str(make_dialogue_folder(tmp_path_factory.mktemp("dd") / "dd")))


def _direct_nll(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        logits = model(ids[None, :-1])[0]
    return F.cross_entropy(logits, ids[1:], reduction="none").double()


def test_token_nll_matches_unbatched_forwards() -> None:
    model = _model("alibi")
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, 256, (n,), generator=g) for n in (5, 40, 17, 40, 2, 33)]
    got = token_nll(model, seqs, batch_tokens=80)  # several batches, padded rows
    for s, nll in zip(seqs, got, strict=True):
        torch.testing.assert_close(nll, _direct_nll(model, s), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("encoding", ["rope", "t5"])
def test_history_use_equals_brute_force(corpus, encoding) -> None:
    model = _model(encoding)
    L = 16
    config = DialogueEvalConfig(train_len=L, max_len=16 * L, max_dialogues=6)
    tok = build_tokenizer("byte")
    got, n, extra = history_use(model, tok, corpus, config)
    assert n == 6
    sums = {str(k): [0.0, 0] for k in HISTORY_KS}
    bins = {b: [0.0, 0, 0.0] for *_, b in LENGTH_BINS}
    fits = [
        d
        for d in corpus.dialogues["test"]
        if len(tok.encode("".join(m + b for m, b in turn_pieces(d)))) <= 16 * L
    ]
    used = [d for d in fits if len(d) >= 2][:6]
    assert len(fits) < len(corpus.dialogues["test"])  # the length cap is exercised
    for dialogue in used:
        turns = [(tok.encode(m), tok.encode(b)) for m, b in turn_pieces(dialogue)]
        for t in range(1, len(turns)):
            for k in HISTORY_KS:
                first = 0 if k == "all" else max(0, t - k)
                ctx = torch.cat([torch.cat(p) for p in turns[first:t]] or [torch.zeros(0).long()])
                ids = torch.cat([ctx, turns[t][0], turns[t][1]])
                start = len(ctx) + len(turns[t][0])
                nll = _direct_nll(model, ids)[start - 1 :]
                assert len(nll) == len(turns[t][1])
                sums[str(k)][0] += float(nll.sum())
                sums[str(k)][1] += len(nll)
                if k == "all":
                    ratio = len(ctx) / L
                    label = next((b for lo, hi, b in LENGTH_BINS if lo < ratio <= hi), None)
                    if label is not None:  # past 16 L: in no bin
                        bins[label][0] += float(nll.sum())
                        bins[label][1] += len(nll)
                if k == 0:
                    zero = float(nll.sum())
            if label is not None:
                bins[label][2] += zero
    for k, (s, c) in sums.items():
        assert got["k"][k] == pytest.approx(s / c, rel=1e-5)
    for b, (s, c, z) in bins.items():
        if c:
            assert got["by_length"][b] == pytest.approx(s / c, rel=1e-5)
            assert extra["by_length_k0"][b] == pytest.approx(z / c, rel=1e-5)
            assert extra["by_length_tokens"][b] == c
        else:
            assert got["by_length"][b] is None
    # the history changes the numbers (the test would not notice a context ignored otherwise)
    assert got["k"]["0"] != pytest.approx(got["k"]["all"], rel=1e-4)


@pytest.mark.parametrize("encoding", ["rope", "alibi", "t5", "learned"])
def test_score_candidates_cache_equals_full_rows(encoding) -> None:
    model = _model(encoding, n_layer=3, **({"max_len": 128} if encoding == "learned" else {}))
    g = torch.Generator().manual_seed(3)
    prompt = torch.randint(0, 256, (50,), generator=g)
    cands = [torch.randint(0, 256, (n,), generator=g) for n in (1, 4, 2, 6)]
    cached = score_candidates(model, prompt, cands)
    direct = torch.tensor(
        [-float(_direct_nll(model, torch.cat([prompt, c]))[-len(c) :].sum()) for c in cands],
        dtype=torch.float64,
    )
    torch.testing.assert_close(cached, direct, rtol=1e-4, atol=1e-4)
    model.encoding.cache = "none"  # the fallback path
    torch.testing.assert_close(score_candidates(model, prompt, cands), direct, rtol=1e-4, atol=1e-4)


def test_recall_prompts(corpus) -> None:
    tok = build_tokenizer("byte")
    config = DialogueEvalConfig(train_len=32, recall_trials=6, candidates=4)
    prompts = make_recall_prompts(corpus, tok, config)
    assert len(prompts) == 6 * 5
    for p in prompts:
        text = tok.decode(p.prompt)
        value = tok.decode(p.candidates[p.answer]).strip()
        lines = text.split("\n")
        assert value in lines[0] and lines[0].startswith("A: ")
        assert value not in "\n".join(lines[1:-1]) or value.isdigit()
        for i, line in enumerate(lines):  # speakers alternate from A
            assert line.startswith("AB"[i % 2] + ": ")
        assert lines[-1].endswith(" is") or lines[-1].endswith(" from")
        assert len({tok.decode(c) for c in p.candidates}) == 4
        if p.distance >= 128:  # room for filler: stays within the distance, and fills it
            assert p.length <= p.distance
            assert p.length > p.distance // 2
    # the right answer is spread over the candidate slots
    assert len({p.answer for p in prompts}) == 4
    again = make_recall_prompts(corpus, tok, config)
    assert all(torch.equal(a.prompt, b.prompt) for a, b in zip(prompts, again, strict=True))


def test_dialogue_eval_json_and_errors(corpus) -> None:
    model = _model("rope")
    config = DialogueEvalConfig(train_len=16, max_dialogues=4, recall_trials=3, candidates=4)
    tok = build_tokenizer("byte")
    out = dialogue_eval(model, tok, corpus, config)
    assert set(out) == {"history", "recall", "chance", "n_dialogues"}
    assert set(out["history"]) == {"k", "by_length"}
    assert list(out["history"]["k"]) == ["0", "1", "2", "4", "8", "all"]
    assert list(out["history"]["by_length"]) == ["<=1", "1-2", "2-4", "4-8", "8-16"]
    assert list(out["recall"]) == ["16", "32", "64", "128", "256"]
    assert out["chance"] == 0.25 and out["n_dialogues"] == 4
    assert all(0 <= a <= 1 for a in out["recall"].values())
    assert dialogue_eval(model, tok, corpus, config) == out  # deterministic
    short = _model("learned", max_len=64)
    with pytest.raises(UserError, match="learned|position"):
        dialogue_eval(short, tok, corpus, config)
    with pytest.raises(UserError, match="not a dialogue corpus"):
        dialogue_eval(model, tok, load_corpus("builtin"), config)
    with pytest.raises(UserError):
        DialogueEvalConfig(train_len=16, candidates=1)


@pytest.mark.slow
@pytest.mark.skipif(
    DAILYDIALOG is None, reason="DailyDialog not found at ../shared/data/dailydialog"
)
def test_dailydialog_eval_bench_sized() -> None:
    """A bench-sized model (4 layers, d 128, L 64): the whole eval, with its wall time printed
    (the target is <= 3 min on 2 quiet cores; this machine may be shared, so no bound here)."""
    corpus = load_corpus(str(DAILYDIALOG))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=256, n_layer=4, n_head=4, d_model=128, encoding="alibi"))
    t0 = time.perf_counter()
    tok = build_tokenizer("byte")
    out = dialogue_eval(model.eval(), tok, corpus, DialogueEvalConfig(train_len=64))
    print(f"dialogue eval: {time.perf_counter() - t0:.1f} s")
    assert out["n_dialogues"] == 200
    assert all(v is not None for v in out["history"]["by_length"].values())


def test_score_candidates_of_a_length_dependent_rope_are_each_candidates_own_forward(
    monkeypatch,
) -> None:
    """Dynamic NTK past its trained length (16) picks frequencies by the row's length: a cached
    prompt (made at length 50) or padding to the longest candidate would change the numbers."""
    scaling = {"rope_type": "dynamic", "factor": 4.0}
    model = _model("rope", n_layer=3, scaling=scaling, max_position_embeddings=16)
    with torch.no_grad():  # far from init scale, so that stale deeper layers would show
        for name, p in model.named_parameters():
            if p.ndim == 2 and not name.startswith("embed"):
                p.mul_(6.0)
    g = torch.Generator().manual_seed(3)
    prompt = torch.randint(0, 256, (50,), generator=g)
    cands = [torch.randint(0, 256, (n,), generator=g) for n in (1, 4, 2, 6)]
    direct = torch.tensor(
        [-float(_direct_nll(model, torch.cat([prompt, c]))[-len(c) :].sum()) for c in cands],
        dtype=torch.float64,
    )
    torch.testing.assert_close(score_candidates(model, prompt, cands), direct, rtol=1e-5, atol=1e-5)
    # what the batched paths give here: not the candidates' own forwards
    from extrapos.probes import dialogue

    monkeypatch.setattr(dialogue, "changes_with_length", lambda enc: False)
    batched = score_candidates(model, prompt, cands)
    assert (batched - direct).abs().max() > 1e-3
