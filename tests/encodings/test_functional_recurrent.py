"""Input-site encodings defined at every position (functional, recurrent) and the FFN-site
wrapper (ffn): their formulas, boundedness and smoothness at 10^6, the recurrence's closed form
against step-by-step application, and the FFN term inside the model.

Registry-wide properties (a function of position, shape (s, D), causality, KV cache, training
step, 4x length) are in test_properties.py and test_model.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from extrapos.encodings import build_encoding, build_for_model
from extrapos.encodings.absolute import sinusoidal_table
from extrapos.encodings.ffn import default_d_ff
from extrapos.encodings.functional import functional_features
from extrapos.encodings.recurrent import recurrence_matrix, recurrent_closed_form
from extrapos.models.gpt import GPT, GPTConfig

D = 32
LONG = 10**6


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ---------------------------------------------------------------------------------------------
# functional


def test_functional_features_are_sinusoids_plus_log_position() -> None:
    positions = torch.cat((torch.arange(20), torch.tensor([12_345, LONG])))
    features = functional_features(positions, num_frequencies=8, base=10000.0)
    assert features.shape == (22, 17) and features.dtype == torch.float32
    torch.testing.assert_close(features[:, :16], sinusoidal_table(positions, 16, 10000.0))
    expected_log = torch.log1p(positions.double()) / math.log(10000.0)
    torch.testing.assert_close(features[:, 16].double(), expected_log, atol=1e-6, rtol=1e-6)


def test_functional_is_finite_bounded_and_smooth_at_long_positions() -> None:
    """Any real position, 10^6 included: φ is in [-1, 1] (Fourier part) and small (log part),
    and Lipschitz: moving the position by δ moves φ by at most δ per column (|dφ/dpos| <= ω <= 1
    for the sinusoids), so PE = MLP(φ) moves by O(δ) too."""
    torch.manual_seed(0)
    enc = build_encoding("functional", d_model=D)
    far = torch.tensor([LONG, 10**9])
    pe = enc.input_embedding(far)
    assert pe.shape == (2, D) and torch.isfinite(pe).all()
    base = torch.tensor([float(LONG)], dtype=torch.float64)
    phi = functional_features(base, 16, 10000.0)
    assert phi[:, :32].abs().max() <= 1 and 0 < phi[0, 32] < 2
    for delta in (1e-3, 1e-2):
        moved = functional_features(base + delta, 16, 10000.0)
        assert (moved - phi).abs().max() <= delta * 1.01 + 1e-6
        step = (enc.mlp(moved) - enc.mlp(phi)).norm() / (pe[0].norm() + 1e-12)
        assert step < 100 * delta


def test_functional_starts_at_the_token_embedding_scale() -> None:
    torch.manual_seed(0)
    pe = build_encoding("functional", d_model=128).input_embedding(torch.arange(2048))
    rms = pe.pow(2).mean().sqrt().item()
    assert 0.002 < rms < 0.05


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"num_frequencies": 0}, "num_frequencies"),
        ({"hidden": 0}, "hidden"),
        ({"base": 1.0}, "base"),
        ({"init_std": 0.0}, "init_std"),
    ],
)
def test_functional_invalid_values_name_the_field(params: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        build_encoding("functional", d_model=D, **params)


# ---------------------------------------------------------------------------------------------
# recurrent


@pytest.mark.parametrize("d_model", [D, 7])
def test_recurrent_closed_form_equals_the_step_by_step_recurrence(d_model: int) -> None:
    """PE(pos) = A·PE(pos - 1) from PE(0) = v, applied 300 times in float64, equals A^pos·v in
    closed form; also one step far out: PE(10^6 + 1) = A·PE(10^6) (with learned, randomized
    angles, decays and initial state)."""
    torch.manual_seed(1)
    enc = build_encoding("recurrent", d_model=d_model)
    with torch.no_grad():
        enc.angles.copy_(torch.rand_like(enc.angles) * 3)
        enc.log_decay.copy_(torch.empty_like(enc.log_decay).uniform_(-8, -2))
        enc.initial.copy_(torch.randn_like(enc.initial))
    a = recurrence_matrix(enc.angles, enc.decays, d_model)
    state = enc.initial.double()
    steps = [state]
    for _ in range(300):
        state = a @ state
        steps.append(state)
    closed = recurrent_closed_form(torch.arange(301), enc.angles, enc.decays, enc.initial)
    torch.testing.assert_close(closed, torch.stack(steps), atol=1e-12, rtol=1e-9)
    far = recurrent_closed_form(torch.tensor([LONG, LONG + 1]), enc.angles, enc.decays, enc.initial)
    torch.testing.assert_close(far[1], a @ far[0], atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(enc.input_embedding(torch.arange(301)), closed.float())


def test_recurrent_is_stable_at_long_positions() -> None:
    """A is a contraction: |PE(pos)| <= |PE(0)| at every position, finite at 10^6 and 10^9."""
    torch.manual_seed(2)
    enc = build_encoding("recurrent", d_model=D)
    positions = torch.cat((torch.arange(0, 5000, 7), torch.tensor([LONG, 10**9])))
    pe = enc.input_embedding(positions)
    assert torch.isfinite(pe).all()
    norm0 = enc.initial.norm()
    assert (pe.norm(dim=-1) <= norm0 * (1 + 1e-6)).all()
    assert pe[-1].norm() < pe[0].norm()  # far positions have faded


def test_recurrent_starts_as_decaying_sinusoids() -> None:
    """At init, block l is s·ρ_l^pos·(cos pos·θ_l, sin pos·θ_l) with θ_l = 10000^(-2l/D)."""
    enc = build_encoding("recurrent", d_model=D)
    positions = torch.tensor([0, 1, 5, 100, 4096])
    pe = enc.input_embedding(positions).double()
    theta = 10000.0 ** (-2 * torch.arange(D // 2, dtype=torch.float64) / D)
    decay = torch.exp(-positions.double()[:, None] * enc.decays.double()[None, :])
    angle = positions.double()[:, None] * theta[None, :]
    s = math.sqrt(2) * 0.02
    torch.testing.assert_close(pe[:, 0::2], s * decay * angle.cos(), atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(pe[:, 1::2], s * decay * angle.sin(), atol=1e-7, rtol=1e-5)
    assert enc.decays.max().item() == pytest.approx(
        1e-3
    ) and enc.decays.min().item() == pytest.approx(1e-6)


def test_recurrent_rejects_negative_positions_and_bad_values() -> None:
    enc = build_encoding("recurrent", d_model=D)
    with pytest.raises(ValueError, match="positions must be >= 0"):
        enc.input_embedding(torch.tensor([3, -1]))
    with pytest.raises(ValueError, match="min_decay"):
        build_encoding("recurrent", d_model=D, min_decay=0.0)
    with pytest.raises(ValueError, match="max_decay"):
        build_encoding("recurrent", d_model=D, min_decay=1e-2, max_decay=1e-3)
    with pytest.raises(ValueError, match="base"):
        build_encoding("recurrent", d_model=D, base=0.5)


# ---------------------------------------------------------------------------------------------
# ffn


def _ffn_config(**encoding_params: object) -> GPTConfig:
    return GPTConfig(
        vocab_size=64,
        n_layer=2,
        n_head=4,
        d_model=D,
        encoding="ffn",
        encoding_params=encoding_params,
    )


@pytest.mark.parametrize("d_model", [8, 32, 64, 100, 128, 768])
def test_ffn_default_width_is_the_models(d_model: int) -> None:
    assert default_d_ff(d_model) == GPTConfig(d_model=d_model, n_head=1).d_ff


def test_ffn_term_is_the_projected_inner_encoding() -> None:
    enc = build_for_model("ffn", {}, d_model=D, num_heads=4, head_dim=8)
    assert enc.sites == {"ffn"} and enc.inner.name == "sinusoidal"
    positions = torch.tensor([0, 5, 1000, LONG])
    term = enc.ffn_term(positions, enc.d_ff)
    assert term.shape == (4, enc.d_ff) and torch.isfinite(term).all()
    torch.testing.assert_close(term, enc.inner.input_embedding(positions) @ enc.proj.T)


def test_ffn_changes_the_ffn_output_and_trains() -> None:
    torch.manual_seed(0)
    model = GPT(_ffn_config(inner="functional", inner_params={"hidden": 16})).eval()
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    x = torch.randn(2, 16, D, generator=torch.Generator().manual_seed(2))
    mlp = model.blocks[0].mlp
    term = model.encoding.ffn_term(torch.arange(16), model.config.d_ff)
    assert not torch.allclose(mlp(x, term), mlp(x), atol=1e-4)
    nope = GPT(GPTConfig(**{**model.config.to_dict(), "encoding": "nope", "encoding_params": {}}))
    nope.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        assert not torch.allclose(model(idx), nope.eval()(idx), atol=1e-4)
    model.train()(idx).sum().backward()
    for name, p in model.encoding.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_ffn_inherits_a_learned_tables_limit() -> None:
    model = GPT(_ffn_config(inner="learned", inner_params={"max_len": 16}))
    assert model.encoding.max_len == 16
    model(torch.zeros(1, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="max_len=16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_ffn_d_ff_follows_the_model() -> None:
    """The model passes its FFN width; a term of another width is refused, naming both."""
    model = GPT(GPTConfig(**{**_ffn_config().to_dict(), "d_ff": 200}))
    assert model.encoding.d_ff == 200
    assert model(torch.zeros(1, 4, dtype=torch.long)).shape == (1, 4, 64)
    with pytest.raises(ValueError, match="d_ff=200"):
        model.encoding.ffn_term(torch.arange(4), 100)
    with pytest.raises(ValueError, match="set by the model"):
        GPT(_ffn_config(d_ff=200))


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"inner": "rope"}, "inner"),  # not an input-site encoding
        ({"inner": "ffn"}, "inner"),
        ({"inner": "sinusoidall"}, "sinusoidall"),  # unknown: the registry lists the known ones
        ({"inner_params": {"nope": 1}}, "nope"),  # the inner encoding's own validation
        ({"inner_params": [1]}, "inner_params"),
        ({"init_std": 0.0}, "init_std"),
    ],
)
def test_ffn_invalid_values_name_the_field(params: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        build_for_model("ffn", params, d_model=D, num_heads=4, head_dim=8)


def test_ffn_invalid_width_names_the_field() -> None:
    with pytest.raises(ValueError, match="d_ff"):
        build_encoding("ffn", d_model=D, num_heads=4, head_dim=8, d_ff=0)
