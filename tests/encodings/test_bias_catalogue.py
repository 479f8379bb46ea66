"""The score-bias catalogue: KERPLE (log, power), Sandwich, FIRE (pure functions and its
chunked `attend`), and the bidirectional ALiBi / T5 forms. Exact values against the formulas (float64 references written
out here), the papers' constraints, gradients through the chunked attention path, and T5's
bidirectional buckets against `transformers`.

The registry-wide properties (shape, consistent extension, Toeplitz, causality, KV cache) are in
test_properties.py and test_model.py; they cover kerple_log, kerple_power and sandwich too, and
test_model.py's model-level ones (causality, KV cache, 4x length, training step) cover fire.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from extrapos.encodings import build_encoding, encoding_class, list_encodings, t5_buckets
from extrapos.encodings.base import Positions
from extrapos.encodings.bias import (
    FIRE,
    KERPLE_EPS,
    alibi_bias_bidirectional,
    alibi_slopes,
    fire_log,
    fire_normalized_distance,
    kerple_log_table,
    kerple_power_table,
    sandwich_table,
)
from extrapos.kernels.attention import attention

H = 4


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ---------------------------------------------------------------------------------------------
# KERPLE


def test_kerple_log_table_is_the_formula() -> None:
    r1 = torch.tensor([0.5, 1.0, 2.0, 0.01])
    r2 = torch.tensor([1.0, 0.1, 0.7, 3.0])
    table = kerple_log_table(r1, r2, 50)
    expected = [
        [-a * math.log(1 + b * k) for k in range(50)]
        for a, b in zip(r1.tolist(), r2.tolist(), strict=True)
    ]
    torch.testing.assert_close(table.double(), torch.tensor(expected, dtype=torch.float64))


def test_kerple_power_table_is_the_formula_and_r2_one_is_alibi() -> None:
    r1 = torch.tensor([0.5, 1.0, 2.0, 0.25])
    r2 = torch.tensor([1.0, 0.5, 2.0, 0.01])
    table = kerple_power_table(r1, r2, 50)
    expected = [
        [-a * k**b for k in range(50)] for a, b in zip(r1.tolist(), r2.tolist(), strict=True)
    ]
    torch.testing.assert_close(table.double(), torch.tensor(expected, dtype=torch.float64))
    # r2 = 1: ALiBi with slope r1
    alibi = build_encoding("alibi", num_heads=H)
    torch.testing.assert_close(
        kerple_power_table(alibi.slopes, torch.ones(H), 30), alibi.distance_bias(30)
    )


@pytest.mark.parametrize("name", ["kerple_log", "kerple_power"])
def test_kerple_init_is_the_references(name: str) -> None:
    """r1 ~ U(0, 2) and r2 ~ U(0, 1) (log); r1 ~ U(0, 1) and r2 ~ U(0, 2) (power); each clamped
    to >= 0.01 (and r2 <= 2 for power)."""
    torch.manual_seed(0)
    enc = build_encoding(name, num_heads=4096)
    r1_high, r2_high = (2.0, 1.0) if name == "kerple_log" else (1.0, 2.0)
    for param, high in ((enc.r1, r1_high), (enc.r2, r2_high)):
        assert param.min() >= KERPLE_EPS and param.max() <= high
        assert param.mean().item() == pytest.approx(high / 2, rel=0.05)  # uniform on (0, high)


@pytest.mark.parametrize("name", ["kerple_log", "kerple_power"])
def test_kerple_projects_its_parameters_into_the_papers_ranges(name: str) -> None:
    """r1, r2 > 0 (>= 0.01) and, for power, r2 <= 2: values pushed out of range (as an optimizer
    step might) are clamped back before the table is built, and the table uses them."""
    enc = build_encoding(name, num_heads=H)
    with torch.no_grad():
        enc.r1.copy_(torch.tensor([-1.0, 0.0, 0.5, 3.0]))
        enc.r2.copy_(torch.tensor([-0.5, 0.3, 2.5, 1e-4]))
    table = enc.distance_bias(20)
    r2_max = 2.0 if name == "kerple_power" else 2.5
    expected_r1 = torch.tensor([KERPLE_EPS, KERPLE_EPS, 0.5, 3.0])
    expected_r2 = torch.tensor([KERPLE_EPS, 0.3, r2_max, KERPLE_EPS])
    torch.testing.assert_close(enc.r1.detach(), expected_r1)
    torch.testing.assert_close(enc.r2.detach(), expected_r2)
    formula = kerple_log_table if name == "kerple_log" else kerple_power_table
    torch.testing.assert_close(table, formula(expected_r1, expected_r2, 20))
    assert (table <= 0).all() and (table[:, 0] == 0).all()
    assert (table[:, 1:] < table[:, :-1]).all()  # strictly decreasing in distance


@pytest.mark.parametrize("name", ["kerple_log", "kerple_power"])
def test_kerple_gradients_reach_the_parameters_through_chunked_attention(name: str) -> None:
    """The table is gathered differentiably by the chunked path (several chunks here): r1 and
    r2 get finite, non-zero gradients, equal to those of the dense reference."""
    enc = build_encoding(name, num_heads=H)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, H, 40, 8, generator=gen) for _ in range(3))

    def grads(dense: bool) -> tuple[torch.Tensor, torch.Tensor]:
        enc.zero_grad()
        table = enc.distance_bias(40)
        if dense:
            i = torch.arange(40)
            bias = table[:, (i[:, None] - i[None, :]).clamp(min=0)]
            bias = bias.masked_fill(i[None, :] > i[:, None], float("-inf"))
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        else:
            out = attention(q, k, v, bias_table=table, backend="chunked", chunk_size=16)
        out.square().sum().backward()
        return enc.r1.grad.clone(), enc.r2.grad.clone()

    chunked, dense = grads(dense=False), grads(dense=True)
    for got, want in zip(chunked, dense, strict=True):
        assert torch.isfinite(got).all() and (got != 0).all()
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["kerple_log", "kerple_power", "sandwich"])
def test_bias_encodings_reject_zero_heads(name: str) -> None:
    with pytest.raises(ValueError, match="num_heads"):
        build_encoding(name, num_heads=0)


# ---------------------------------------------------------------------------------------------
# Sandwich


def _sandwich_reference(k: int, head: int, num_heads: int, dim: int, base: float) -> float:
    """(p_i·p_j - d'/2)/(8h/H) with p the sin/cos vectors at frequencies base^(-2l/d'),
    l = 1 .. d'/2, at positions i = k + 7, j = 7 (any pair with i - j = k)."""
    i, j = k + 7, 7
    dot = 0.0
    for l in range(1, dim // 2 + 1):
        w = base ** (-2 * l / dim)
        dot += math.sin(i * w) * math.sin(j * w) + math.cos(i * w) * math.cos(j * w)
    return (dot - dim / 2) / (8 * head / num_heads)


@pytest.mark.parametrize(
    ("num_heads", "dim", "base"), [(8, 128, 10000.0), (4, 16, 100.0), (3, 2, 10.0)]
)
def test_sandwich_is_the_inner_product_of_sinusoids(num_heads: int, dim: int, base: float) -> None:
    distances = [0, 1, 2, 5, 17, 100, 1234]
    table = sandwich_table(num_heads, 1235, dim, base)
    expected = [
        [_sandwich_reference(k, h, num_heads, dim, base) for k in distances]
        for h in range(1, num_heads + 1)
    ]
    torch.testing.assert_close(
        table[:, distances].double(),
        torch.tensor(expected, dtype=torch.float64),
        atol=1e-5,
        rtol=1e-6,
    )


def test_sandwich_shape_heads_and_range() -> None:
    """Zero at distance 0, never positive, head h is head 1 divided by h (the 8h/H ladder), within
    [-d'/(8h/H), 0], and finite at distance 10^6."""
    enc = build_encoding("sandwich", num_heads=8)
    assert list(enc.parameters()) == []
    table = enc.distance_bias(3000)
    assert table.shape == (8, 3000) and table.dtype == torch.float32
    assert (table[:, 0] == 0).all() and (table <= 1e-6).all()
    for h in range(8):
        torch.testing.assert_close(table[h], table[0] / (h + 1))
    divisors = 8 * torch.arange(1, 9) / 8
    assert (table >= -128 / divisors[:, None]).all()
    far = sandwich_table(8, 1_000_001)[:, -1]
    assert torch.isfinite(far).all() and (far < 0).all()
    # decays at short range: the mean bias over distances 1..10 is above that over 100..1000
    assert (table[:, 1:11].mean(1) > table[:, 100:1000].mean(1)).all()


def test_sandwich_cache_grows_and_follows_the_module() -> None:
    enc = build_encoding("sandwich", num_heads=H, dim=16)
    small = enc.distance_bias(10)
    big = enc.distance_bias(5000)
    assert torch.equal(big[:, :10], small)
    torch.testing.assert_close(big, sandwich_table(H, 5000, 16))
    assert "_table" not in enc.state_dict()  # a cache, not a weight


@pytest.mark.parametrize(
    ("params", "field"), [({"dim": 3}, "dim"), ({"dim": 0}, "dim"), ({"base": 1.0}, "base")]
)
def test_sandwich_invalid_values_name_the_field(params: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        build_encoding("sandwich", num_heads=H, **params)


# ---------------------------------------------------------------------------------------------
# FIRE (pure functions, the module, its attention site)


def test_fire_log_and_normalized_distance_are_the_formula() -> None:
    c, threshold = torch.tensor(0.1), torch.tensor(16.0)
    q = torch.tensor([0, 3, 15, 16, 40, 1000])
    k = torch.arange(0, 1001, 7)
    got = fire_normalized_distance(q, k, c, threshold, eps=1e-6)
    assert got.shape == (6, k.numel())
    for row, i in enumerate(q.tolist()):
        for col, j in enumerate(k.tolist()):
            want = math.log(abs(0.1 * (i - j)) + 1) / (math.log(0.1 * max(16.0, i) + 1) + 1e-6)
            assert got[row, col].item() == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert fire_log(torch.tensor([-5.0, 0.0, 5.0]), c).tolist() == pytest.approx(
        [math.log(1.5), 0.0, math.log(1.5)]
    )


def test_fire_input_is_in_unit_interval_and_progressive() -> None:
    """For j <= i the MLP input lies in [0, 1]; below the threshold it depends on i - j only;
    beyond it, on i too (why FIRE cannot be a distance table)."""
    c, threshold = torch.tensor(0.1), torch.tensor(64.0)
    positions = torch.arange(300)
    x = fire_normalized_distance(positions, positions, c, threshold)
    lower = positions[None, :] <= positions[:, None]
    assert (x[lower] >= 0).all() and (x[lower] <= 1).all()
    # i < L: Toeplitz (i - j determines it)
    assert torch.equal(x[10, 0:10], x[20, 10:20])
    # i >= L: the same distance 10 maps to smaller inputs as i grows
    assert x[100, 90] > x[200, 190] > x[299, 289]


def test_fire_module_bias_shape_blocks_and_gradients() -> None:
    torch.manual_seed(0)
    fire = FIRE(num_heads=H, init_L=32.0)
    q_pos, k_pos = torch.arange(100), torch.arange(100)
    bias = fire.position_bias(q_pos, k_pos)
    assert bias.shape == (H, 100, 100) and bias.dtype == torch.float32
    # rows depend only on their own query position: a query chunk (or a cached decode step)
    # builds exactly its rows of the full block
    torch.testing.assert_close(fire.position_bias(q_pos[60:75], k_pos), bias[:, 60:75])
    # the MLP reads the normalized distance, one scalar input per (i, j)
    x = fire_normalized_distance(q_pos, k_pos, fire.c, fire.threshold, fire.eps)
    torch.testing.assert_close(bias, fire.mlp(x[..., None]).permute(2, 0, 1))
    # every parameter (c, the threshold multiplier, the MLP) receives a gradient
    bias[:, torch.arange(100)[:, None] >= torch.arange(100)[None, :]].square().sum().backward()
    for name, p in fire.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_fire_is_registered_at_the_attention_site() -> None:
    """FIRE's bias depends on the query position, so it is no distance table: it attends itself
    (if the `attention` site were missing from the base class, it would silently be NoPE)."""
    assert "fire" in list_encodings()
    enc = build_encoding("fire", num_heads=H)
    assert enc.sites == {"attention"}
    assert not enc.shift_invariant


@pytest.mark.parametrize("block_elements", [2**22, 3000])  # one chunk; many small chunks
# all queries past L (per-chunk blocks); the first 15 below (a table, then blocks); all below
@pytest.mark.parametrize("init_L", [20.0, 35.0, 100.0])
def test_fire_attend_equals_the_dense_reference(
    block_elements: int,
    init_L: float,  # noqa: N803
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """attend() (query chunks, with a cache offset too) equals SDPA with the whole (h, s, t)
    FIRE bias plus the causal mask, in outputs and in gradients of every parameter — when
    queries pass the threshold L (per-chunk bias blocks), when all are below it (the bias is a
    distance table through the learned-table attention path), and when L splits them."""
    import extrapos.encodings.bias as bias_module
    from extrapos.kernels import dispatch

    monkeypatch.setattr(bias_module, "FIRE_BLOCK_ELEMENTS", block_elements)
    torch.manual_seed(0)
    fire = FIRE(num_heads=H, init_L=init_L)
    dispatch.paths_taken(reset=True)
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(2, H, 30, 8, generator=gen, requires_grad=True)
    k, v = (torch.randn(2, H, 50, 8, generator=gen) for _ in range(2))
    q_pos, k_pos, offset = torch.arange(20, 50), torch.arange(50), 20  # 20 keys cached

    def run(dense: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        fire.zero_grad()
        if dense:
            bias = fire.position_bias(q_pos, k_pos)
            visible = torch.arange(50)[None, :] <= (offset + torch.arange(30))[:, None]
            mask = bias.masked_fill(~visible, float("-inf"))
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            out = fire.attend(q, k, v, Positions(q_pos, k_pos, offset))
        out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in fire.parameters()]

    (chunked, chunked_grads), (dense, dense_grads) = run(False), run(True)
    taken = dispatch.paths_taken(reset=True)
    assert taken == ({"chunked-table-grad": 1} if init_L > 20 else {}), taken
    torch.testing.assert_close(chunked, dense, atol=1e-5, rtol=1e-5)
    for got, want in zip(chunked_grads, dense_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("causal", [True, False])
def test_fire_recomputes_its_mlp_in_backward_with_the_same_gradients(
    causal: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past L the per-pair MLP activations ((c, t, 32) per block, twice) are recomputed in
    backward instead of kept: the outputs and every gradient bit for bit those of keeping them,
    and far fewer bytes saved for backward."""
    torch.manual_seed(0)
    fire = FIRE(num_heads=H, init_L=4.0)
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, H, 96, 8, generator=gen, requires_grad=True) for _ in range(3))
    pos = torch.arange(96)

    def run() -> tuple[list[torch.Tensor], int]:
        fire.zero_grad()
        saved = []

        def pack(t: torch.Tensor) -> torch.Tensor:
            saved.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = fire.attend(q, k, v, Positions(pos, pos, 0), causal=causal)
        grads = torch.autograd.grad(out.square().sum(), [q, k, v, *fire.parameters()])
        return [out.detach(), *grads], sum(saved)

    recomputed, recomputed_bytes = run()
    monkeypatch.setattr(FIRE, "recomputed_position_bias", FIRE.position_bias)
    kept, kept_bytes = run()
    for a, b in zip(recomputed, kept, strict=True):
        assert torch.equal(a, b)
    assert recomputed_bytes < kept_bytes / 3, (recomputed_bytes, kept_bytes)


@pytest.mark.parametrize(
    ("params", "field"),
    [({"mlp_width": 0}, "mlp_width"), ({"init_c": 0.0}, "init_c"), ({"init_L": -1.0}, "init_L")],
)
def test_fire_invalid_values_name_the_field(params: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        FIRE(num_heads=H, **params)


# ---------------------------------------------------------------------------------------------
# bidirectional (encoder) forms


def test_alibi_bidirectional_is_symmetric_and_extends_the_causal_table() -> None:
    distances = torch.arange(-50, 51)
    bias = alibi_bias_bidirectional(6, distances)
    assert bias.shape == (6, 101) and bias.dtype == torch.float32
    torch.testing.assert_close(bias, bias.flip(-1))  # B(k) = B(-k)
    causal = build_encoding("alibi", num_heads=6).distance_bias(51)
    torch.testing.assert_close(bias[:, 50:], causal)  # k >= 0: the causal table
    torch.testing.assert_close(bias, -alibi_slopes(6)[:, None] * distances.abs()[None, :].float())
    grid = torch.arange(5)[:, None] - torch.arange(7)[None, :]  # any shape of i - j
    assert alibi_bias_bidirectional(6, grid).shape == (6, 5, 7)


@pytest.mark.parametrize(("num_buckets", "max_distance"), [(32, 128), (16, 64), (8, 20), (33, 100)])
def test_t5_bidirectional_buckets_match_transformers(num_buckets: int, max_distance: int) -> None:
    pytest.importorskip("transformers")
    from transformers.models.t5.modeling_t5 import T5Attention

    distance = torch.arange(-3000, 3001)  # i - j
    theirs = T5Attention._relative_position_bucket(
        -distance,  # memory_position - query_position = j - i
        bidirectional=True,
        num_buckets=num_buckets,
        max_distance=max_distance,
    )
    ours = t5_buckets(distance, num_buckets, max_distance, bidirectional=True)
    assert torch.equal(ours, theirs)
    half = num_buckets // 2
    assert (ours[distance >= 0] < half).all() and (ours[distance < 0] >= half).all()
    # the causal default is unchanged
    assert torch.equal(t5_buckets(distance.clamp(min=0), num_buckets, max_distance),
                       t5_buckets(distance, num_buckets, max_distance))  # fmt: skip


def _bias_site_encodings() -> list[str]:
    """Every registered encoding with a distance table of its own."""
    own = [n for n in list_encodings() if "distance_bias" in encoding_class(n).__dict__]
    return sorted({*own, "kerple_log", "kerple_power"})  # KERPLE's lives in their base class


@pytest.mark.parametrize("name", _bias_site_encodings())
def test_a_prefix_stable_table_is_bitwise_every_prefix_of_a_longer_one(name: str) -> None:
    """Encodings that declare `prefix_stable_table` compute each entry alone: the first n
    entries of an N-distance table equal the n-distance table bit for bit, n past vector
    widths and tails (1, 17, 129, 1000 of 3000), with random parameters; so inference may keep
    one table across calls. (KERPLE's log/pow declare no such thing; nothing is asserted.)"""
    torch.manual_seed(0)
    enc = build_encoding(name, num_heads=H)
    with torch.no_grad():
        for p in enc.parameters():
            p.uniform_(0.05, 1.5)
        long = enc.distance_bias(3000)
        for n in (1, 17, 129, 1000):
            if enc.prefix_stable_table:
                assert torch.equal(long[:, :n], enc.distance_bias(n))


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
@pytest.mark.parametrize("name", ["alibi", "t5", "kerple_log", "sandwich"])
def test_inference_reuses_one_table_until_a_parameter_changes(name: str, mode) -> None:  # noqa: ANN001
    """`stable_distance_bias` (what inference calls per forward) equals `distance_bias`; for a
    prefix-stable encoding the second call of a longer length within the kept size is a view
    of the same storage (a decoding step builds no table); an in-place parameter update (an
    optimizer step, `load_state_dict`) is seen at once. Under `no_grad` and `inference_mode`
    (where Sandwich's own table cache is an inference tensor, without a version counter)."""
    torch.manual_seed(1)
    enc = build_encoding(name, num_heads=H)
    with mode():
        first = enc.stable_distance_bias(40)
        second = enc.stable_distance_bias(41)
        assert torch.equal(first, enc.distance_bias(40))
        assert torch.equal(second, enc.distance_bias(41))
        if enc.prefix_stable_table:
            assert second.data_ptr() == first.data_ptr()
        for p in enc.parameters():
            p.mul_(2.0).add_(0.5)
        again = enc.stable_distance_bias(41)
        assert torch.equal(again, enc.distance_bias(41))
        if list(enc.parameters()):
            assert not torch.equal(again, second)


def test_a_kept_table_sees_writes_through_data_and_does_not_grow_with_updates() -> None:
    """A parameter written through `.data` (no version bump) or updated every step (a
    train/eval loop) gives a fresh table, and rebuilding for a changed parameter keeps the
    kept size: it grows only when a longer length is asked (it had doubled per update)."""
    torch.manual_seed(2)
    enc = build_encoding("t5", num_heads=H)
    with torch.no_grad():
        enc.weight.normal_()
        enc.stable_distance_bias(32)
        enc.weight.data.copy_(torch.randn_like(enc.weight))
        assert torch.equal(enc.stable_distance_bias(32), enc.distance_bias(32))
        for _ in range(12):
            enc.weight.add_(0.1)
            assert torch.equal(enc.stable_distance_bias(32), enc.distance_bias(32))
        assert enc._stable_table[1].shape[-1] == 256
        enc.stable_distance_bias(300)
        assert enc._stable_table[1].shape[-1] == 512
