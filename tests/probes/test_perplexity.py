"""Perplexity protocols against a brute-force per-token reference (no off-by-one)."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from extrapos.core.errors import UserError
from extrapos.models.gpt import GPT, GPTConfig
from extrapos.probes.perplexity import common_prefix, eval_windows, evaluate_lengths, perplexity


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=32, n_layer=1, n_head=2, d_model=16, encoding="alibi"))
    return m.eval()


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(0, 32, (53,), generator=torch.Generator().manual_seed(1))


def brute_force_nll(model: GPT, tokens: torch.Tensor, windows: list[tuple[int, int]], length: int):
    """Score each target from its own prefix, one forward per target: target tokens[s + 1 + o]
    given inputs tokens[s : s + o + 1]. Returns (sum of nll, number of targets)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for start, first in windows:
            for o in range(first, length):
                prefix = tokens[start : start + o + 1][None]
                logits = model(prefix)[0, -1]
                target = tokens[start + o + 1]
                total += float(F.cross_entropy(logits[None], target[None]))
                count += 1
    return total, count


@pytest.mark.parametrize(
    ("protocol", "length", "stride"),
    [("nonoverlap", 8, None), ("nonoverlap", 13, None), ("sliding", 8, None), ("sliding", 10, 3)],
)
def test_perplexity_equals_brute_force(model, tokens, protocol, length, stride):
    result = perplexity(model, tokens, length, protocol, stride)
    windows = eval_windows(tokens.numel(), length, protocol, stride)
    nll, count = brute_force_nll(model, tokens, windows, length)
    assert result["tokens"] == count
    assert result["nll_sum"] == pytest.approx(nll, rel=1e-5)
    assert result["ppl"] == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_nonoverlap_windows_tile_the_stream():
    """Windows start at 0, L, 2L, ... while L inputs plus the next target fit."""
    assert eval_windows(25, 8) == [(0, 0), (8, 0), (16, 0)]  # 3 windows: targets 1..24
    assert eval_windows(24, 8) == [(0, 0), (8, 0)]  # the third would need token 24


@pytest.mark.parametrize(("n", "length", "stride"), [(100, 16, 8), (57, 10, 3), (40, 8, 8)])
def test_sliding_scores_each_target_once_with_context(n, length, stride):
    scored: list[int] = []
    for k, (start, first) in enumerate(eval_windows(n, length, "sliding", stride)):
        for o in range(first, length):
            scored.append(start + 1 + o)  # index of the target token
            if k > 0:
                assert o >= length - stride  # at least L - S tokens of context
    assert len(scored) == len(set(scored))
    assert scored == list(range(1, len(scored) + 1))  # contiguous from the first target


def test_bits_per_byte_for_byte_tokens(model, tokens):
    result = perplexity(model, tokens, 8, token_bytes=torch.ones(32, dtype=torch.long))
    assert result["bits_per_byte"] == pytest.approx(
        result["nll_sum"] / result["tokens"] / math.log(2)
    )


def test_position_nll_has_one_mean_per_offset(model, tokens):
    result = perplexity(model, tokens, 8)
    assert len(result["position_nll"]) == 8
    mean = sum(result["position_nll"]) / 8  # every offset scored equally often
    assert mean == pytest.approx(result["nll_sum"] / result["tokens"], rel=1e-6)


def test_lengths_score_the_same_targets(model, tokens):
    records = evaluate_lengths(model, tokens, [4, 8, 16])
    assert {r["tokens"] for r in records} == {48}  # 3 windows of 16 = 6 of 8 = 12 of 4
    assert common_prefix(53, [4, 8, 16]) == 49


def test_learned_table_too_short_is_reported_not_raised(tokens):
    torch.manual_seed(0)
    m = GPT(
        GPTConfig(
            vocab_size=32,
            n_layer=1,
            n_head=2,
            d_model=16,
            encoding="learned",
            encoding_params={"max_len": 8},
        )
    )
    records = evaluate_lengths(m, tokens, [8, 16])
    assert records[0]["ppl"] is not None
    assert records[1]["ppl"] is None and "max_len=8" in records[1]["error"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"length": 0}, "length must be >= 1"),
        ({"length": 60}, "fewer than length + 1"),
        ({"length": 8, "protocol": "strided"}, "known: nonoverlap, sliding"),
        ({"length": 8, "protocol": "sliding", "stride": 9}, "stride must be in"),
        ({"length": 8, "stride": 4}, "sliding protocol only"),
    ],
)
def test_bad_evaluation_requests(model, tokens, kwargs, message):
    with pytest.raises(UserError, match=re.escape(message)):
        perplexity(model, tokens, **kwargs)


def test_a_long_evaluation_says_so_up_front(monkeypatch, capsys):
    """Past the threshold, the second batch's time × batches is announced before the rest."""
    import extrapos.probes.perplexity as pp
    from extrapos.models.gpt import GPT, GPTConfig

    monkeypatch.setattr(pp, "LONG_EVAL_SECONDS", 0.0)
    monkeypatch.setattr(pp, "BATCH_TOKENS", 16)  # one window per batch
    model = GPT(GPTConfig(n_layer=1, n_head=2, d_model=16, encoding="rope")).eval()
    tokens = torch.randint(0, 256, (200,))
    pp.perplexity(model, tokens, 16, "sliding", stride=4, progress=True)
    err = capsys.readouterr().err
    windows = len(pp.eval_windows(200, 16, "sliding", 4))
    assert f"ppl L=16 sliding stride 4: {windows:,} windows in {windows:,} batches" in err
    assert "min; a larger --stride" in err
    monkeypatch.setattr(pp, "LONG_EVAL_SECONDS", 1e9)
    pp.perplexity(model, tokens, 16, "sliding", stride=4, progress=True)
    assert "windows in" not in capsys.readouterr().err
