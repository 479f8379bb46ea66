"""xPos: ζ against torchscale's formula, the rotation-with-decay against an independent complex
reference, scores that depend only on n - m at any absolute position (10^6), the decay per pair,
the two centring modes (per call, the KV cache keeping its keys' centre and rescaling them when
it moves; fixed), KV-cache decoding through the model, and the float-range errors.

Registry-wide q/k properties (relative scores at small offsets, bf16 at ~1e5) are in
test_properties.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from extrapos.encodings import build_encoding
from extrapos.encodings.rotary import RoPE
from extrapos.encodings.xpos import XPos, xpos_zeta
from extrapos.models.gpt import GPT, GPTConfig, KVCache

H, D = 2, 16


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _qk(s: int, t: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, H, s, D, generator=gen), torch.randn(1, H, t, D, generator=gen)


def _scores(enc: XPos, q, k, q_pos, k_pos) -> torch.Tensor:  # noqa: ANN001
    q_rot, k_rot = enc.rotate_qk(q, k, q_pos, k_pos)
    return q_rot @ k_rot.transpose(-1, -2)


def test_zeta_is_torchscales() -> None:
    """torchscale: (arange(0, d, 2) + 0.4·d) / (1.4·d) = (l/(d/2) + γ)/(1 + γ)."""
    for d in (8, 16, 64, 128):
        torchscale = (torch.arange(0, d, 2, dtype=torch.float64) + 0.4 * d) / (1.4 * d)
        torch.testing.assert_close(xpos_zeta(d, 0.4), torchscale)
    assert xpos_zeta(64)[0].item() == pytest.approx(0.4 / 1.4)


def _reference_scores(q, k, q_pos, k_pos, scale_base: float, base: float = 10000.0):  # noqa: ANN001, ANN202
    """Independent float64 formula, no centring: pair l is the complex number x_l + i·x_{l+d/2};
    q_n -> z·e^{i n θ_l}·ζ_l^{n/sb}, k_m -> z·e^{i m θ_l}·ζ_l^{-m/sb}; score = Re Σ_l q̃ conj(k̃)."""
    half = D // 2
    theta = base ** (-torch.arange(half, dtype=torch.float64) * 2 / D)
    zeta = (torch.arange(half, dtype=torch.float64) / half + 0.4) / 1.4

    def turn(x, pos, sign):  # noqa: ANN001, ANN202
        z = torch.complex(x[..., :half].double(), x[..., half:].double())
        angle = pos.double()[:, None] * theta[None, :]
        decay = zeta[None, :] ** (sign * pos.double()[:, None] / scale_base)
        return z * torch.polar(decay, angle)

    return (turn(q, q_pos, 1) @ turn(k, k_pos, -1).conj().transpose(-1, -2)).real


def test_scores_equal_the_complex_reference() -> None:
    enc = build_encoding("xpos", head_dim=D, scale_base=64.0)
    q, k = _qk(12, 10)
    # keys before queries, as in causal attention: for j > i ζ^((n - m)/sb) grows instead of
    # decaying and float32 keeps only its relative precision of those large terms
    gen = torch.Generator().manual_seed(4)
    q_pos, k_pos = (
        torch.randint(150, 300, (12,), generator=gen),
        torch.randint(0, 150, (10,), generator=gen),
    )
    got = _scores(enc, q, k, q_pos, k_pos).double()
    torch.testing.assert_close(
        got, _reference_scores(q, k, q_pos, k_pos, 64.0), rtol=1e-5, atol=1e-5
    )


def test_each_pair_decays_by_zeta_to_the_distance() -> None:
    """With q and k in one rotated pair l only, the xPos score is the RoPE score times
    ζ_l^((n - m)/scale_base)."""
    enc = build_encoding("xpos", head_dim=D, scale_base=32.0)
    rope = RoPE(D)
    zeta = xpos_zeta(D)
    q_pos, k_pos = torch.tensor([40, 90]), torch.tensor([0, 10, 40])
    distance = (q_pos[:, None] - k_pos[None, :]).double()
    for pair in (0, 3, D // 2 - 1):
        q, k = torch.zeros(1, 1, 2, D), torch.zeros(1, 1, 3, D)
        q[..., pair], q[..., pair + D // 2] = 1.0, 0.5
        k[..., pair], k[..., pair + D // 2] = -0.3, 1.0
        xpos_scores = _scores(enc, q, k, q_pos, k_pos)[0, 0].double()
        rope_scores = (rope.rotate(q, q_pos) @ rope.rotate(k, k_pos).transpose(-1, -2))[0, 0]
        expected = rope_scores.double() * zeta[pair] ** (distance / 32.0)
        torch.testing.assert_close(xpos_scores, expected, rtol=1e-5, atol=1e-6)


def test_long_positions_are_finite_and_scores_depend_only_on_the_distance() -> None:
    """Per-call centring: at positions around 10^6 the rotated q and k are finite and the scores
    equal those at positions 0 .. 99 (the same n - m)."""
    enc = build_encoding("xpos", head_dim=D)
    q, k = _qk(20, 30, seed=1)
    q_pos, k_pos = torch.arange(70, 90), torch.arange(0, 30) * 3
    near = _scores(enc, q, k, q_pos, k_pos)
    for offset in (10**6, 10**6 + 12345):
        q_rot, k_rot = enc.rotate_qk(q, k, q_pos + offset, k_pos + offset)
        assert torch.isfinite(q_rot).all() and torch.isfinite(k_rot).all()
        torch.testing.assert_close(q_rot @ k_rot.transpose(-1, -2), near, atol=2e-4, rtol=1e-4)


def test_per_call_centring_needs_the_cached_keys_centre() -> None:
    """Keys rotated in an earlier call carry that call's centre, so the split scores differ
    unless the later call uses the same centre (what the KV cache keeps, `decode_center`);
    rescaling cached keys to a new centre (`rescale_keys`) gives the one-pass scores too."""
    enc = build_encoding("xpos", head_dim=D, scale_base=16.0)
    assert enc.cache == "rotated"
    q, k = _qk(20, 20, seed=2)
    pos = torch.arange(20)
    whole = _scores(enc, q, k, pos, pos)
    _, k_early = enc.rotate_qk(q[..., :10, :], k[..., :10, :], pos[:10], pos[:10])
    q_late, _ = enc.rotate_qk(q[..., 10:, :], k[..., 10:, :], pos[10:], pos[10:])
    split = q_late @ k_early.transpose(-1, -2)
    assert not torch.allclose(split, whole[..., 10:, :10], atol=1e-3)
    # the later queries with the early keys' centre (4, the middle of 0 .. 9)
    q_late, _ = enc.rotate_qk(q[..., 10:, :], k[..., 10:, :], pos[10:], pos[10:], center=4.0)
    torch.testing.assert_close(
        q_late @ k_early.transpose(-1, -2), whole[..., 10:, :10], atol=1e-5, rtol=1e-5
    )
    # or the early keys moved to the later call's centre (14)
    enc.rescale_keys(k_early, 4.0, 14.0)
    q_late, _ = enc.rotate_qk(q[..., 10:, :], k[..., 10:, :], pos[10:], pos[10:])
    torch.testing.assert_close(
        q_late @ k_early.transpose(-1, -2), whole[..., 10:, :10], atol=1e-5, rtol=1e-5
    )


def test_decode_center_stays_until_positions_outgrow_it() -> None:
    enc = build_encoding("xpos", head_dim=D, scale_base=0.5)
    far = enc.max_distance(torch.float32)
    assert enc.decode_center(None, 100, 110) == 105.0  # the prefill's own centre
    assert enc.decode_center(105.0, 100, 105 + far) == 105.0
    assert enc.decode_center(105.0, 100, 106 + far) == float((100 + 106 + far) // 2)
    fixed = build_encoding("xpos", head_dim=D, center=7)
    assert fixed.decode_center(None, 0, 10) == fixed.decode_center(3.0, 0, 10) == 7.0


def test_fixed_centre_is_kv_cache_exact() -> None:
    enc = build_encoding("xpos", head_dim=D, scale_base=16.0, center=0)
    assert enc.cache == "rotated"
    q, k = _qk(20, 20, seed=2)
    pos = torch.arange(20)
    whole = _scores(enc, q, k, pos, pos)
    _, k_early = enc.rotate_qk(q[..., :10, :], k[..., :10, :], pos[:10], pos[:10])
    q_late, _ = enc.rotate_qk(q[..., 10:, :], k[..., 10:, :], pos[10:], pos[10:])
    torch.testing.assert_close(
        q_late @ k_early.transpose(-1, -2), whole[..., 10:, :10], atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("center", [None, 0])
def test_model_decodes_with_a_kv_cache(center: int | None) -> None:
    """Through the model, both centring modes: prefill, token steps and a multi-token piece equal
    the full forward, with attention weights scaled up so that positions visibly matter."""
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=64, n_layer=2, n_head=H, d_model=H * D, encoding="xpos",
        encoding_params={"center": center, "scale_base": 8.0},
    )  # fmt: skip
    model = GPT(config).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.mul_(30)
    idx = torch.randint(0, 64, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(idx)
        cache, pieces, start = KVCache(config.n_layer), [], 0
        for size in [5] + [1] * 20 + [15]:
            pieces.append(model(idx[:, start : start + size], cache=cache))
            start += size
        nope = GPT(GPTConfig(**{**config.to_dict(), "encoding": "nope", "encoding_params": {}}))
        nope.load_state_dict(model.state_dict())
        assert not torch.allclose(nope.eval()(idx), full, atol=1e-3)  # positions do matter
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-4, rtol=1e-4)


def _xpos_model(scale_base: float) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=64, n_layer=3, n_head=H, d_model=H * D, encoding="xpos",
        encoding_params={"scale_base": scale_base},
    )  # fmt: skip
    model = GPT(config).eval()
    with torch.no_grad():  # far from the init scale: stale or mis-scaled keys would show
        for name, p in model.named_parameters():
            if p.ndim == 2 and not name.startswith("embed"):
                p.mul_(15.0)
    return model


def _decode(model: GPT, idx: torch.Tensor, positions: torch.Tensor, prefill: int):  # noqa: ANN202
    cache, pieces, centres = KVCache(model.config.n_layer), [], []
    with torch.no_grad():
        pieces.append(model(idx[:, :prefill], positions=positions[:prefill], cache=cache))
        for t in range(prefill, idx.shape[1]):
            pieces.append(model(idx[:, t : t + 1], positions=positions[t : t + 1], cache=cache))
            centres.append(cache.center)
    return torch.cat(pieces, dim=1), centres


def test_cached_decoding_equals_the_full_forward_across_centre_moves(monkeypatch) -> None:  # noqa: ANN001
    """3 layers, weights ×15, scale_base 0.5 (max_distance ≈ 32) at positions 10^4 .. 10^4 + 55:
    the cache's centre moves several times while decoding, each move rescaling the cached keys
    of every layer, and every step's logits equal the one-pass forward; without the rescale
    they do not (the test can fail)."""
    model = _xpos_model(0.5)
    assert model.encoding.max_distance() < 40
    idx = torch.randint(0, 64, (2, 56), generator=torch.Generator().manual_seed(5))
    positions = torch.arange(10_000, 10_056)
    with torch.no_grad():
        full = model(idx, positions=positions)
        config = {**model.config.to_dict(), "encoding": "nope", "encoding_params": {}}
        nope = GPT(GPTConfig(**config))
        nope.load_state_dict(model.state_dict())
        assert not torch.allclose(nope.eval()(idx), full, atol=1e-2)  # positions do matter
    cached, centres = _decode(model, idx, positions, prefill=4)
    assert len(set(centres)) >= 3  # the centre moved at least twice
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=1e-4)
    monkeypatch.setattr(type(model.encoding), "rescale_keys", lambda self, k, old, new: None)
    stale, _ = _decode(model, idx, positions, prefill=4)
    assert (stale - full).abs().max() > 1e-2


def test_generate_with_a_cache_equals_without() -> None:
    model = _xpos_model(8.0)
    prompt = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(6))
    cached = model.generate(prompt, 30, temperature=0)
    assert torch.equal(cached, model.generate(prompt, 30, temperature=0, use_cache=False))


def test_float_range_limits_are_declared_and_raise() -> None:
    """max_distance = (ln max(dtype) - ln 2^10)·scale_base / ln(1/ζ_0) from the centre (one call
    spans twice that); past it a UserError names scale_base instead of producing inf/NaN."""
    enc = build_encoding("xpos", head_dim=D)
    expected = (math.log(torch.finfo(torch.float32).max) - math.log(1024)) * 512 / math.log(3.5)
    assert enc.max_distance(torch.float32) == int(expected)
    assert enc.max_span(torch.float32) == 2 * int(expected)
    assert 60_000 < enc.max_span(torch.float32) < 70_000
    # bf16 has float32's exponent range (a hair less at the top)
    assert abs(enc.max_span(torch.bfloat16) - enc.max_span(torch.float32)) < 10
    assert enc.max_span(torch.float16) < 4_000
    enc.check_positions(10**8)  # per-call centring: no absolute limit
    q, k = _qk(2, 2)
    span = enc.max_span()
    enc.rotate_qk(q, k, torch.tensor([0, span]), torch.tensor([0, span]))  # at the limit: fine
    with pytest.raises(ValueError, match="scale_base"):
        enc.rotate_qk(q, k, torch.tensor([0, span + 4]), torch.tensor([0, span + 4]))
    with pytest.raises(ValueError, match="scale_base"):
        enc.rotate_qk(q.half(), k.half(), torch.tensor([0, 5000]), torch.tensor([0, 5000]))
    fixed = build_encoding("xpos", head_dim=D, center=1000)
    fixed.check_positions(1000 + span // 2)
    with pytest.raises(ValueError, match="center=None"):
        fixed.check_positions(1000 + span // 2 + 1)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"head_dim": 15}, "head_dim"),
        ({"head_dim": D, "scale_base": 0.0}, "scale_base"),
        ({"head_dim": D, "gamma": 0.0}, "gamma"),
        ({"head_dim": D, "center": 1.5}, "center"),
        ({"head_dim": D, "center": "middle"}, "center"),
        ({"head_dim": D, "base": 1.0}, "base"),
    ],
)
def test_invalid_values_name_the_field(params: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        build_encoding("xpos", **params)
