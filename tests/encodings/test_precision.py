"""Numerical precision at long positions, under bf16 autocast.

The field's most reported position bugs: RoPE angles m·θ formed in bf16 (or even float32) are
wrong by whole radians at m ~ 1e6; biases cast to bf16 lose the differences between far keys;
dynamic scaling serves cos/sin cached for another length. Each test checks the float32 result
against a float64 reference, and shows the naive computation failing the same bound, so the bound
means something.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from extrapos.encodings import build_encoding
from extrapos.encodings.rotary import RoPE
from extrapos.kernels.attention import chunked_bias_attention

LONGROPE = {
    "rope_type": "longrope",
    "short_factor": [1.0 + 0.1 * i for i in range(8)],
    "long_factor": [2.0 + 0.5 * i for i in range(8)],
    "original_max_position_embeddings": 4096,
}
SCALINGS = {
    "none": None,
    "linear": {"rope_type": "linear", "factor": 8.0},
    "ntk": {"rope_type": "ntk", "factor": 8.0},
    "dynamic": {"rope_type": "dynamic", "factor": 8.0},
    "yarn": {"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 4096},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 4096,
    },
    "longrope": LONGROPE,
}
POSITIONS = torch.tensor([0, 1, 4095, 65_537, 999_983, 999_999])
HEAD_DIM = 16


def _rope(scaling: dict | None) -> RoPE:
    return RoPE(HEAD_DIM, base=10000.0, scaling=scaling, max_position_embeddings=4096)


def _reference_cos_sin(rope: RoPE, positions: torch.Tensor, seq_len: int):
    """float64 cos/sin of angle = position · inv_freq, times the attention factor."""
    inv_freq, factor = rope.frequencies(seq_len=seq_len)
    angles = positions.double()[:, None] * inv_freq.double()[None, :]
    return angles.cos() * factor, angles.sin() * factor


@pytest.mark.parametrize("name", SCALINGS)
def test_cos_sin_are_float32_and_right_at_a_million_positions_under_bf16_autocast(name):
    rope = _rope(SCALINGS[name])
    seq_len = 1_000_000
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cos, sin = rope.cos_sin(POSITIONS, seq_len=seq_len)
    assert cos.dtype == sin.dtype == torch.float32
    ref_cos, ref_sin = _reference_cos_sin(rope, POSITIONS, seq_len)
    # float32 rounding of a value in [-factor, factor]; nothing lost in the angle
    assert (cos.double() - ref_cos).abs().max() < 1e-6
    assert (sin.double() - ref_sin).abs().max() < 1e-6


def test_the_bound_fails_for_angles_formed_in_float32_or_bf16():
    """What the tables avoid: m·θ in float32 at m = 999,999 is off by ~0.03 rad, in bf16 by
    hundreds."""
    rope = _rope(None)
    inv_freq, _ = rope.frequencies()
    ref = POSITIONS.double()[:, None] * inv_freq.double()[None, :]
    in_float32 = (POSITIONS.float()[:, None] * inv_freq[None, :]).double()
    in_bf16 = (POSITIONS.bfloat16()[:, None] * inv_freq.bfloat16()[None, :]).double()
    assert (in_float32.cos() - ref.cos()).abs().max() > 1e-3
    assert (in_bf16.cos() - ref.cos()).abs().max() > 0.5


@pytest.mark.parametrize("name", SCALINGS)
def test_rotated_queries_match_a_float64_rotation_at_long_positions(name):
    rope = _rope(SCALINGS[name])
    torch.manual_seed(0)
    x = torch.randn(1, 2, len(POSITIONS), HEAD_DIM)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out32 = rope.rotate(x, POSITIONS, seq_len=1_000_000)
        out16 = rope.rotate(x.bfloat16(), POSITIONS, seq_len=1_000_000)
    cos, sin = _reference_cos_sin(rope, POSITIONS, 1_000_000)
    x1, x2 = x.double().chunk(2, dim=-1)
    ref = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    assert out32.dtype == torch.float32 and out16.dtype == torch.bfloat16
    assert (out32.double() - ref).abs().max() < 1e-5
    # a bf16 input is rotated in float32 and rounded once: within bf16's half-ulp of the result
    assert torch.allclose(out16.double(), ref, rtol=2**-8, atol=2**-8 * ref.abs().max())


def test_scores_depend_only_on_the_distance_out_to_a_million():
    rope = _rope(None)
    torch.manual_seed(1)
    q, k = torch.randn(1, 1, 1, HEAD_DIM), torch.randn(1, 1, 1, HEAD_DIM)

    def score(m: int, n: int) -> float:
        qm = rope.rotate(q, torch.tensor([m]))
        kn = rope.rotate(k, torch.tensor([n]))
        return float((qm * kn).sum())

    near = score(7, 0)
    for offset in (1_000, 123_456, 999_990):
        assert score(offset + 7, offset) == pytest.approx(near, abs=1e-4)


def test_dynamic_scaling_never_serves_tables_cached_for_another_length():
    """Dynamic NTK frequencies depend on the sequence length: after a long call, a short one
    must get the unscaled tables back (the stale-cache bug of early implementations)."""
    rope = _rope({"rope_type": "dynamic", "factor": 8.0})
    positions = torch.arange(8)
    short_before = rope.cos_sin(positions, seq_len=4096)
    long = rope.cos_sin(positions, seq_len=65_536)
    short_after = rope.cos_sin(positions, seq_len=4096)
    assert not torch.allclose(short_before[0], long[0])  # the long call changed frequencies
    assert torch.equal(short_before[0], short_after[0])
    assert torch.equal(short_before[1], short_after[1])
    ref_cos, _ = _reference_cos_sin(rope, positions, 4096)
    assert (short_after[0].double() - ref_cos).abs().max() < 1e-6


BIAS_METHODS = ["alibi", "kerple_log", "kerple_power", "sandwich", "t5"]


@pytest.mark.parametrize("method", BIAS_METHODS)
def test_bias_tables_are_float32_under_bf16_autocast(method):
    encoding = build_encoding(method, num_heads=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        table = encoding.distance_bias(1_000_001)
    plain = encoding.distance_bias(1_000_001)
    assert table.dtype == torch.float32 and table.shape == (4, 1_000_001)
    assert torch.isfinite(table).all()
    assert torch.equal(table, plain)  # autocast changes nothing


def test_alibi_table_matches_float64_at_a_million():
    encoding = build_encoding("alibi", num_heads=8)
    table = encoding.distance_bias(1_000_001).double()
    slopes = torch.tensor([2.0 ** (-(i + 1)) for i in range(8)], dtype=torch.float64)
    ref = -slopes[:, None] * torch.arange(1_000_001, dtype=torch.float64)[None, :]
    assert ((table - ref).abs() / ref.abs().clamp(min=1)).max() < 1e-7


def test_bf16_attention_adds_the_bias_in_float32():
    """A far-from-zero ALiBi-like bias with small steps (a head of slope 1/256, 4k keys): the
    bf16 attention output stays within bf16 rounding of a float64 reference; a bias rounded to
    bf16 first would be off by ~100x more (measured)."""
    torch.manual_seed(0)
    n, d = 4096, 16
    q = (torch.randn(1, 1, n, d) * 0.1).bfloat16()
    k = (torch.randn(1, 1, n, d) * 0.1).bfloat16()
    v = torch.randn(1, 1, n, d).bfloat16()
    table = -(torch.arange(n, dtype=torch.float32) / 256.0)[None, :] - 300.0  # (h=1, n)
    positions = torch.arange(n)
    out = chunked_bias_attention(q, k, v, table, positions, positions, chunk_size=1024)
    distance = positions[:, None] - positions[None, :]
    bias = (-(distance.double() / 256.0) - 300.0).masked_fill(distance < 0, -math.inf)
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=bias)
    scale = ref.abs().max()
    error = (out.double() - ref).abs().max() / scale
    assert out.dtype == torch.bfloat16 and error < 2**-8  # bf16 rounding of the output
    rounded = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(torch.bfloat16))
    assert (rounded.double() - ref).abs().max() / scale > 3 * error


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_softmax_stays_finite_with_huge_biases_at_long_lengths(dtype):
    """ALiBi's steepest head at 16k keys puts biases near -8192 on far keys: no overflow, no
    NaN, rows still average v (here v = 1 everywhere, so the output must be exactly 1)."""
    n = 16_384
    encoding = build_encoding("alibi", num_heads=2)
    table = encoding.distance_bias(n)
    q = torch.randn(1, 2, n, 8).to(dtype) * 30  # large scores too
    v = torch.ones(1, 2, n, 8, dtype=dtype)
    positions = torch.arange(n)
    out = chunked_bias_attention(q, q, v, table, positions, positions)
    assert torch.isfinite(out).all()
    assert torch.allclose(out.float(), torch.ones_like(out, dtype=torch.float32), atol=1e-2)
