"""Encoder (non-causal) models: bidirectional forms of the distance biases."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from extrapos.core.errors import UserError
from extrapos.encodings import alibi_bias_bidirectional, build_encoding, list_encodings, t5_buckets
from extrapos.kernels.attention import attention
from extrapos.models.gpt import GPT, GPTConfig, KVCache


def encoder(encoding: str, **params) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=32, n_layer=2, n_head=4, d_model=16, encoding=encoding,
                         encoding_params=params, causal=False)).eval()  # fmt: skip


def test_symmetric_alibi_is_minus_slope_times_absolute_distance() -> None:
    table = build_encoding("alibi", num_heads=4).signed_distance_bias(6)  # k = -5 .. 5
    torch.testing.assert_close(table, alibi_bias_bidirectional(4, torch.arange(-5, 6)))


def test_t5_uses_both_sign_buckets() -> None:
    enc = build_encoding("t5", num_heads=2, num_buckets=8, max_distance=20)
    with torch.no_grad():
        enc.weight.copy_(torch.randn(8, 2))
    k = torch.arange(-29, 30)
    expected = enc.weight[t5_buckets(k, 8, 20, bidirectional=True)].T
    torch.testing.assert_close(enc.signed_distance_bias(30), expected)


def test_encoder_attention_equals_the_dense_signed_bias() -> None:
    """softmax(q·kᵀ/√d + B) v over all keys, B[h, i, j] = table[h, n - 1 + i - j]."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 4, 10, 8) for _ in range(3))
    table = torch.randn(4, 19)
    i = torch.arange(10)
    dense = table[:, (i[:, None] - i[None, :]) + 9]
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=dense[None])
    out = attention(q, k, v, bias_table=table, causal=False, chunk_size=3)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("name", list_encodings())
def test_every_encoding_is_an_encoder_or_says_why_not(name: str) -> None:
    """Either the model sees the future (changing the last token moves the first position's
    logits) or building/running it raises a one-line error naming the encoding."""
    idx = torch.randint(0, 32, (1, 12), generator=torch.Generator().manual_seed(1))
    other = idx.clone()
    other[0, -1] = (other[0, -1] + 1) % 32
    try:
        model = encoder(name)
        with torch.no_grad():
            for block in model.blocks:  # sharpen attention so that the future visibly matters
                block.attn.qkv.weight.mul_(8)
            a, b = model(idx), model(other)
    except UserError as exc:
        assert name in str(exc) and "bidirectional" in str(exc)
        return
    assert torch.isfinite(a).all()
    assert not torch.allclose(a[0, 0], b[0, 0], atol=1e-6)


def test_encoders_refuse_caches_generation_and_next_token_training() -> None:
    model = encoder("alibi")
    idx = torch.randint(0, 32, (1, 4))
    with pytest.raises(UserError, match="no KV cache"):
        model(idx, cache=KVCache(2))
    with pytest.raises(UserError, match="cannot generate"):
        model.generate(idx, 2)
    from extrapos.data import Corpus, build_tokenizer
    from extrapos.training.lm import TrainConfig, train

    corpus = Corpus.from_splits("toy", {s: ["abc " * 50] for s in ("train", "valid", "test")})
    config = GPTConfig(n_layer=1, n_head=2, d_model=16, encoding="alibi", causal=False)
    with pytest.raises(UserError, match="encoder"):
        train(
            config,
            TrainConfig(train_len=8, steps=1),
            corpus,
            build_tokenizer("byte"),
            progress=False,
        )
