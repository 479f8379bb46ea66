"""The learned-table autograd function: forward through the fused kernel with a detached bias,
backward recomputing probabilities per chunk and summing dS along diagonals into the table."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from extrapos.kernels.attention import chunked_bias_attention
from extrapos.kernels.table_grad import table_bias_attention


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(params=["default", "tiny-backward-chunks"])
def backward_chunks(request, monkeypatch: pytest.MonkeyPatch) -> str:  # noqa: ANN001
    """Run with the default backward chunking and with backward chunks of a few rows (several
    per forward chunk, ragged), so the chunk boundaries of both passes are exercised."""
    if request.param != "default":
        import extrapos.kernels.table_grad as tg

        monkeypatch.setattr(tg, "BACKWARD_MIN_ROWS", 1)
        monkeypatch.setattr(tg, "BACKWARD_BLOCK_ELEMENTS", 5 * 2 * 3 * 4)
    return request.param


def _inputs(b, h, s, t, d, n, dtype=torch.float64, seed=0):  # noqa: ANN001, ANN202
    gen = torch.Generator().manual_seed(seed)
    q = 2 * torch.randn(b, h, s, d, generator=gen, dtype=dtype)
    k, v = (torch.randn(b, h, t, d, generator=gen, dtype=dtype) for _ in range(2))
    table = torch.randn(h, n, generator=gen, dtype=dtype)
    return [x.requires_grad_() for x in (q, k, v, table)]


def dense(q, k, v, table, q_positions, k_positions, q_offset):  # noqa: ANN001, ANN201
    s, t = q.shape[-2], k.shape[-2]
    visible = torch.arange(t)[None, :] <= torch.arange(q_offset, q_offset + s)[:, None]
    distance = (q_positions[:, None] - k_positions[None, :]).clamp(0, table.shape[-1] - 1)
    bias = table[:, distance].to(q.dtype).masked_fill(~visible, float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


CASES = [  # (s, q_offset, chunk, gaps)
    (7, 0, 3, False),
    (7, 0, 16, False),
    (5, 4, 2, False),
    (6, 0, 4, True),
    (5, 3, 2, True),
]


def _positions(s: int, q_offset: int, gaps: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
    t = q_offset + s
    if gaps:
        k_pos = torch.randperm(3 * t, generator=torch.Generator().manual_seed(1))[:t].sort().values
    else:
        k_pos = torch.arange(t)
    return k_pos[q_offset:], k_pos, int(k_pos[-1] - k_pos[0]) + 1


@pytest.mark.parametrize(("s", "q_offset", "chunk", "gaps"), CASES)
def test_gradcheck(s: int, q_offset: int, chunk: int, gaps: bool, backward_chunks: str) -> None:
    q_pos, k_pos, n = _positions(s, q_offset, gaps)
    q, k, v, table = _inputs(1, 2, s, q_offset + s, 3, n + 2)

    def fn(q, k, v, table):  # noqa: ANN001, ANN202
        return table_bias_attention(
            q, k, v, table, q_pos, k_pos, q_offset, chunk, not gaps, torch.float64
        )

    assert torch.autograd.gradcheck(fn, (q, k, v, table), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize(("s", "q_offset", "chunk", "gaps"), [*CASES, (40, 0, 16, False)])
def test_equals_the_dense_math_path(
    s: int, q_offset: int, chunk: int, gaps: bool, backward_chunks: str
) -> None:
    """Outputs and all four gradients equal the dense reference's (float64), and the table
    gradient is not trivially zero."""
    q_pos, k_pos, n = _positions(s, q_offset, gaps)
    weight = torch.randn(
        2, 3, s, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )

    def run(fn):  # noqa: ANN001, ANN202
        q, k, v, table = _inputs(2, 3, s, q_offset + s, 8, n)
        out = fn(q, k, v, table)
        (out * weight).sum().backward()
        return [out.detach(), q.grad, k.grad, v.grad, table.grad]

    ours = run(
        lambda q, k, v, table: table_bias_attention(
            q, k, v, table, q_pos, k_pos, q_offset, chunk, not gaps, torch.float64
        )
    )
    theirs = run(lambda q, k, v, table: dense(q, k, v, table, q_pos, k_pos, q_offset))
    for name, a, b in zip(("out", "q", "k", "v", "table"), ours, theirs, strict=True):
        assert a.abs().sum() > 0, name
        torch.testing.assert_close(a, b, msg=lambda m, name=name: f"{name}: {m}")


def test_float32_matches_the_chunked_path() -> None:
    s, chunk = 300, 128
    pos = torch.arange(s)
    weight = torch.randn(2, 4, s, 16, generator=torch.Generator().manual_seed(4))

    def run(fn):  # noqa: ANN001, ANN202
        q, k, v, table = _inputs(2, 4, s, s, 16, s, dtype=torch.float32)
        (fn(q, k, v, table) * weight).sum().backward()
        return [q.grad, k.grad, v.grad, table.grad]

    ours = run(
        lambda q, k, v, t: table_bias_attention(q, k, v, t, pos, pos, 0, chunk, True, torch.float32)
    )
    theirs = run(lambda q, k, v, t: chunked_bias_attention(q, k, v, t, pos, pos, 0, chunk))
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=2e-4)
