"""Tests for extrapos.probes.generation: sampling, repetition and per-window NLL."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from extrapos.data import build_tokenizer
from extrapos.models.gpt import GPT, GPTConfig
from extrapos.probes.generation import (
    generation_stats,
    held_out_prompts,
    ngram_window_stats,
    sample_continuations,
    windowed_mean,
)


def _model(encoding: str = "rope", **params) -> GPT:
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(
            vocab_size=256,
            n_layer=2,
            n_head=2,
            d_model=32,
            encoding=encoding,
            encoding_params=params,
        )  # fmt: skip
    )
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.mul_(8.0)
        model.lm_head.weight.mul_(20.0)  # peaked distributions: sampling follows the logits
    return model.eval()


@pytest.mark.parametrize("encoding", ["rope", "alibi", "learned"])
def test_sample_continuations_equals_generate(encoding) -> None:
    model = _model(encoding, **({"max_len": 64} if encoding == "learned" else {}))
    prompt = torch.randint(0, 256, (3, 7), generator=torch.Generator().manual_seed(1))
    steps: list[torch.Tensor] = []
    ours = sample_continuations(
        model, prompt, 40, temperature=0.9, top_k=50, generator=torch.Generator().manual_seed(5),
        on_token=steps.append,
    )  # fmt: skip
    theirs = model.generate(
        prompt, 40, temperature=0.9, top_k=50, generator=torch.Generator().manual_seed(5)
    )
    assert torch.equal(ours, theirs)
    assert torch.equal(torch.stack(steps, 1), ours[:, 7:])


def test_ngram_window_stats_hand_example() -> None:
    # prompt 0 1 2 3 (start 4), then windows of 4: [0 1 2 3] repeats the prompt, [4 4 4 4]
    seq = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3, 4, 4, 4, 4]])
    rep, distinct = ngram_window_stats(seq, start=4, window=4, n=2)
    # window 1: bigrams ending at 4..7: (3,0) new, (0,1) (1,2) (2,3) seen -> rep 3/4; distinct 4/4
    # window 2: (3,4) new, (4,4) new, (4,4) repeat, (4,4) repeat -> rep 2/4; distinct 2/4
    assert rep == [0.75, 0.5]
    assert distinct == [1.0, 0.5]
    rep1, distinct1 = ngram_window_stats(seq, start=4, window=4, n=1)
    assert rep1 == [1.0, 0.75] and distinct1 == [1.0, 0.25]
    # rows are averaged
    both = torch.cat([seq, torch.arange(12)[None]])
    rep2, _ = ngram_window_stats(both, start=4, window=4, n=2)
    assert rep2 == [0.375, 0.25]


def test_windowed_mean_and_prompts() -> None:
    values = torch.arange(20.0).view(2, 10)
    assert windowed_mean(values, 2, 4) == [
        float(torch.tensor([2, 3, 4, 5, 12, 13, 14, 15.0]).mean()),
        float(torch.tensor([6, 7, 8, 9, 16, 17, 18, 19.0]).mean()),
    ]
    tokens = torch.arange(100)
    p = held_out_prompts(tokens, 3, 10)
    assert p[:, 0].tolist() == [0, 45, 90]
    import numpy as np

    p = held_out_prompts(tokens, 3, 10, starts=np.array([7, 40, 88, 95]))
    assert p[:, 0].tolist() == [7, 88, 88]  # the allowed start at or after each even spot


def test_generation_stats_nll_and_determinism() -> None:
    model = _model("alibi")
    tokens = torch.randint(0, 256, (600,), generator=torch.Generator().manual_seed(2))
    tok = build_tokenizer("byte")
    out = generation_stats(model, tok, tokens, train_len=8, total_len=64, prompts=3, seed=4)
    assert out["positions"] == list(range(8, 64, 8))
    truth = held_out_prompts(tokens, 3, 64)
    with torch.no_grad():
        logits = model(truth[:, :-1])
    nll = F.cross_entropy(logits.flatten(0, 1), truth[:, 1:].flatten(), reduction="none")
    nll = nll.view(3, 63)
    for w, pos in enumerate(out["positions"]):  # target at position p is predicted at p - 1
        expected = float(nll[:, pos - 1 : pos - 1 + 8].mean())
        assert out["true_nll"][w] == pytest.approx(expected, rel=1e-5)
    assert len(out["rep_n"]) == len(out["distinct_n"]) == 7
    assert out == generation_stats(model, tok, tokens, train_len=8, total_len=64, prompts=3, seed=4)
    other = generation_stats(model, tok, tokens, train_len=8, total_len=64, prompts=3, seed=5)
    assert other["sample"] != out["sample"]
