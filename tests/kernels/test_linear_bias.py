"""The linear (ALiBi) fold: exact parity with the mask path, gradients, and precision at 16k+.

softmax(q·kᵀ/√d - m·(i - j)) = softmax([q, m/scale]·[k, j - c]ᵀ·scale) — the test compares
the fold against a dense float64 reference that adds the ALiBi table as a mask.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from extrapos.encodings import build_encoding
from extrapos.kernels import dispatch
from extrapos.kernels.attention import attention, chunked_bias_attention
from extrapos.kernels.linear_bias import linear_bias_attention, linear_slopes


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _alibi(h: int, n: int) -> torch.Tensor:
    return build_encoding("alibi", num_heads=h).distance_bias(n)


def _qkv(b: int, h: int, s: int, t: int, d: int, dtype=torch.float64, seed: int = 0, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    # scaled-up q: sharp attention, so a wrong bias or a wrong key set shows in the output
    q = scale * torch.randn(b, h, s, d, generator=gen, dtype=dtype)
    k = torch.randn(b, h, t, d, generator=gen, dtype=dtype)
    v = torch.randn(b, h, t, d, generator=gen, dtype=dtype)
    return q, k, v


def dense(q, k, v, table, q_positions, k_positions, q_offset):  # noqa: ANN001, ANN201
    s, t = q.shape[-2], k.shape[-2]
    visible = torch.arange(t)[None, :] <= torch.arange(q_offset, q_offset + s)[:, None]
    distance = (q_positions[:, None] - k_positions[None, :]).clamp(min=0)
    bias = table[:, distance].to(q.dtype).masked_fill(~visible, float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def test_linear_slopes_detects_exactly_linear_tables_only() -> None:
    h, n = 8, 50
    table = _alibi(h, n)
    slopes = linear_slopes(table)
    assert slopes is not None
    torch.testing.assert_close(slopes, build_encoding("alibi", num_heads=h).slopes, rtol=0, atol=0)
    bent = table.clone()
    bent[3, 40] += 1e-3
    assert linear_slopes(bent) is None
    assert linear_slopes(build_encoding("t5", num_heads=h).distance_bias(n)) is None
    assert linear_slopes(build_encoding("sandwich", num_heads=h).distance_bias(n)) is None
    assert linear_slopes(table.clone().requires_grad_()) is None  # learned: never folded


@pytest.mark.parametrize(
    ("s", "q_offset", "block", "gaps"),
    [
        (37, 0, 1024, False),
        (37, 0, 8, False),
        (40, 13, 16, False),
        (29, 0, 7, True),
        (33, 9, 10, True),
    ],
)
def test_fold_equals_dense(s: int, q_offset: int, block: int, gaps: bool) -> None:
    """One centred call, and blocks merged by log-sum-exp (block < s), with a cache offset
    and with positions that have gaps: the same numbers as the dense mask (float64)."""
    h, d = 4, 8
    t = q_offset + s
    k_positions = (
        torch.randperm(5 * t, generator=torch.Generator().manual_seed(2))[:t].sort().values
        if gaps
        else torch.arange(t)
    )
    q_positions = k_positions[q_offset:]
    table = _alibi(h, int(k_positions[-1]) + 1).double()
    q, k, v = _qkv(2, h, s, t, d)
    slopes = linear_slopes(table)
    with torch.no_grad():
        out = linear_bias_attention(q, k, v, slopes, q_positions, k_positions, q_offset, block)
    expected = dense(q, k, v, table, q_positions, k_positions, q_offset)
    torch.testing.assert_close(out, expected)
    no_bias = dense(q, k, v, torch.zeros_like(table), q_positions, k_positions, q_offset)
    assert not torch.allclose(out, no_bias, atol=1e-3)


def test_attention_routes_alibi_through_the_fold_with_the_same_numbers() -> None:
    h, s, d = 4, dispatch.CPU_KEY_TILE + 88, 8  # more keys than one tile of the fused kernel
    q, k, v = _qkv(1, h, s, s, d, dtype=torch.float32)
    table = _alibi(h, s)
    pos = torch.arange(s)
    dispatch.paths_taken(reset=True)
    with torch.no_grad():
        auto = attention(q, k, v, bias_table=table)
        chunked = attention(q, k, v, bias_table=table, backend="chunked")
    assert dispatch.paths_taken(reset=True) == {"linear": 1, "chunked": 1}
    torch.testing.assert_close(auto, chunked, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(auto.double(), dense(q.double(), k.double(), v.double(), table.double(), pos, pos, 0), atol=2e-5, rtol=1e-5)  # fmt: skip
    with pytest.raises(ValueError, match="linear"):
        attention(q, k, v, bias_table=torch.randn(h, s), backend="linear")


@pytest.mark.parametrize("grad", [False, True])
def test_alibi_within_one_key_tile_takes_the_mask_path(grad: bool) -> None:
    """Up to CPU_KEY_TILE keys the fused kernel computes every pair anyway: ALiBi runs as a mask
    (in two query halves past SPLIT_MIN), not the fold, with the dense reference's numbers."""
    h, d = 4, 8
    for s in (96, dispatch.SPLIT_MIN + 1, dispatch.CPU_KEY_TILE):
        q, k, v = (x.requires_grad_(grad) for x in _qkv(1, h, s, s, d, dtype=torch.float32))
        table, pos = _alibi(h, s), torch.arange(s)
        dispatch.paths_taken(reset=True)
        with torch.set_grad_enabled(grad):
            out = attention(q, k, v, bias_table=table)
        assert dispatch.paths_taken(reset=True) == {"chunked": 1}, s
        expected = dense(q.double(), k.double(), v.double(), table.double(), pos, pos, 0)
        torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=1e-5)


def test_fold_gradients_equal_dense() -> None:
    """With autograd the fold is one centred is_causal call; ∂/∂q, k, v match the mask path."""
    h, s, d = 3, 70, 8
    table = _alibi(h, s).double()
    pos = torch.arange(s)
    weight = torch.randn(
        1, h, s, d, generator=torch.Generator().manual_seed(5), dtype=torch.float64
    )

    def grads(fn):  # noqa: ANN001, ANN202
        q, k, v = (x.requires_grad_() for x in _qkv(1, h, s, s, d))
        (fn(q, k, v) * weight).sum().backward()
        return q.grad, k.grad, v.grad

    ours = grads(lambda q, k, v: attention(q, k, v, bias_table=table, backend="linear"))
    theirs = grads(lambda q, k, v: dense(q, k, v, table, pos, pos, 0))
    for a, b in zip(ours, theirs, strict=True):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b)


def _rows_reference(q, k, v, slopes, q_positions, k_positions, rows):  # noqa: ANN001, ANN201
    """Float64 dense attention of the selected query rows (q_offset 0)."""
    qr = q[..., rows, :].double()
    scores = qr @ k.double().transpose(-1, -2) / q.shape[-1] ** 0.5
    dist = (q_positions[rows][:, None] - k_positions[None, :]).double()
    scores = scores - slopes.double()[:, None, None] * dist
    scores = scores.masked_fill(
        torch.as_tensor(rows)[:, None] < torch.arange(k.shape[-2]), float("-inf")
    )
    return scores.softmax(-1) @ v.double()


@pytest.mark.parametrize("start", [0, 100_000])
def test_fold_precision_at_16k(start: int) -> None:
    """n = 16,384 (and positions 100,000 + …) in float32 and bf16: the fold's error against a
    float64 reference stays at the size of the mask path's own rounding (the sharpest head,
    m = 1/2, and the flattest, m = 1/256)."""
    n, d = 16384, 16
    slopes = torch.tensor([0.5, 2**-8])
    h = slopes.shape[0]
    gen = torch.Generator().manual_seed(7)
    q = 3 * torch.randn(1, h, n, d, generator=gen)
    k, v = torch.randn(1, h, n, d, generator=gen), torch.randn(1, h, n, d, generator=gen)
    pos = torch.arange(start, start + n)
    rows = torch.cat((torch.arange(0, 40), torch.arange(8000, 8040), torch.arange(n - 40, n)))
    table = -slopes[:, None] * torch.arange(n)[None, :].float()
    for dtype, atol in ((torch.float32, 5e-5), (torch.bfloat16, 2e-2)):
        qd, kd, vd = q.to(dtype), k.to(dtype), v.to(dtype)
        ref = _rows_reference(qd, kd, vd, slopes, pos, pos, rows)
        with torch.no_grad():
            folded = linear_bias_attention(qd, kd, vd, slopes, pos, pos)[..., rows, :]
            masked = chunked_bias_attention(qd, kd, vd, table, pos, pos)[..., rows, :]
        err_fold = (folded.double() - ref).abs().max().item()
        err_mask = (masked.double() - ref).abs().max().item()
        assert err_fold <= atol, (dtype, err_fold, err_mask)
        assert err_fold <= 20 * err_mask + 1e-5, (dtype, err_fold, err_mask)
