"""The one query-chunk loop: any chunk size equals a dense softmax; the probe gets rows that
sum to 1 and are the matrix the output is made of; SDPA (unprobed) and explicit (probed) paths
agree."""

from __future__ import annotations

import pytest
import torch

from extrapos.kernels.chunks import (
    blockwise_attention,
    masked_softmax,
    prefix_views,
    query_chunks,
)

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


def test_prefix_views_gradient_is_the_sum_of_the_slices_gradients() -> None:
    """`prefix_views` (one gradient buffer) gives the values and the gradient of plain slices
    x[..., :stop, :], float64 to 1e-12, with a prefix whose gradient never arrives (unused)."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 11, 4, generator=gen, dtype=torch.float64)
    stops = [3, 7, 11, 5]
    weights = [torch.randn(2, 3, s, 4, generator=gen, dtype=torch.float64) for s in stops]
    grads = []
    for make in (prefix_views, lambda t, ss: tuple(t[..., :s, :] for s in ss)):
        leaf = x.clone().requires_grad_()
        views = make(leaf, stops)
        for view, stop in zip(views, stops, strict=True):
            assert torch.equal(view, x[..., :stop, :])
        sum(
            (view * w).sum()
            for view, w, used in zip(views, weights, [1, 1, 0, 1], strict=True)
            if used
        ).backward()
        grads.append(leaf.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-12, rtol=1e-12)
    assert grads[0][..., 7:, :].abs().sum() == 0  # only the unused prefix reached keys 7..10


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_masked_softmax_is_masked_fill_then_softmax_bit_for_bit(dtype) -> None:
    """Its backward skips the mask (dx = P ∘ (dP - Σ dP ∘ P) is 0 where P is): the same values
    and gradients as autograd through masked_fill and softmax, to the bit."""
    g = torch.Generator().manual_seed(1)
    visible = torch.arange(9)[None, :] <= torch.arange(2, 9)[:, None]  # (7, 9), offset 2
    x = (3 * torch.randn(B, H, 7, 9, generator=g)).to(dtype).requires_grad_()
    upstream = torch.randn(B, H, 7, 9, generator=g).to(dtype)
    reference = x.masked_fill(~visible, float("-inf")).softmax(-1)
    (expected,) = torch.autograd.grad(reference, x, upstream)
    probs = masked_softmax(x, visible)
    (got,) = torch.autograd.grad(probs, x, upstream)
    assert torch.equal(probs, reference)
    assert torch.equal(got, expected)
    assert bool((got[..., ~visible] == 0).all())


def test_masked_softmax_gradcheck() -> None:
    visible = torch.arange(5)[None, :] <= torch.arange(1, 5)[:, None]
    x = torch.randn(2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: masked_softmax(x, visible), (x,))
