"""CoPE, DAPE and Transformer-XL against brute-force per-pair references: logit(i, j) written
out from each paper's formula, one pair at a time, softmax over j <= i. The blockwise `attend`
must equal it for any chunk size (one dividing s or not) and with a cache offset (queries
q_offset .. t-1 against all t keys, as in decoding). Float64 throughout, so equality is exact
up to rounding; tiny sizes (2 heads, head_dim 4, 10 tokens)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from extrapos.encodings import build_encoding, contextual, encoding_parameters
from extrapos.encodings.base import Positions
from extrapos.encodings.cope import (
    CoPE,
    contextual_positions,
    cope_logits,
    interpolate_at,
)
from extrapos.encodings.transformer_xl import txl_sinusoids
from extrapos.kernels.attention import attention, causal_sdpa

B, H, D, D_MODEL, T = 2, 2, 4, 8, 10
LAYERS = 2  # the tests use layer 1, so per-layer indexing is exercised

Logit = Callable[[int, int, int, int], float]  # (batch, head, i, j) -> score before softmax


def _build(name: str, num_layers: int = LAYERS, **params: object):
    """The encoding for a (D_MODEL, H, D) model, in float64, parameters drawn at random."""
    dims = {"d_model": D_MODEL, "num_heads": H, "head_dim": D, "num_layers": num_layers}
    accepted = encoding_parameters(name)
    enc = build_encoding(name, **{k: v for k, v in dims.items() if k in accepted}, **params)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in enc.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        if name == "dape" and enc.bias == "kerple_log":
            for base in enc.biases:
                base.r1.abs_(), base.r2.abs_()
    return enc.double()


def _qkv(t: int = T, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, H, t, D, generator=g, dtype=torch.float64) for _ in range(3))


def brute_force(logit: Logit, v: Tensor) -> Tensor:
    """out_i = Σ_{j<=i} softmax_j(logit(i, j)) v_j, one pair at a time -> (b, h, t, d)."""
    out = torch.zeros_like(v)
    for b in range(v.shape[0]):
        for h in range(v.shape[1]):
            for i in range(v.shape[2]):
                scores = torch.tensor(
                    [logit(b, h, i, j) for j in range(i + 1)], dtype=torch.float64
                )
                out[b, h, i] = scores.softmax(0).to(v.dtype) @ v[b, h, : i + 1]
    return out


def _attend(enc, q: Tensor, k: Tensor, v: Tensor, q_offset: int, positions: Tensor | None = None):
    """Blockwise attention of queries q_offset .. t-1 against all t keys."""
    positions = torch.arange(k.shape[-2]) if positions is None else positions
    return enc.attend(
        q[..., q_offset:, :], k, v, Positions(positions[q_offset:], positions, q_offset), layer=1
    )


# ---------------------------------------------------------------------------------------------
# the per-pair formulas


def cope_logit(enc, q: Tensor, k: Tensor, layer: int = 1) -> Logit:
    """(q_i·k_j + q_i·e(p_ij)) / √d, p_ij = min(Σ_{m=j..i} σ(q_i·k_m/√d), npos_max),
    e(p) = (p - ⌊p⌋)·e[⌈p⌉] + (1 - p + ⌊p⌋)·e[⌊p⌋]."""
    table = enc.embedding[layer].detach()

    def logit(b: int, h: int, i: int, j: int) -> float:
        qi = q[b, h, i]
        p = sum(torch.sigmoid(qi @ k[b, h, m] / math.sqrt(D)) for m in range(j, i + 1))
        p = min(float(p), enc.npos_max)
        lo, hi = math.floor(p), math.ceil(p)
        e = (p - lo) * table[hi] + (1 - p + lo) * table[lo]
        return float((qi @ k[b, h, j] + qi @ e) / math.sqrt(D))

    return logit


def dape_logit(enc, q: Tensor, k: Tensor, positions: Tensor, layer: int = 1) -> Logit:
    """A_ij = S_ij + B_ij + f([S_ij; B_ij]) with S = q·k/√d over all heads (f mixes them)."""
    mlp = enc.mlps[layer]

    def bias(i: int, j: int) -> Tensor:  # (h,)
        distance = float(positions[i] - positions[j])
        if enc.bias == "alibi":
            slopes = torch.tensor([2.0 ** (-8.0 * (n + 1) / H) for n in range(H)])
            return -slopes.double() * distance
        r1, r2 = enc.biases[layer].r1.detach(), enc.biases[layer].r2.detach()
        # bias tables are float32 by contract (`distance_bias`), also for DAPE's B
        return (-r1 * torch.log(1 + r2 * distance)).float().double()

    def logit(b: int, h: int, i: int, j: int) -> float:
        s = torch.stack([q[b, n, i] @ k[b, n, j] / math.sqrt(D) for n in range(H)])
        bij = bias(i, j)
        return float((s + bij + mlp(torch.cat((s, bij))).detach())[h])

    return logit


def txl_r(distance: int, dim: int = D_MODEL) -> Tensor:
    """R_k: sin(k·10000^(-2l/dim)) for l < dim/2, then the cosines."""
    angles = [distance * 10000.0 ** (-2.0 * l / dim) for l in range(dim // 2)]
    return torch.tensor([math.sin(a) for a in angles] + [math.cos(a) for a in angles]).double()


def txl_logit(enc, q: Tensor, k: Tensor, positions: Tensor, layer: int = 1) -> Logit:
    """((q_i + u)·k_j + (q_i + v)·(W_r R_{i-j})) / √d, R at distance min(i - j, clamp_len)."""
    u, v, w_r = (p[layer].detach() for p in (enc.u, enc.v, enc.w_r))

    def logit(b: int, h: int, i: int, j: int) -> float:
        distance = int(positions[i] - positions[j])
        if enc.clamp_len is not None:
            distance = min(distance, enc.clamp_len)
        r = (w_r @ txl_r(distance)).view(H, D)[h]
        qi = q[b, h, i]
        return float(((qi + u[h]) @ k[b, h, j] + (qi + v[h]) @ r) / math.sqrt(D))

    return logit


CASES: dict[str, tuple[dict, Callable]] = {
    "cope": ({"npos_max": 64}, lambda enc, q, k, pos: cope_logit(enc, q, k)),
    "cope-clamped": ({"npos_max": 3}, lambda enc, q, k, pos: cope_logit(enc, q, k)),
    "dape": ({}, dape_logit),
    "dape-kerple": ({"bias": "kerple_log", "mlp_width": 5}, dape_logit),
    "txl": ({}, txl_logit),
    "txl-clamped": ({"clamp_len": 4}, txl_logit),
}


def _case(case: str):
    params, make_logit = CASES[case]
    return _build(case.split("-")[0], **params), make_logit


@pytest.mark.parametrize("q_offset", [0, 4])
@pytest.mark.parametrize("chunk_size", [1, 3, 64])
@pytest.mark.parametrize("case", CASES)
def test_blockwise_equals_per_pair_reference(case: str, chunk_size: int, q_offset: int) -> None:
    enc, make_logit = _case(case)
    enc.chunk_size = chunk_size
    q, k, v = _qkv()
    positions = torch.arange(T)
    expected = brute_force(make_logit(enc, q, k, positions), v)[..., q_offset:, :]
    out = _attend(enc, q, k, v, q_offset)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("case", ["dape", "txl", "txl-clamped"])
def test_explicit_positions_with_gaps_equal_the_reference(case: str) -> None:
    """Positions with wide gaps (TXL then gathers the distinct distances, not a span)."""
    enc, make_logit = _case(case)
    enc.chunk_size = 4
    q, k, v = _qkv()
    positions = torch.cumsum(torch.tensor([5, 1, 40, 2, 90, 1, 1, 300, 7, 20]), 0)
    expected = brute_force(make_logit(enc, q, k, positions), v)[..., 3:, :]
    out = _attend(enc, q, k, v, 3, positions)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("case", CASES)
def test_chunks_only_see_their_own_keys(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each block is (b, h, c, t') with c <= chunk_size and t' = the keys up to its last query:
    no (b, h, s, t) tensor. A tiny element budget shrinks the blocks to one query each and
    changes nothing."""
    enc, _ = _case(case)
    enc.chunk_size = 4
    q, k, v = _qkv()
    shapes: list[tuple[int, ...]] = []
    chunk_logits = enc.chunk_logits

    def recording(*args):  # noqa: ANN002, ANN202
        logits = chunk_logits(*args)
        shapes.append(tuple(logits.shape))
        return logits

    monkeypatch.setattr(enc, "chunk_logits", recording)
    out = _attend(enc, q, k, v, 3)
    assert shapes == [(B, H, 4, 7), (B, H, 3, 10)]
    monkeypatch.setattr(contextual, "BLOCK_ELEMENTS", 1)
    shapes.clear()
    torch.testing.assert_close(_attend(enc, q, k, v, 3), out, atol=1e-12, rtol=1e-12)
    assert shapes == [(B, H, 1, 4 + n) for n in range(7)]


@pytest.mark.parametrize("case", CASES)
def test_gradients_reach_every_parameter_and_input(case: str) -> None:
    params, _ = CASES[case]
    enc = _build(case.split("-")[0], num_layers=1, **params)
    enc.chunk_size = 3
    q, k, v = (x.requires_grad_() for x in _qkv())
    out = enc.attend(q, k, v, Positions.arange(T), layer=0)
    (out * torch.randn_like(out)).sum().backward()
    for name, p in [*enc.named_parameters(), ("q", q), ("k", k), ("v", v)]:
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("case", ["cope", "dape", "txl"])
def test_bfloat16_inputs_match_the_float32_path(case: str) -> None:
    """Logits are computed in float32 from bf16 inputs; the output comes back in bf16."""
    enc = _case(case)[0].float()
    q, k, v = (x.float() for x in _qkv(t=64))
    positions = torch.arange(1000, 1064)  # far positions: the positional math stays float32
    full = enc.attend(q, k, v, Positions(positions, positions), layer=1)
    half = enc.attend(*(x.bfloat16() for x in (q, k, v)), Positions(positions, positions), layer=1)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), full, atol=3e-2, rtol=3e-2)


# ---------------------------------------------------------------------------------------------
# CoPE: positions count gates


def test_contextual_positions_count_the_gates() -> None:
    """p_ij = Σ_{m=j..i} g_im: with binary gates, the number of counted keys from j to i."""
    g = torch.Generator().manual_seed(0)
    gates = (torch.rand(T, T, generator=g) > 0.5).double().tril()
    p = contextual_positions(gates)
    for i in range(T):
        for j in range(T):
            expected = int(gates[i, j : i + 1].sum()) if j <= i else 0
            assert p[i, j] == expected
    assert torch.equal(contextual_positions(gates, npos_max=2), p.clamp(max=2))


def test_with_every_gate_one_positions_are_relative_distances() -> None:
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    ones = torch.ones(T, T).tril()
    assert torch.equal(contextual_positions(ones), torch.where(j <= i, i - j + 1, 0).float())
    assert torch.equal(contextual_positions(ones, 4), (i - j + 1).clamp(0, 4).float() * (j <= i))


def test_interpolation_is_exact_at_integers_and_linear_between() -> None:
    values = torch.tensor([[0.0, 10.0, 30.0]])
    at = torch.tensor([[0.0, 1.0, 2.0, 0.25, 1.5]])
    torch.testing.assert_close(interpolate_at(values, at), torch.tensor([[0, 10, 30, 2.5, 20.0]]))


class _AllGatesOpen(CoPE):
    """Test-only CoPE whose gates are all 1 (not registered)."""

    def gates(self, scores: Tensor) -> Tensor:
        return torch.ones_like(scores)


@pytest.mark.parametrize("npos_max", [64, 4])
def test_cope_with_every_gate_one_is_a_relative_position_embedding(npos_max: int) -> None:
    """g = 1 makes p_ij = i - j + 1 exactly: logit = (q_i·k_j + q_i·e[min(i - j + 1, npos_max)])
    / √d, a learned relative-position embedding (Shaw et al. 2018 on keys), no interpolation."""
    enc = _build("cope", npos_max=npos_max)
    enc.__class__ = _AllGatesOpen
    enc.chunk_size = 3
    q, k, v = _qkv()
    table = enc.embedding[1].detach()

    def logit(b: int, h: int, i: int, j: int) -> float:
        e = table[min(i - j + 1, npos_max)]
        return float((q[b, h, i] @ k[b, h, j] + q[b, h, i] @ e) / math.sqrt(D))

    expected = brute_force(logit, v)[..., 4:, :]
    torch.testing.assert_close(_attend(enc, q, k, v, 4), expected, atol=1e-10, rtol=1e-10)


def test_cope_starts_as_nope() -> None:
    """The table is initialized to zero: CoPE adds nothing until it learns."""
    enc = build_encoding("cope", head_dim=D, num_layers=LAYERS).double()
    q, k, v = _qkv()
    torch.testing.assert_close(_attend(enc, q, k, v, 4), causal_sdpa(q[..., 4:, :], k, v, 4))


def test_cope_ignores_token_positions() -> None:
    enc = _build("cope")
    q, k, v = _qkv()
    shuffled = torch.randperm(T) * 1000
    torch.testing.assert_close(_attend(enc, q, k, v, 4, shuffled), _attend(enc, q, k, v, 4))


# ---------------------------------------------------------------------------------------------
# DAPE and TXL reduce to their static parts


@pytest.mark.parametrize(("bias", "static"), [("alibi", "alibi"), ("kerple_log", "kerple_log")])
def test_dape_without_its_mlp_output_is_the_static_bias(bias: str, static: str) -> None:
    """f ≡ 0 (output layer zeroed): A = S + B, plain ALiBi (or KERPLE-log) attention."""
    enc = _build("dape", bias=bias)
    with torch.no_grad():
        enc.mlps[1][-1].weight.zero_(), enc.mlps[1][-1].bias.zero_()
    reference = build_encoding(static, num_heads=H).double()
    if bias == "kerple_log":
        with torch.no_grad():
            reference.r1.copy_(enc.biases[1].r1), reference.r2.copy_(enc.biases[1].r2)
    q, k, v = _qkv()
    expected = attention(
        q[..., 4:, :], k, v, bias_table=reference.distance_bias(T), q_offset=4, backend="chunked"
    )
    enc.chunk_size = 3
    # bias tables are float32 by contract (`distance_bias`), hence float32 tolerances
    torch.testing.assert_close(_attend(enc, q, k, v, 4), expected, atol=1e-6, rtol=1e-6)


def test_txl_without_position_terms_is_nope() -> None:
    """W_r = 0 and u = 0: score = q·k/√d, plain causal attention (v only multiplies W_r R)."""
    enc = _build("txl")
    with torch.no_grad():
        enc.w_r.zero_(), enc.u.zero_()
    q, k, v = _qkv()
    enc.chunk_size = 3
    expected = causal_sdpa(q[..., 4:, :], k, v, 4)
    torch.testing.assert_close(_attend(enc, q, k, v, 4), expected, atol=1e-10, rtol=1e-10)


def test_txl_sinusoids_follow_the_reference_layout() -> None:
    """R_k = [sin(k·ω_0..); cos(k·ω_0..)], ω_l = 10000^(-2l/D); R_0 = [0…0, 1…1]."""
    distances = torch.tensor([0, 1, 7, 10**6])
    r = txl_sinusoids(distances, D_MODEL)
    assert r.shape == (4, D_MODEL) and r.dtype == torch.float32
    for row, distance in zip(r, distances.tolist(), strict=True):
        torch.testing.assert_close(row, txl_r(distance).float(), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------
# validation


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("cope", {"head_dim": 4, "npos_max": 0}, "npos_max"),
        ("cope", {"head_dim": 0}, "head_dim"),
        ("cope", {"head_dim": 4, "chunk_size": 0}, "chunk_size"),
        ("cope", {"head_dim": 4, "num_layers": 0}, "num_layers"),
        ("dape", {"num_heads": 2, "bias": "rope"}, "bias"),  # not a distance-bias encoding
        ("dape", {"num_heads": 2, "mlp_width": 0}, "mlp_width"),
        ("dape", {"num_heads": 0}, "num_heads"),
        ("txl", {"d_model": 7, "num_heads": 1, "head_dim": 7}, "d_model"),
        ("txl", {"d_model": 8, "num_heads": 2, "head_dim": 4, "clamp_len": 0}, "clamp_len"),
        ("txl", {"d_model": 8, "num_heads": 2, "head_dim": 4, "chunk_size": 2.5}, "chunk_size"),
    ],
)
def test_invalid_values_name_the_field(name: str, params: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        build_encoding(name, **params)


@pytest.mark.parametrize("bias", ["t5", "kerple_power", "sandwich"])
def test_dape_composes_over_any_registered_bias_encoding(bias: str) -> None:
    """DAPE's B is the named registered encoding (one per layer, its own parameters): with f ≡ 0
    it is exactly that encoding's chunked bias attention."""
    enc = _build("dape", bias=bias)
    assert [type(b).name for b in enc.biases] == [bias] * LAYERS
    with torch.no_grad():
        enc.mlps[1][-1].weight.zero_(), enc.mlps[1][-1].bias.zero_()
    reference = build_encoding(bias, num_heads=H).double()
    reference.load_state_dict(enc.biases[1].state_dict())
    q, k, v = _qkv()
    expected = attention(
        q[..., 4:, :], k, v, bias_table=reference.distance_bias(T), q_offset=4, backend="chunked"
    )
    enc.chunk_size = 3
    torch.testing.assert_close(_attend(enc, q, k, v, 4), expected, atol=1e-6, rtol=1e-6)


def test_dape_bias_params_reach_the_bias_encoding_and_old_checkpoints_load() -> None:
    """bias_params build the base encoding; a state dict from before the composition (KERPLE's
    r1, r2 as (L, h) tensors of DAPE itself) loads into the per-layer encodings."""
    enc = build_encoding(
        "dape", num_heads=H, num_layers=2, bias="t5", bias_params={"num_buckets": 8}
    )
    assert all(b.num_buckets == 8 for b in enc.biases)
    kerple = build_encoding("dape", num_heads=H, num_layers=2, bias="kerple_log")
    old = {k: v for k, v in kerple.state_dict().items() if not k.startswith("biases.")}
    old["r1"], old["r2"] = torch.rand(2, H) + 0.5, torch.rand(2, H) + 0.5
    kerple.load_state_dict(dict(old))
    for layer in range(2):
        assert torch.equal(kerple.biases[layer].r1.detach(), old["r1"][layer])
        assert torch.equal(kerple.biases[layer].r2.detach(), old["r2"][layer])


def _dape_logits_einsum(enc, q: Tensor, k: Tensor, positions: Tensor, layer: int) -> Tensor:  # noqa: ANN001
    """DAPE's chunk logits as written before session 3 (einsums over permuted pairs)."""
    h = enc.num_heads
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    bias = enc.static_bias(positions[:, None] - positions[None, :], layer, q.dtype)
    first, act, last = enc.mlps[layer]
    w1, b1 = first.weight.to(q.dtype), first.bias.to(q.dtype)
    hidden = torch.einsum("bhct,wh->bctw", scores, w1[:, :h])
    hidden = act(hidden + (torch.einsum("hct,wh->ctw", bias, w1[:, h:]) + b1))
    adaptive = torch.einsum("bctw,hw->bhct", hidden, last.weight.to(q.dtype))
    return scores + bias + adaptive + last.bias.to(q.dtype)[:, None, None]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dape_matmul_layout_equals_the_einsum_one(dtype: torch.dtype) -> None:
    """The MLP across heads as plain matmuls (heads leading) gives the einsum version's
    logits and gradients (float64: to 1e-12; float32: summation order only)."""
    torch.manual_seed(0)
    enc = build_encoding("dape", num_heads=4, num_layers=1, bias="kerple_log").to(dtype)
    gen = torch.Generator().manual_seed(1)
    q, k = (torch.randn(3, 4, 12, 8, generator=gen, dtype=dtype) * 3 for _ in range(2))
    positions = torch.arange(12)
    visible = torch.ones(12, 12, dtype=torch.bool).tril()
    # float32: parameter gradients sum ~400 pairs of magnitude ~10, in another order
    tol = {"atol": 1e-12, "rtol": 1e-12} if dtype == torch.float64 else {"atol": 1e-3, "rtol": 1e-4}

    def run(new: bool) -> list[Tensor]:
        enc.zero_grad()
        qq, kk = q.clone().requires_grad_(), k.clone().requires_grad_()
        if new:
            out = enc.chunk_logits(qq, kk, positions, positions, visible, 0)
        else:
            out = _dape_logits_einsum(enc, qq, kk, positions, 0)
        weights = torch.linspace(-1, 1, out.numel(), dtype=dtype).view_as(out)
        (out * weights).sum().backward()
        return [out.detach(), qq.grad, kk.grad, *(p.grad.clone() for p in enc.parameters())]

    for new, old in zip(run(True), run(False), strict=True):
        torch.testing.assert_close(new, old, **tol)


def test_contextual_positions_backward_is_bitwise_the_autograd_one() -> None:
    """The reverse cumsum's own backward (a plain cumsum) equals, bit for bit, what autograd
    derived through flip·cumsum·flip, forward and backward, in float32."""
    gen = torch.Generator().manual_seed(2)
    gates = torch.rand(2, 3, 7, 300, generator=gen)
    upstream = torch.randn(2, 3, 7, 300, generator=gen)
    new_in, old_in = gates.clone().requires_grad_(), gates.clone().requires_grad_()
    new = contextual_positions(new_in)
    old = old_in.flip(-1).cumsum(dim=-1).flip(-1)
    assert torch.equal(new, old)
    new.backward(upstream)
    old.backward(upstream)
    assert torch.equal(new_in.grad, old_in.grad)


def test_interpolation_by_lerp_equals_the_formula() -> None:
    """e(p) by `torch.lerp` = (p - ⌊p⌋)·v[⌈p⌉] + (1 - p + ⌊p⌋)·v[⌊p⌋] (the formula as written
    before), values and gradients, float64 to 1e-12; integer p included (⌊p⌋ = ⌈p⌉)."""
    gen = torch.Generator().manual_seed(4)
    values = torch.randn(2, 5, 9, generator=gen, dtype=torch.float64)
    positions = torch.rand(2, 5, 11, generator=gen, dtype=torch.float64) * 8
    positions[..., :3] = positions[..., :3].round()

    def formula(v: Tensor, p: Tensor) -> Tensor:
        floor = p.detach().floor()
        w = p - floor
        return v.gather(-1, p.detach().ceil().long()) * w + v.gather(-1, floor.long()) * (1 - w)

    results = []
    for fn in (interpolate_at, formula):
        v, p = values.clone().requires_grad_(), positions.clone().requires_grad_()
        out = fn(v, p)
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out))
        results.append((out.detach(), v.grad, p.grad))
    for new, old in zip(*results, strict=True):
        torch.testing.assert_close(new, old, atol=1e-12, rtol=1e-12)


def _txl_logits_gather(enc, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor, visible, layer):  # noqa: ANN001
    """Transformer-XL's chunk logits as written before session 3b: (q + v)·W_r R for the span
    of distances, gathered by distance (the relative shift by indexing)."""
    b, h, c, d = q.shape
    u, v = enc.u[layer].to(q.dtype), enc.v[layer].to(q.dtype)
    content = (q + u[:, None, :]) @ k.transpose(-1, -2)
    distances = (q_pos[:, None] - k_pos[None, :]).clamp(min=0)
    if enc.clamp_len is not None:
        distances = distances.clamp(max=enc.clamp_len)
    low, high = int(distances.min()), int(distances.max())
    needed = torch.arange(low, high + 1)
    r = txl_sinusoids(needed, enc.d_model).to(q.dtype)
    r_k = (r @ enc.w_r[layer].to(q.dtype).T).view(-1, h, d).permute(1, 2, 0)
    position = ((q + v[:, None, :]) @ r_k).gather(-1, (distances - low).expand(b, h, c, -1))
    return (content + position) * d**-0.5


@pytest.mark.parametrize("clamp_len", [None, 5])
@pytest.mark.parametrize("chunk_size", [1, 3, 7, 64])
@pytest.mark.parametrize("q_offset", [0, 6])
def test_txl_strided_shift_equals_the_gather(clamp_len, chunk_size: int, q_offset: int) -> None:  # noqa: ANN001
    """The relative shift as a strided view of one table per call equals the per-chunk gather:
    outputs and every gradient (q, k, v, u, v, W_r), float64 to 1e-12; consecutive positions
    that do not start at 0 (so the distances' frame is not the sequence index's)."""
    enc = _build("txl", clamp_len=clamp_len)
    enc.chunk_size = chunk_size
    gen = torch.Generator().manual_seed(5)
    t = 23
    q, k, v = (torch.randn(B, H, t, D, generator=gen, dtype=torch.float64) * 2 for _ in range(3))
    positions = torch.arange(t) + 40

    def run(old: bool) -> list[Tensor]:
        enc.zero_grad()
        qq, kk, vv = (x.clone().requires_grad_() for x in (q, k, v))
        if old:
            enc.chunk_logits = lambda *args: _txl_logits_gather(enc, *args)
        try:
            out = _attend(enc, qq, kk, vv, q_offset, positions)
        finally:
            enc.__dict__.pop("chunk_logits", None)
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out))
        return [
            out.detach(),
            qq.grad,
            kk.grad,
            vv.grad,
            *(p.grad.clone() for p in enc.parameters()),
        ]

    for new, old in zip(run(False), run(True), strict=True):
        torch.testing.assert_close(new, old, atol=1e-12, rtol=1e-12)


def test_cope_scale_on_q_equals_scaling_the_logits() -> None:
    """CoPE with 1/√d folded into q gives the logits and gradients of the formula as written
    before session 3b, ((q·k) + interp(q·e, p(σ(q·k/√d)))) / √d: float64 to 1e-12, with a
    clamp that binds (npos_max 3) and large scores (gates near 0 and 1)."""
    torch.manual_seed(0)
    enc = build_encoding("cope", head_dim=8, num_layers=1, npos_max=3).double()
    with torch.no_grad():
        enc.embedding.normal_()
    gen = torch.Generator().manual_seed(6)
    q, k = (torch.randn(2, 3, 9, 8, generator=gen, dtype=torch.float64) * 2 for _ in range(2))
    positions = torch.arange(9)
    visible = torch.ones(9, 9, dtype=torch.bool).tril()

    def old(qq: Tensor, kk: Tensor) -> Tensor:
        scale = 8**-0.5
        scores = qq @ kk.transpose(-1, -2)
        gates = torch.sigmoid(scores * scale).masked_fill(~visible, 0.0)
        p = contextual_positions(gates, 3)
        return (scores + interpolate_at(qq @ enc.embedding[0].T, p)) * scale

    def run(new: bool) -> list[Tensor]:
        enc.zero_grad()
        qq, kk = q.clone().requires_grad_(), k.clone().requires_grad_()
        out = enc.chunk_logits(qq, kk, positions, positions, visible, 0) if new else old(qq, kk)
        out = out.masked_fill(~visible, 0.0)
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out))
        return [out.detach(), qq.grad, kk.grad, enc.embedding.grad.clone()]

    for new, old_ in zip(run(True), run(False), strict=True):
        torch.testing.assert_close(new, old_, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("npos_max", [64, 5])
def test_cope_logits_node_is_bitwise_the_autograd_composition(npos_max: int) -> None:
    """`cope_logits` (one autograd node) = S + interpolate_at(q·e, contextual_positions(σ(S)
    masked, npos_max)) differentiated by autograd: the logits and the gradients of S and of the
    table bit for bit in float32 (zeros up to sign), with inputs that reach every branch —
    saturated gates (σ = 1 exactly) and gates of exactly 1/2 (integer positions, where ⌈p⌉ =
    ⌊p⌋, whose gradient must be 0 even where σ' is not), a clamp that binds
    (npos_max 5) or not (64), a causal mask, and a table with distinct rows."""
    gen = torch.Generator().manual_seed(11)
    c, t, n = 9, 40, npos_max + 1
    scores = torch.randn(2, 3, c, t, generator=gen) * 3
    scores[0, 0, :, ::3] = 30.0  # σ(30) == 1 in float32
    scores[1, 2] = 40.0  # a whole head of open gates: p_ij = i - j + 1, integers
    scores[1, 1] = 0.0  # σ(0) = 0.5 exactly: integer p (where ⌈p⌉ = ⌊p⌋) beside fractional
    table = torch.randn(2, 3, c, n, generator=gen)
    visible = torch.arange(t)[None, :] <= torch.arange(t - c, t)[:, None]
    upstream = torch.randn(2, 3, c, t, generator=gen).masked_fill(~visible, 0.0)

    def composed(s: Tensor, v: Tensor) -> Tensor:
        gates = torch.sigmoid(s).masked_fill(~visible, 0.0)
        return s + interpolate_at(v, contextual_positions(gates, npos_max))

    results = []
    for fn in (lambda s, v: cope_logits(s, v, visible, npos_max), composed):
        s, v = scores.clone().requires_grad_(), table.clone().requires_grad_()
        out = fn(s, v)
        out.backward(upstream)
        results.append((out.masked_fill(~visible, 0.0).detach(), s.grad, v.grad))
    assert scores[1, 2].sigmoid().eq(1).all()  # the integer-position branches are exercised
    for new, old in zip(*results, strict=True):
        assert torch.equal(new, old)


def test_cope_logits_node_passes_gradcheck() -> None:
    """The hand-written backward of `cope_logits` against finite differences (float64), away
    from the kinks (no integer positions: fractional gates, a clamp that binds)."""
    gen = torch.Generator().manual_seed(12)
    scores = torch.randn(1, 2, 4, 9, generator=gen, dtype=torch.float64).requires_grad_()
    table = torch.randn(1, 2, 4, 4, generator=gen, dtype=torch.float64).requires_grad_()
    visible = torch.arange(9)[None, :] <= torch.arange(5, 9)[:, None]
    assert torch.autograd.gradcheck(lambda s, v: cope_logits(s, v, visible, 3), (scores, table))


def test_the_hand_written_backwards_refuse_double_backward() -> None:
    """`cope_logits` and `masked_softmax` have hand-written backwards that autograd cannot
    differentiate again: asking for a second derivative raises instead of being silently
    wrong."""
    from extrapos.kernels.chunks import masked_softmax

    visible = torch.ones(3, 3, dtype=torch.bool).tril()
    for fn in (
        lambda s: cope_logits(s, torch.randn(1, 1, 3, 4), visible, 3),
        lambda s: masked_softmax(s, visible),
    ):
        s = torch.randn(1, 1, 3, 3, dtype=torch.float32, requires_grad=True)
        (grad,) = torch.autograd.grad(fn(s).square().sum(), s, create_graph=True)
        with pytest.raises(RuntimeError):
            grad.sum().backward()
