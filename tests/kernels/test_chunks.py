"""The one query-chunk loop: any chunk size equals a dense softmax; the probe gets rows that
sum to 1 and are the matrix the output is made of; SDPA (unprobed) and explicit (probed) paths
agree."""

from __future__ import annotations

import pytest
import torch

from extrapos.kernels.chunks import blockwise_attention, query_chunks

B, H, S, D = 2, 3, 11, 4


def _qkv(t: int):
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(B, H, t, D, generator=g, dtype=torch.float64) for _ in range(3))


def _dense(q, k, v, bias, q_offset):
    t = k.shape[-2]
    scores = q @ k.transpose(-1, -2) / D**0.5 + bias
    visible = torch.arange(t)[None, :] <= torch.arange(q_offset, t)[:, None]
    probs = scores.masked_fill(~visible, float("-inf")).softmax(-1)
    return probs @ v, probs


def test_query_chunks_cover_the_queries_and_see_only_the_past() -> None:
    chunks = list(query_chunks(7, 10, 3, 3, torch.device("cpu")))
    assert [(c.start, c.stop, c.seen) for c in chunks] == [(0, 3, 6), (3, 6, 9), (6, 7, 10)]
    assert chunks[0].visible.tolist()[0] == [True] * 4 + [False] * 2
    whole = next(query_chunks(7, 10, 3, 7, torch.device("cpu"), causal=False))
    assert whole.seen == 10 and bool(whole.visible.all())


@pytest.mark.parametrize("q_offset", [0, 5])
@pytest.mark.parametrize("rows", [1, 4, 64])
@pytest.mark.parametrize("mode", ["bias", "logits"])
def test_blockwise_equals_dense_and_the_probe_sees_the_matrix(mode, rows, q_offset) -> None:
    t = S + q_offset
    q, k, v = _qkv(t)
    q = q[..., q_offset:, :]
    bias = torch.randn(H, S, t, dtype=torch.float64)
    expected, probs = _dense(q, k, v, bias, q_offset)
    if mode == "bias":
        kwargs = {"bias": lambda c: bias[:, c.start : c.stop, : c.seen]}
    else:
        kwargs = {
            "logits": lambda c: (
                q[..., c.start : c.stop, :] @ k[..., : c.seen, :].transpose(-1, -2) / D**0.5
                + bias[:, c.start : c.stop, : c.seen]
            )
        }
    seen = torch.zeros(B, H, S, t, dtype=torch.float64)

    def probe(start, p):
        seen[..., start : start + p.shape[2], : p.shape[3]] = p

    out = blockwise_attention(q, k, v, q_offset=q_offset, rows=rows, probe=probe, **kwargs)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(seen, probs, atol=1e-12, rtol=1e-12)
    unprobed = blockwise_attention(q, k, v, q_offset=q_offset, rows=rows, **kwargs)
    torch.testing.assert_close(unprobed, expected, atol=1e-12, rtol=1e-12)


def test_logits_and_bias_together_are_refused() -> None:
    q, k, v = _qkv(S)
    with pytest.raises(ValueError, match="not both"):
        blockwise_attention(q, k, v, rows=4, logits=lambda c: c, bias=lambda c: c)
