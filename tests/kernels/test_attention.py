"""Attention paths against a dense reference.

    out = softmax(q·kᵀ/√d + B + M) v,   B[h, i, j] = table[h, pos_i - pos_j],   M causal

The reference builds the full (h, s, t) bias and mask and calls SDPA once; the chunked and flex
paths must give the same outputs (and, for chunked, the same gradients in q, k, v and the table)
without ever building it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from extrapos.kernels import dispatch
from extrapos.kernels.attention import (
    BACKENDS,
    attention,
    causal_sdpa,
    chunked_bias_attention,
    flex_available,
    flex_bias_attention,
    pick_backend,
    use_backend,
)

B, H, D = 2, 4, 8


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny tensors: intra-op threads only add overhead, and stall when other jobs hold the cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _qkv(
    s: int, t: int, dtype: torch.dtype = torch.float64, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, s, D, generator=gen, dtype=dtype)
    k = torch.randn(B, H, t, D, generator=gen, dtype=dtype)
    v = torch.randn(B, H, t, D, generator=gen, dtype=dtype)
    return q, k, v


def _table(n: int, dtype: torch.dtype = torch.float64, seed: int = 1) -> torch.Tensor:
    """A random (h, n) distance table: every distance has its own value, so a wrong lookup shows."""
    return torch.randn(H, n, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def dense_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    table: torch.Tensor | None,
    q_positions: torch.Tensor,
    k_positions: torch.Tensor,
    q_offset: int,
) -> torch.Tensor:
    """SDPA with the whole (h, s, t) additive mask: table[h, pos_i - pos_j] where key j <= query
    index q_offset + i, -inf elsewhere."""
    s, t = q.shape[-2], k.shape[-2]
    query_index = torch.arange(q_offset, q_offset + s)[:, None]
    visible = torch.arange(t)[None, :] <= query_index  # (s, t)
    if table is None:
        bias = torch.zeros(H, s, t, dtype=q.dtype)
    else:
        distance = q_positions[:, None] - k_positions[None, :]
        assert (distance[visible] >= 0).all() and distance.max() < table.shape[-1]
        bias = table[:, distance.clamp(min=0)].to(q.dtype)  # (h, s, t)
    mask = bias.masked_fill(~visible, float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _sorted_positions(count: int, high: int, seed: int) -> torch.Tensor:
    """Increasing positions with gaps, as randomized-position training samples them."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(high, generator=gen)[:count].sort().values


# ---------------------------------------------------------------------------------------------
# chunked path


@pytest.mark.parametrize("chunk_size", [1, 3, 5, 13, 64])
def test_chunked_equals_dense(chunk_size: int) -> None:
    s = 13  # 3 and 5 do not divide it: the last chunk is short
    q, k, v = _qkv(s, s)
    table = _table(s)
    positions = torch.arange(s)
    out = chunked_bias_attention(q, k, v, table, positions, positions, chunk_size=chunk_size)
    expected = dense_reference(q, k, v, table, positions, positions, 0)
    assert out.shape == (B, H, s, D)
    torch.testing.assert_close(out, expected)
    # the bias matters: without it the output differs
    assert not torch.allclose(out, dense_reference(q, k, v, None, positions, positions, 0))


@pytest.mark.parametrize("chunk_size", [2, 5, 16])
def test_chunked_with_a_cache_offset(chunk_size: int) -> None:
    """s new queries against t = q_offset + s keys (decoding with a KV cache)."""
    s, q_offset = 5, 15
    t = q_offset + s
    q, k, v = _qkv(s, t)
    table = _table(t)
    q_positions, k_positions = torch.arange(q_offset, t), torch.arange(t)
    out = chunked_bias_attention(
        q, k, v, table, q_positions, k_positions, q_offset, chunk_size=chunk_size
    )
    torch.testing.assert_close(
        out, dense_reference(q, k, v, table, q_positions, k_positions, q_offset)
    )


@pytest.mark.parametrize("q_offset", [0, 6])
def test_chunked_with_non_contiguous_positions(q_offset: int) -> None:
    """The bias is looked up by position difference, not by index."""
    s = 11
    t = q_offset + s
    k_positions = _sorted_positions(t, 200, seed=q_offset)
    q_positions = k_positions[q_offset:]
    q, k, v = _qkv(s, t)
    table = _table(200)
    out = chunked_bias_attention(q, k, v, table, q_positions, k_positions, q_offset, chunk_size=4)
    expected = dense_reference(q, k, v, table, q_positions, k_positions, q_offset)
    torch.testing.assert_close(out, expected)
    # and it is not what index distances would give
    indices = torch.arange(t)
    by_index = dense_reference(q, k, v, table, indices[q_offset:], indices, q_offset)
    assert not torch.allclose(out, by_index)


@pytest.mark.parametrize(("chunk_size", "q_offset"), [(3, 0), (13, 0), (4, 7)])
def test_chunked_gradients_equal_dense(chunk_size: int, q_offset: int) -> None:
    """∂L/∂q, ∂L/∂k, ∂L/∂v and ∂L/∂table through the chunked gathers equal the dense ones."""
    s = 13
    t = q_offset + s
    positions = _sorted_positions(t, 3 * t, seed=5)
    q_positions = positions[q_offset:]
    weight = torch.randn(
        B, H, s, D, generator=torch.Generator().manual_seed(9), dtype=torch.float64
    )

    def grads(fn) -> list[torch.Tensor]:  # noqa: ANN001
        q, k, v = (x.requires_grad_() for x in _qkv(s, t))
        table = _table(3 * t).requires_grad_()
        (fn(q, k, v, table) * weight).sum().backward()
        return [q.grad, k.grad, v.grad, table.grad]

    ours = grads(
        lambda q, k, v, table: chunked_bias_attention(
            q, k, v, table, q_positions, positions, q_offset, chunk_size=chunk_size
        )
    )
    theirs = grads(
        lambda q, k, v, table: dense_reference(q, k, v, table, q_positions, positions, q_offset)
    )
    for name, a, b in zip(("q", "k", "v", "table"), ours, theirs, strict=True):
        assert a is not None and b is not None, name
        assert a.abs().sum() > 0, name
        torch.testing.assert_close(a, b, msg=lambda m, name=name: f"d/d{name}: {m}")


def test_attention_defaults_use_sequence_indices_as_positions() -> None:
    s = 9
    q, k, v = _qkv(s, s)
    table = _table(s)
    positions = torch.arange(s)
    out = attention(q, k, v, bias_table=table, chunk_size=4)
    torch.testing.assert_close(out, dense_reference(q, k, v, table, positions, positions, 0))


def test_bf16_chunked_at_long_positions_matches_float32() -> None:
    """Positions ~1e5 enter only through differences; bf16 inputs give float32's answer to bf16
    rounding."""
    s = 16
    q, k, v = _qkv(s, s, dtype=torch.float32)
    positions = torch.arange(100_000, 100_000 + s)
    table = -torch.tensor([0.5, 0.25, 0.125, 0.0625])[:, None] * torch.arange(s)[None, :].float()
    out32 = attention(q, k, v, bias_table=table, q_positions=positions, k_positions=positions)
    out16 = attention(
        q.bfloat16(),
        k.bfloat16(),
        v.bfloat16(),
        bias_table=table,
        q_positions=positions,
        k_positions=positions,
        backend="chunked",
    )
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(out16.float(), out32, atol=2e-2, rtol=1.6e-2)


# ---------------------------------------------------------------------------------------------
# flex path

needs_flex = pytest.mark.skipif(
    not flex_available(torch.device("cpu")), reason="FlexAttention unavailable"
)


@needs_flex
def test_flex_equals_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    """s == t: FlexAttention (compiled once, ~5 s on CPU) gives the dense numbers, called directly
    and through `attention(backend="flex")`."""
    import extrapos.kernels.attention as attention_module

    calls = []

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(args[3].shape)
        return flex_bias_attention(*args, **kwargs)

    monkeypatch.setattr(attention_module, "flex_bias_attention", spy)
    s = 16
    q, k, v = _qkv(s, s, dtype=torch.float32)
    positions = torch.arange(s)
    table = _table(s, dtype=torch.float32)
    expected = dense_reference(q, k, v, table, positions, positions, 0)
    with torch.no_grad():
        direct = flex_bias_attention(q, k, v, table, positions, positions)
        routed = attention(q, k, v, bias_table=table, backend="flex")
    torch.testing.assert_close(direct, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(routed, expected, atol=1e-5, rtol=1e-5)
    assert calls == [(H, s)]  # attention() did take the flex path

    # Positions with gaps need a table longer than t, which inductor cannot compile on CPU
    # (torch 2.13): attention() must notice and still return the right numbers.
    spread = _sorted_positions(s, 100, seed=3)
    table = _table(100, dtype=torch.float32, seed=4)
    with torch.no_grad():
        out = attention(
            q, k, v, bias_table=table, q_positions=spread, k_positions=spread, backend="flex"
        )
    torch.testing.assert_close(
        out, dense_reference(q, k, v, table, spread, spread, 0), atol=1e-5, rtol=1e-5
    )


def test_flex_backend_with_a_cache_offset_is_right() -> None:
    """Queries against a longer key set: on CPU `attention` falls back to the chunked path
    (FlexAttention miscompiles Q_LEN != KV_LEN there); the numbers must still be right."""
    s, q_offset = 3, 10
    t = q_offset + s
    q, k, v = _qkv(s, t, dtype=torch.float32)
    table = _table(t, dtype=torch.float32)
    q_positions, k_positions = torch.arange(q_offset, t), torch.arange(t)
    expected = dense_reference(q, k, v, table, q_positions, k_positions, q_offset)
    with torch.no_grad():
        out = attention(q, k, v, bias_table=table, q_offset=q_offset, backend="flex")
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_flex_backend_with_gradients_warns_and_falls_back_on_cpu() -> None:
    s = 6
    q, k, v = (x.requires_grad_() for x in _qkv(s, s, dtype=torch.float32))
    table = _table(s, dtype=torch.float32)
    positions = torch.arange(s)
    with pytest.warns(UserWarning, match="chunked"):
        out = attention(q, k, v, bias_table=table, backend="flex")
    torch.testing.assert_close(
        out, dense_reference(q, k, v, table, positions, positions, 0), atol=1e-5, rtol=1e-5
    )
    out.sum().backward()
    assert q.grad is not None


# ---------------------------------------------------------------------------------------------
# bias-free path and backend selection


@pytest.mark.parametrize(("s", "t"), [(7, 7), (1, 9), (4, 9)])
def test_causal_sdpa_with_offsets(s: int, t: int) -> None:
    """No bias: query i (index t - s + i) sees keys 0 .. t - s + i."""
    q, k, v = _qkv(s, t)
    q_offset = t - s
    indices = torch.arange(t)
    expected = dense_reference(q, k, v, None, indices[q_offset:], indices, q_offset)
    torch.testing.assert_close(causal_sdpa(q, k, v, q_offset), expected)
    torch.testing.assert_close(attention(q, k, v, q_offset=q_offset), expected)


@pytest.mark.parametrize("s", [dispatch.SPLIT_MIN + 1, 400, dispatch.CPU_KEY_TILE])
def test_causal_sdpa_in_two_halves_equals_the_dense_reference(s: int) -> None:
    """SPLIT_MIN < s <= CPU_KEY_TILE on CPU runs as two query halves; outputs and gradients
    equal the dense causal softmax (an off-by-one in the second half's mask would show)."""
    assert dispatch.split_rows(s, s, torch.device("cpu")) == (s + 1) // 2
    q, k, v = (3 * x for x in _qkv(s, s))
    weight = torch.randn(B, H, s, D, generator=torch.Generator().manual_seed(7), dtype=q.dtype)
    indices = torch.arange(s)

    def run(fn):  # noqa: ANN001, ANN202
        leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        out = fn(*leaves)
        (out * weight).sum().backward()
        return [out.detach(), *(x.grad for x in leaves)]

    ours = run(lambda q, k, v: causal_sdpa(q, k, v))
    theirs = run(lambda q, k, v: dense_reference(q, k, v, None, indices, indices, 0))
    for name, a, b in zip(("out", "q", "k", "v"), ours, theirs, strict=True):
        torch.testing.assert_close(a, b, msg=lambda m, name=name: f"{name}: {m}")
    with torch.inference_mode():  # a mask made under inference mode is not reused for autograd
        torch.testing.assert_close(causal_sdpa(q, k, v), ours[0])
    assert run(lambda q, k, v: causal_sdpa(q, k, v))[1].abs().sum() > 0


@pytest.mark.parametrize(
    ("s", "t", "device"),
    [
        (dispatch.SPLIT_MIN, dispatch.SPLIT_MIN, "cpu"),
        (dispatch.CPU_KEY_TILE + 1, dispatch.CPU_KEY_TILE + 1, "cpu"),
        (400, 401, "cpu"),
        (400, 400, "cuda"),
    ],
)
def test_causal_calls_outside_the_split_range_run_whole(s: int, t: int, device: str) -> None:
    assert dispatch.split_rows(s, t, torch.device(device)) is None


def test_use_backend_sets_and_restores_the_default() -> None:
    s = 5
    q, k, v = _qkv(s, s)
    table = _table(s)
    positions = torch.arange(s)
    expected = dense_reference(q, k, v, table, positions, positions, 0)
    with use_backend("sdpa"):
        # the block's default reaches attention(): sdpa cannot apply a bias
        with pytest.raises(ValueError, match="sdpa"):
            attention(q, k, v, bias_table=table)
        # a call naming its own backend wins over the block's default
        torch.testing.assert_close(
            attention(q, k, v, bias_table=table, backend="chunked"), expected
        )
    torch.testing.assert_close(attention(q, k, v, bias_table=table), expected)  # restored

    with pytest.raises(RuntimeError, match="inside"), use_backend("sdpa"):
        raise RuntimeError("inside")
    torch.testing.assert_close(attention(q, k, v, bias_table=table), expected)  # restored


@pytest.mark.parametrize("where", ["context", "call"])
def test_unknown_backend_is_an_error_listing_the_known_ones(where: str) -> None:
    q, k, v = _qkv(3, 3)
    table = _table(3)
    with pytest.raises(ValueError, match="fast") as info:
        if where == "context":
            with use_backend("fast"):  # type: ignore[arg-type]
                pass
        else:
            attention(q, k, v, bias_table=table, backend="fast")  # type: ignore[arg-type]
    for known in BACKENDS:
        assert known in str(info.value)


def test_auto_backend_choice_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto: chunked for training (no CPU backward in flex) and short inference; for long
    inference flex only where this machine's calibration measured it faster; the linear fold
    for exactly linear tables."""
    from extrapos.kernels import dispatch

    cpu = torch.device("cpu")
    long = 10 * dispatch.FLEX_CANDIDATE_LEN
    assert pick_backend("auto", needs_grad=True, t=long, device=cpu) == "chunked"
    assert (
        pick_backend("auto", needs_grad=False, t=dispatch.FLEX_CANDIDATE_LEN - 1, device=cpu)
        == "chunked"
    )
    for flex_s, expected in ((0.1, "flex"), (1.0, "chunked")):
        record = {
            "key": dispatch.machine_key(),
            "n": 4096,
            "seconds": {"chunked": 0.5, "flex": flex_s},
        }
        record["flex_from"] = dispatch.FLEX_CANDIDATE_LEN if expected == "flex" else None
        monkeypatch.setattr(dispatch, "_calibration", record)
        got = pick_backend("auto", needs_grad=False, t=long, device=cpu)
        assert got == (expected if flex_available(cpu) else "chunked")
    assert pick_backend("chunked", needs_grad=False, t=10**6, device=cpu) == "chunked"
    assert pick_backend("auto", False, long, cpu, linear=True, linear_ok=True) == "linear"
    # decoding (one query against the cache) keeps the mask path
    assert pick_backend("auto", False, long, cpu, s=1, linear=True, linear_ok=True) != "linear"


def test_no_warning_on_the_default_training_path() -> None:
    q, k, v = (x.requires_grad_() for x in _qkv(4, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attention(q, k, v, bias_table=_table(4)).sum().backward()


def test_a_flex_compile_failure_falls_back_to_the_chunked_path(monkeypatch) -> None:
    """Inductor's CPU codegen fails on some shapes; attention() must still return the right
    numbers (chunked), warn once naming the key and the reason, and not try flex again for
    that key."""
    import extrapos.kernels.attention as attn_module

    calls = {"n": 0}

    def broken(*args, **kwargs):
        calls["n"] += 1
        raise RuntimeError("C++ compile error: 'cur_kvSplitSize7' was not declared")

    monkeypatch.setattr(attn_module, "flex_bias_attention", broken)
    monkeypatch.setattr("extrapos.kernels.flex._flex_failures", {})
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 16, 8) for _ in range(3))
    table = torch.randn(2, 16)
    pos = torch.arange(16)
    expected = attn_module.chunked_bias_attention(q, k, v, table, pos, pos)
    with pytest.warns(UserWarning, match=r"FlexAttention failed to compile for \('range'"):
        out = attn_module.attention(q, k, v, bias_table=table, backend="flex")
    torch.testing.assert_close(out, expected)
    attn_module.attention(q, k, v, bias_table=table, backend="flex")
    assert calls["n"] == 1
    ((key, reason),) = attn_module.flex_failures().items()
    assert key[0] == "range" and key[3] == (2, 16) and "cur_kvSplitSize7" in reason


def test_a_flex_failure_is_per_key_not_for_the_process(monkeypatch) -> None:
    """One key failing (one score-mod kind and shape) leaves flex on for the others: another
    table shape, or gathered positions, still try flex; auto no longer picks flex for the
    failed key only."""
    import extrapos.kernels.attention as attn_module

    tried: list[tuple] = []

    def flaky(q, k, v, table, q_positions, k_positions, q_offset=0):  # noqa: ANN001, ANN202
        key = attn_module.flex_key(q, k, table, q_positions, k_positions)
        tried.append(key)
        if q.shape[-2] == 16:
            raise RuntimeError("C++ compile error")
        return attn_module.chunked_bias_attention(q, k, v, table, q_positions, k_positions)

    monkeypatch.setattr(attn_module, "flex_bias_attention", flaky)
    monkeypatch.setattr("extrapos.kernels.flex._flex_failures", {})
    torch.manual_seed(0)
    for n in (16, 24, 16, 24):
        q, k, v = (torch.randn(1, 2, n, 8) for _ in range(3))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            attn_module.attention(q, k, v, bias_table=torch.randn(2, n), backend="flex")
    assert [key[1][-2] for key in tried] == [16, 24, 24]  # 16 tried once, 24 every time
    gaps = torch.arange(24) * 2
    q, k, v = (torch.randn(1, 2, 24, 8) for _ in range(3))
    attn_module.attention(
        q, k, v, bias_table=torch.randn(2, 48), q_positions=gaps, k_positions=gaps, backend="flex"
    )
    failed = next(iter(attn_module.flex_failures()))
    cpu = torch.device("cpu")
    common = {"needs_grad": False, "t": 8192, "device": cpu}
    monkeypatch.setattr(dispatch, "decide", lambda **kw: dispatch.Decision(
        "flex" if kw["flex_ok"] else "chunked", "test"))  # fmt: skip
    monkeypatch.setattr(dispatch, "flex_available", lambda device: True)
    assert pick_backend("auto", **common, flex=failed) == "chunked"
    assert pick_backend("auto", **common, flex=("range", (1,), (1,), (1,), "x", "cpu")) == "flex"


@pytest.mark.slow
@pytest.mark.skipif(not flex_available(torch.device("cpu")), reason="no FlexAttention")
def test_two_bias_methods_compile_in_one_process() -> None:
    """The real thing (measured ~70 s of compiling on a shared CPU core, hence slow): ALiBi,
    then T5 (whose table is a transposed view, which inductor's CPU codegen failed on), then
    KERPLE, each through FlexAttention in one process, each equal to the chunked path, and
    no key falls back."""
    import extrapos.kernels.attention as attn_module
    from extrapos.encodings import build_encoding

    torch.manual_seed(0)
    n, h = 256, 4
    q, k, v = (torch.randn(1, h, n, 32) for _ in range(3))
    pos = torch.arange(n)
    before = dict(attn_module.flex_failures())
    with torch.inference_mode():
        for name in ("alibi", "t5", "kerple_log"):
            enc = build_encoding(name, num_heads=h)
            for p in enc.parameters():
                p.data.normal_()
            table = enc.distance_bias(n)
            with warnings.catch_warnings():
                warnings.simplefilter("error", UserWarning)
                warnings.filterwarnings("ignore", message=".*script_method.*")
                out = attn_module.attention(q, k, v, bias_table=table, backend="flex")
            expected = attn_module.chunked_bias_attention(q, k, v, table, pos, pos)
            torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert attn_module.flex_failures() == before


def test_per_forward_memo_sees_new_and_mutated_tensors() -> None:
    """The Toeplitz source is reused across layers of one forward, but a table changed in place
    (a training step) or a new table gives new numbers."""
    s = 6
    q, k, v = _qkv(s, s)
    table = _table(s)
    positions = torch.arange(s)
    first = attention(q, k, v, bias_table=table, backend="chunked")
    torch.testing.assert_close(first, dense_reference(q, k, v, table, positions, positions, 0))
    with torch.no_grad():
        table.mul_(3.0)  # in place: same object, new version
    second = attention(q, k, v, bias_table=table, backend="chunked")
    torch.testing.assert_close(second, dense_reference(q, k, v, table, positions, positions, 0))
    assert not torch.allclose(first, second)
    with torch.inference_mode():
        fresh = _table(s, seed=7)
        third = attention(q, k, v, bias_table=fresh, backend="chunked")
    torch.testing.assert_close(third, dense_reference(q, k, v, fresh, positions, positions, 0))


def test_single_query_toeplitz_block_equals_dense_for_any_table_layout() -> None:
    """Decoding (one query against a cache) takes the unpadded flipped table as the block
    source; a transposed (column-major) table, as FIRE's MLP output is, must give the same."""
    from extrapos.kernels.attention import chunked_bias_attention

    gen = torch.Generator().manual_seed(0)
    h, d, t = 3, 8, 37
    q, k, v = (torch.randn(1, h, s, d, generator=gen) for s in (1, t, t))
    for table in (torch.randn(h, t, generator=gen), torch.randn(t, h, generator=gen).T):
        out = chunked_bias_attention(q, k, v, table, torch.tensor([t - 1]), torch.arange(t), t - 1)
        scores = (
            q @ k.transpose(-1, -2) / d**0.5 + table[:, (t - 1) - torch.arange(t)][None, :, None]
        )
        torch.testing.assert_close(out, scores.softmax(-1) @ v)


@pytest.mark.parametrize(
    ("q_pos", "k_pos", "q_offset"),
    [
        (torch.tensor([39]), torch.arange(40), 39),  # consecutive: the flipped-table row
        (torch.tensor([57]), torch.arange(40) + 18, 39),  # consecutive, not from 0
        (torch.tensor([50]), torch.arange(40) * 1 + (torch.arange(40) > 20) * 3, 39),  # a gap
        (torch.tensor([30]), torch.arange(40), 30),  # keys past the query: masked
    ],
)
def test_decode_bias_row_is_the_bias_block_of_the_one_query(
    q_pos: torch.Tensor, k_pos: torch.Tensor, q_offset: int
) -> None:
    """The decoding row (1, h, 1, t) equals, bit for bit, the general (h, 1, t) block of
    `bias_block` (table gather by distance, causal -inf) for consecutive positions (where it is
    a reversed copy of the table) and for positions it must not take that path for; the table
    column-major (FIRE's layout) and longer than the keys."""
    from extrapos.kernels.attention import decode_bias_row
    from extrapos.kernels.blocks import bias_block

    gen = torch.Generator().manual_seed(3)
    q = torch.randn(1, 3, 1, 8, generator=gen)
    for table in (torch.randn(3, 64, generator=gen), torch.randn(64, 3, generator=gen).T):
        row = decode_bias_row(table, q_pos, k_pos, q_offset, q)
        block = bias_block(table, q_pos, k_pos, torch.tensor([q_offset]), torch.float32)
        assert row.shape == (1, 3, 1, 40) and row.is_contiguous()
        assert torch.equal(row, block[None])


def test_bidirectional_bias_attention_through_the_one_chunk_loop_is_bitwise_the_old() -> None:
    """The encoder path now runs through `blockwise_attention`; the old inline loop (copied
    here) gives bitwise the same output, with ragged chunks, gapped positions and padding."""
    from extrapos.kernels.attention import bidirectional_bias_attention
    from extrapos.kernels.blocks import bias_dtype

    def old(q, k, v, signed_table, q_positions, k_positions, chunk_size, key_mask):  # noqa: ANN001, ANN202
        n = (signed_table.shape[-1] + 1) // 2
        outs = []
        for start in range(0, q.shape[-2], chunk_size):
            stop = min(start + chunk_size, q.shape[-2])
            offsets = (q_positions[start:stop, None] - k_positions[None, :]).clamp(1 - n, n - 1)
            block = signed_table[:, offsets + n - 1].to(bias_dtype(q))[None]
            if key_mask is not None:
                block = block.masked_fill(~key_mask[:, None, None, :], float("-inf"))
            outs.append(
                F.scaled_dot_product_attention(q[..., start:stop, :], k, v, attn_mask=block)
            )
        return torch.cat(outs, dim=-2)

    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 3, 23, 8, generator=gen) * 4 for _ in range(3))
    table = torch.randn(3, 2 * 30 - 1, generator=gen) * 3
    positions = torch.arange(23) + torch.arange(23) // 5  # gaps
    key_mask = torch.ones(2, 23, dtype=torch.bool)
    key_mask[1, 17:] = False
    for mask in (None, key_mask):
        new = bidirectional_bias_attention(q, k, v, table, positions, positions, 7, mask)
        assert torch.equal(new, old(q, k, v, table, positions, positions, 7, mask))
