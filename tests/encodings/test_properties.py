"""Properties every encoding family must have, parametrized over the registry where a site says
which apply, so an encoding is covered the day it is registered.

    q/k site:   (R_m q)·(R_n k) depends on m - n only; rotations keep norms; bf16 at long
                positions matches float32.
    bias site:  the table is (h, n), extends consistently, and its dense form is Toeplitz.
    input site: a per-position function, shape (s, D).
Plus exact values: ALiBi slopes, T5 buckets, the sinusoidal formula, the learned table's limit.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from extrapos.encodings import (
    PositionalEncoding,
    alibi_slopes,
    build_encoding,
    build_for_model,
    encoding_parameters,
    list_encodings,
    t5_buckets,
)
from extrapos.encodings.absolute import sinusoidal_table
from extrapos.encodings.rotary import RoPE
from extrapos.kernels.attention import bias_block

H, D_MODEL, HEAD_DIM = 4, 64, 16


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny tensors: intra-op threads only add overhead, and stall when other jobs hold the cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _build(name: str, **params: Any) -> PositionalEncoding:
    """Build a registered encoding for a model with H heads of HEAD_DIM dims, with any learned
    parameters randomized (a zero-initialized table would make many properties hold vacuously)."""
    enc = build_for_model(name, params, d_model=D_MODEL, num_heads=H, head_dim=HEAD_DIM)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in enc.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return enc


def _registered_with(site: str) -> list[str]:
    return [name for name in list_encodings() if site in _build(name).sites]


#: RoPE variants beyond the registry defaults: partial rotary and position-independent scalings.
ROPE_VARIANTS: dict[str, dict[str, Any]] = {
    "rope-partial": {"rotary_dim": 8},
    "rope-linear": {"scaling": {"rope_type": "linear", "factor": 4.0}},
    "rope-yarn": {
        "scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
    },
    "rope-partial-yarn": {
        "rotary_dim": 8,
        "scaling": {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 32},
    },
    "rope-llama3": {
        "base": 500000.0,
        "scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    },
}

#: every registered q/k-site encoding (defaults) plus the RoPE variants, as (name, params).
QK_CASES = [pytest.param(name, {}, id=name) for name in _registered_with("qk")] + [
    pytest.param("rope", params, id=case) for case, params in ROPE_VARIANTS.items()
]
ROPE_CASES = [
    case for case in QK_CASES if isinstance(_build(case.values[0], **case.values[1]), RoPE)
]


# ---------------------------------------------------------------------------------------------
# q/k site


@pytest.mark.parametrize(("name", "params"), QK_CASES)
def test_qk_scores_depend_only_on_relative_position(name: str, params: dict[str, Any]) -> None:
    """(R_{m+o} q)·(R_{n+o} k) = (R_m q)·(R_n k) for every m, n and common offset o."""
    enc = _build(name, **params)
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(2, H, 12, HEAD_DIM, generator=gen)
    k = torch.randn(2, H, 10, HEAD_DIM, generator=gen)
    q_pos = torch.randint(0, 64, (12,), generator=gen)
    k_pos = torch.randint(0, 64, (10,), generator=gen)

    def scores(offset: int) -> torch.Tensor:
        q_rot, k_rot = enc.rotate_qk(q, k, q_pos + offset, k_pos + offset)
        return q_rot @ k_rot.transpose(-1, -2)  # (b, h, s, t)

    reference = scores(0)
    assert not torch.allclose(reference, q @ k.transpose(-1, -2), atol=1e-3)  # it does rotate
    for offset in (1, 17, 999, 4321):
        torch.testing.assert_close(scores(offset), reference, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize(("name", "params"), ROPE_CASES)
def test_rotation_scales_norms_by_the_attention_factor(name: str, params: dict[str, Any]) -> None:
    """|R_m x| = |x| on the rotated dims (times YaRN's attention factor where one applies)."""
    enc = _build(name, **params)
    _, attention_factor = enc.frequencies()
    r = enc.rotary_dim
    x = torch.randn(1, H, 50, HEAD_DIM, generator=torch.Generator().manual_seed(2))
    positions = torch.cat((torch.arange(25), torch.randint(100, 150_000, (25,))))
    rotated = enc.rotate(x, positions)
    torch.testing.assert_close(
        rotated[..., :r].norm(dim=-1), attention_factor * x[..., :r].norm(dim=-1)
    )
    assert torch.equal(rotated[..., r:], x[..., r:])


@pytest.mark.parametrize("rotary_dim", [2, 4, 8, 12])
def test_partial_rotary_leaves_the_other_dims_unchanged(rotary_dim: int) -> None:
    """GPT-NeoX partial rotary: dims >= rotary_dim pass through bit for bit; the first ones turn."""
    enc = build_encoding("rope", head_dim=HEAD_DIM, rotary_dim=rotary_dim)
    x = torch.randn(2, H, 9, HEAD_DIM, generator=torch.Generator().manual_seed(3))
    rotated = enc.rotate(x, torch.arange(100, 109))
    assert torch.equal(rotated[..., rotary_dim:], x[..., rotary_dim:])
    assert not torch.allclose(rotated[..., :rotary_dim], x[..., :rotary_dim], atol=1e-3)


def _complex_rope(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """Independent reference: pair (i, i + d/2) is the complex number x_i + i·x_{i+d/2},
    multiplied by exp(i·m·θ_i), θ_i = base^(-2i/d). θ is rounded to float32 as in `transformers`
    (so weights move between the two); the angles m·θ_i are float64."""
    d = x.shape[-1]
    theta = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    angles = positions.double()[:, None] * theta.double()[None, :]
    z = torch.complex(x[..., : d // 2].double(), x[..., d // 2 :].double())
    z = z * torch.polar(torch.ones_like(angles), angles)
    return torch.cat((z.real, z.imag), dim=-1)


def test_rope_equals_the_complex_multiplication_formula() -> None:
    enc = build_encoding("rope", head_dim=HEAD_DIM, base=10000.0)
    x = torch.randn(2, H, 20, HEAD_DIM, generator=torch.Generator().manual_seed(4))
    positions = torch.cat((torch.arange(10), torch.arange(123_456, 123_466)))
    torch.testing.assert_close(
        enc.rotate(x, positions).double(), _complex_rope(x, positions, 10000.0), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize(("name", "params"), QK_CASES)
def test_bf16_at_long_positions_matches_float32(name: str, params: dict[str, Any]) -> None:
    """Positional math stays in float32 for bf16 inputs: at positions ~1e5, angles computed in
    bf16 would be off by whole radians; the result must match the float32 path to bf16 rounding."""
    enc = _build(name, **params)
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(1, H, 16, HEAD_DIM, generator=gen).bfloat16()
    k = torch.randn(1, H, 16, HEAD_DIM, generator=gen).bfloat16()
    q_pos = torch.arange(100_000, 100_016)
    k_pos = torch.arange(131_072 - 16, 131_072)
    q_bf, k_bf = enc.rotate_qk(q, k, q_pos, k_pos)
    q_32, k_32 = enc.rotate_qk(q.float(), k.float(), q_pos, k_pos)
    assert q_bf.dtype == k_bf.dtype == torch.bfloat16
    bf16_tol = {"atol": 1e-2, "rtol": 1.6e-2}
    torch.testing.assert_close(q_bf.float(), q_32, **bf16_tol)
    torch.testing.assert_close(k_bf.float(), k_32, **bf16_tol)


def test_bf16_rope_at_long_positions_matches_the_exact_rotation() -> None:
    """Against the float64 formula, not only our own float32 path."""
    enc = build_encoding("rope", head_dim=HEAD_DIM)
    x = torch.randn(1, H, 8, HEAD_DIM, generator=torch.Generator().manual_seed(6)).bfloat16()
    positions = torch.arange(250_000, 250_008)
    exact = _complex_rope(x.float(), positions, 10000.0).float()
    torch.testing.assert_close(enc.rotate(x, positions).float(), exact, atol=1e-2, rtol=1.6e-2)


# ---------------------------------------------------------------------------------------------
# ALiBi slopes: Press et al. 2022 and their reference code (github.com/ofirpress/attention_with_linear_biases)


def _powers_of_two(*exponents: float) -> list[float]:
    return [2.0**-e for e in exponents]


#: For h a power of two: 2^(-8k/h), k = 1..h. Otherwise (reference code): the slopes for the
#: largest power of two c < h, then the odd-indexed ones (every other, from the first) of the
#: 2c-head sequence, the first h - c of them.
ALIBI_EXPECTED = {
    8: _powers_of_two(1, 2, 3, 4, 5, 6, 7, 8),  # 1/2, 1/4, ..., 1/256
    16: _powers_of_two(*[k / 2 for k in range(1, 17)]),  # 2^-0.5, 2^-1, ..., 2^-8
    # c = 4: 1/4, 1/16, 1/64, 1/256; then from the 8-head sequence 1/2, 1/8
    6: _powers_of_two(2, 4, 6, 8, 1, 3),
    # c = 8: 2^-1 .. 2^-8; then from the 16-head sequence 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5
    12: _powers_of_two(1, 2, 3, 4, 5, 6, 7, 8, 0.5, 1.5, 2.5, 3.5),
    1: _powers_of_two(8),
    2: _powers_of_two(4, 8),
}


@pytest.mark.parametrize("num_heads", sorted(ALIBI_EXPECTED))
def test_alibi_slopes_equal_the_papers(num_heads: int) -> None:
    expected = torch.tensor(ALIBI_EXPECTED[num_heads], dtype=torch.float32)
    torch.testing.assert_close(alibi_slopes(num_heads), expected, rtol=1e-7, atol=0)
    enc = build_encoding("alibi", num_heads=num_heads)
    torch.testing.assert_close(enc.slopes, expected, rtol=1e-7, atol=0)


def test_alibi_table_is_minus_slope_times_distance() -> None:
    enc = build_encoding("alibi", num_heads=8)
    table = enc.distance_bias(100)
    expected = -torch.tensor(ALIBI_EXPECTED[8])[:, None] * torch.arange(100.0)[None, :]
    torch.testing.assert_close(table, expected)


# ---------------------------------------------------------------------------------------------
# T5 buckets

T5_SHAPES = [(32, 128), (16, 64), (8, 20), (2, 2), (33, 100)]


@pytest.mark.parametrize(("num_buckets", "max_distance"), T5_SHAPES)
def test_t5_buckets_exact_monotone_and_saturating(num_buckets: int, max_distance: int) -> None:
    """bucket(k) = k below num_buckets/2; non-decreasing in k; = num_buckets-1 from max_distance on."""
    k = torch.arange(0, 20 * max_distance + 1000)
    buckets = t5_buckets(k, num_buckets, max_distance)
    assert buckets.dtype == torch.long and buckets.shape == k.shape
    exact = num_buckets // 2
    assert torch.equal(buckets[:exact], k[:exact])
    assert (buckets[1:] >= buckets[:-1]).all()
    assert (buckets[max_distance:] == num_buckets - 1).all()
    assert buckets.min() == 0 and buckets.max() == num_buckets - 1
    # every bucket is used (the log spacing leaves no gaps when buckets are fewer than distances)
    assert torch.equal(buckets.unique(), torch.arange(num_buckets))


def test_t5_buckets_negative_distances_fall_in_bucket_zero() -> None:
    """Keys after the query (masked anyway) map to bucket 0, as in causal T5."""
    assert (t5_buckets(torch.arange(-50, 0)) == 0).all()


@pytest.mark.parametrize(("num_buckets", "max_distance"), [(32, 128), (16, 64), (8, 20)])
def test_t5_buckets_match_transformers(num_buckets: int, max_distance: int) -> None:
    """Differential: the unidirectional bucket map of `transformers`' T5Attention."""
    pytest.importorskip("transformers")
    from transformers.models.t5.modeling_t5 import T5Attention

    distance = torch.arange(0, 5000)
    theirs = T5Attention._relative_position_bucket(
        -distance,  # memory_position - query_position = j - i
        bidirectional=False,
        num_buckets=num_buckets,
        max_distance=max_distance,
    )
    assert torch.equal(t5_buckets(distance, num_buckets, max_distance), theirs)


def test_t5_table_reads_the_weight_by_bucket() -> None:
    enc = _build("t5")
    table = enc.distance_bias(300)
    buckets = t5_buckets(torch.arange(300), enc.num_buckets, enc.max_distance)
    torch.testing.assert_close(table, enc.weight[buckets].T)


# ---------------------------------------------------------------------------------------------
# bias site: every registered distance-bias encoding


@pytest.mark.parametrize("name", _registered_with("bias"))
@pytest.mark.parametrize("n", [1, 7, 300])
def test_bias_table_shape_and_consistent_extension(name: str, n: int) -> None:
    """table(n) is (h, n) float32; a longer table extends a shorter one (table(n)[:, :m] = table(m)),
    so a distance means the same thing at every sequence length."""
    enc = _build(name)
    table = enc.distance_bias(n)
    assert table.shape == (H, n)
    assert table.dtype == torch.float32
    assert torch.isfinite(table).all()
    longer = enc.distance_bias(n + 50)
    torch.testing.assert_close(longer[:, :n], table, rtol=0, atol=0)


@pytest.mark.parametrize("name", _registered_with("bias"))
def test_dense_bias_is_toeplitz_and_causal(name: str) -> None:
    """The dense (h, s, s) form the attention code builds is B[h, i, j] = table[h, i - j] for
    j <= i (constant along diagonals) and -inf above the diagonal."""
    s = 24
    enc = _build(name)
    table = enc.distance_bias(s)
    assert not torch.allclose(table, table[:, :1].expand_as(table))  # position does matter
    positions = torch.arange(s)
    dense = bias_block(table, positions, positions, positions, torch.float32)
    assert dense.shape == (H, s, s)
    i, j = torch.meshgrid(positions, positions, indexing="ij")
    lower = j <= i
    assert torch.isneginf(dense[:, ~lower]).all()
    torch.testing.assert_close(dense[:, lower], table[:, (i - j)[lower]])
    # Toeplitz: shifting both i and j by one leaves every visible entry unchanged
    assert torch.equal(dense[:, 1:, 1:][:, lower[1:, 1:]], dense[:, :-1, :-1][:, lower[:-1, :-1]])


# ---------------------------------------------------------------------------------------------
# input site, NoPE, learned


@pytest.mark.parametrize("name", _registered_with("input"))
def test_input_embedding_is_a_function_of_position(name: str) -> None:
    """PE(positions)[i] = PE(arange)[positions[i]]: shape (s, D), no dependence on the others."""
    enc = _build(name)
    full = enc.input_embedding(torch.arange(64))
    assert full.shape == (64, D_MODEL)
    assert full.dtype == torch.float32
    assert torch.isfinite(full).all()
    positions = torch.tensor([5, 63, 0, 17, 17, 2])
    torch.testing.assert_close(enc.input_embedding(positions), full[positions])
    assert not torch.allclose(full[0], full[1])


@pytest.mark.parametrize("dim", [32, 7])
def test_sinusoidal_table_matches_the_formula(dim: int) -> None:
    """PE(pos, 2i) = sin(pos / 10000^(2i/D)), PE(pos, 2i+1) = cos(pos / 10000^(2i/D)),
    also at positions ~1e5 where float32 angles would have lost their digits."""
    positions = torch.cat((torch.arange(50), torch.arange(100_000, 100_010)))
    expected = torch.empty(len(positions), dim, dtype=torch.float64)
    for row, pos in enumerate(positions.tolist()):
        for col in range(dim):
            angle = pos / 10000.0 ** (2 * (col // 2) / dim)
            expected[row, col] = math.sin(angle) if col % 2 == 0 else math.cos(angle)
    table = sinusoidal_table(positions, dim)
    assert table.shape == (len(positions), dim) and table.dtype == torch.float32
    torch.testing.assert_close(table.double(), expected, atol=1e-6, rtol=0)
    enc = build_encoding("sinusoidal", d_model=dim)
    torch.testing.assert_close(enc.input_embedding(positions), table * enc.scale)


def test_nope_uses_no_site_and_every_hook_is_absent() -> None:
    """NoPE adds nothing anywhere: the model is the position-free Transformer."""
    enc = _build("nope")
    assert enc.sites == frozenset()
    assert list(enc.parameters()) == []
    positions = torch.arange(4)
    x = torch.zeros(1, H, 4, HEAD_DIM)
    with pytest.raises(NotImplementedError):
        enc.input_embedding(positions)
    with pytest.raises(NotImplementedError):
        enc.rotate_qk(x, x, positions, positions)
    with pytest.raises(NotImplementedError):
        enc.distance_bias(4)
    with pytest.raises(NotImplementedError):
        enc.ffn_term(positions, 8)


def test_learned_raises_past_max_len_naming_it() -> None:
    enc = build_encoding("learned", d_model=D_MODEL, max_len=8)
    assert enc.max_len == 8
    assert enc.input_embedding(torch.arange(8)).shape == (8, D_MODEL)  # the last row is fine
    with pytest.raises(ValueError, match="max_len=8"):
        enc.input_embedding(torch.arange(9))
    with pytest.raises(ValueError, match="max_len=8"):
        enc.input_embedding(torch.tensor([3, 1000]))


@pytest.mark.parametrize(
    "name", [n for n in list_encodings() if "max_len" not in encoding_parameters(n)]
)
def test_no_hidden_length_ceiling(name: str) -> None:
    """Only encodings built with a declared `max_len` (a true table limit) refuse positions."""
    enc = _build(name)
    assert enc.max_len is None
    enc.check_positions(10**7)  # does not raise


def test_sinusoidal_default_scale_matches_token_embedding_std() -> None:
    """The default scale puts the table's RMS at the token embeddings' init std (0.02)."""
    from extrapos.encodings.base import EMBEDDING_INIT_STD

    enc = build_encoding("sinusoidal", d_model=64)
    table = enc.input_embedding(torch.arange(4096))
    assert table.pow(2).mean().sqrt().item() == pytest.approx(EMBEDDING_INIT_STD, rel=0.02)
    unscaled = build_encoding("sinusoidal", d_model=64, scale=1.0).input_embedding(torch.arange(8))
    torch.testing.assert_close(unscaled, sinusoidal_table(torch.arange(8), 64))


def test_rotation_gradient_equals_autograd_of_the_formula() -> None:
    """The hand-written backward (rotate the gradient by −θ) equals autograd through
    out = [x1·cos − x2·sin, x2·cos + x1·sin]."""
    from extrapos.encodings.rotary import rotate_half_split

    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 8, requires_grad=True)
    angles = torch.randn(5, 4)
    cos, sin = angles.cos(), angles.sin()
    upstream = torch.randn(2, 3, 5, 8)
    (grad,) = torch.autograd.grad(rotate_half_split(x, cos, sin), x, upstream)
    x1, x2 = x.chunk(2, dim=-1)
    reference = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    (expected,) = torch.autograd.grad(reference, x, upstream)
    torch.testing.assert_close(grad, expected)
    torch.testing.assert_close(rotate_half_split(x, cos, sin), reference)
