"""Randomized positions (Ruoss et al. 2023): sorted random subsets of [0, L_max)."""

from __future__ import annotations

import pytest
import torch

from extrapos.core.errors import UserError
from extrapos.models.gpt import GPT, GPTConfig


def model(encoding: str = "rope", limit: int = 256) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=32, n_layer=1, n_head=2, d_model=16, encoding=encoding,
                         random_positions=limit))  # fmt: skip


def test_training_draws_fresh_sorted_distinct_positions_in_range() -> None:
    m = model().train()
    draws = [m.sample_positions(20, torch.device("cpu")) for _ in range(3)]
    for p in draws:
        assert p.shape == (20,) and p.min() >= 0 and p.max() < 256
        assert (p[1:] > p[:-1]).all()  # sorted and distinct
    assert not torch.equal(draws[0], draws[1])


def test_evaluation_positions_are_deterministic() -> None:
    m = model().eval()
    x = torch.randint(0, 32, (1, 30))
    torch.testing.assert_close(m(x), m(x), rtol=0, atol=0)
    assert torch.equal(m.sample_positions(30, x.device), m.sample_positions(30, x.device))


def test_sequences_longer_than_the_range_are_refused() -> None:
    with pytest.raises(UserError, match="longer than random_positions=16"):
        model(limit=16)(torch.randint(0, 32, (1, 17)))


@pytest.mark.parametrize("encoding", ["rope", "alibi", "sinusoidal"])
def test_positions_reach_the_encoding(encoding: str) -> None:
    """With random positions the logits differ from the same weights on 0..s-1: the encoding
    sees the sampled positions, whose gaps change even relative distances."""
    m = model(encoding).eval()
    x = torch.randint(0, 32, (1, 24))
    with torch.no_grad():
        m.blocks[0].attn.qkv.weight.mul_(5)  # so that RoPE's rotation visibly moves scores
    assert not torch.allclose(m(x), m(x, positions=torch.arange(24)), atol=1e-4)


def test_generate_with_and_without_cache_agree() -> None:
    m = model().eval()
    prompt = torch.randint(0, 32, (1, 5))
    cached = m.generate(prompt, 10, temperature=0)
    assert torch.equal(cached, m.generate(prompt, 10, temperature=0, use_cache=False))


def test_config_validation() -> None:
    with pytest.raises(UserError, match="random_positions must be a positive length"):
        GPTConfig(random_positions=0)
