"""CoPE's fused CPU kernels (extrapos.kernels.cope_native) give the ATen composition's numbers
bit for bit — logits, the scores' gradient and the table's — on inputs that reach every
branch, through a whole model's training gradients, and fall back cleanly where they cannot be
built."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from extrapos.encodings.cope import cope_logits
from extrapos.kernels import cope_native
from extrapos.models.gpt import GPT, GPTConfig


def _can_build() -> bool:
    from torch.utils import cpp_extension

    compiler = shutil.which("c++") is not None or shutil.which("g++") is not None
    return compiler and cpp_extension.is_ninja_available()


needs_compiler = pytest.mark.skipif(
    not _can_build(),
    reason="no C++ compiler or no ninja here: the fused kernels cannot be built (CoPE uses its "
    "ATen path)",
)


@pytest.fixture
def native(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    monkeypatch.setenv("EXTRAPOS_NATIVE", "1")
    module = cope_native.load()
    assert module is not None, "the fused CoPE kernels failed to build (see the warning)"
    return module


def _both_paths(
    monkeypatch: pytest.MonkeyPatch,
    scores: Tensor,
    table: Tensor,
    visible: Tensor,
    npos_max: int,
    upstream: Tensor,
) -> list[tuple[Tensor, ...]]:
    out = []
    for flag in ("1", "0"):
        monkeypatch.setenv("EXTRAPOS_NATIVE", flag)
        s, v = scores.clone().requires_grad_(), table.clone().requires_grad_()
        logits = cope_logits(s * 1.0, v * 1.0, visible, npos_max, overwrite_scores=flag == "1")
        logits.backward(upstream)
        out.append((logits.detach(), s.grad, v.grad))
    return out


@needs_compiler
@pytest.mark.parametrize(
    ("shape", "npos_max", "scale"),
    [
        ((1, 1, 1, 1), 1, 1.0),  # one query, one key
        ((2, 3, 5, 7), 3, 3.0),  # the clamp binds for most pairs
        ((2, 2, 37, 301), 16, 20.0),  # saturated gates: σ = 0 or 1 exactly, integer positions
        ((4, 4, 64, 512), 64, 1.0),  # the bench model's chunk
        ((1, 2, 16, 1000), 64, 3.0),  # t' > 4096 bytes per row, odd sizes
    ],
)
def test_fused_kernels_are_bitwise_the_aten_composition(
    native, monkeypatch, shape, npos_max, scale
) -> None:
    b, h, c, t = shape
    gen = torch.Generator().manual_seed(7)
    scores = torch.randn(b, h, c, t, generator=gen) * scale
    scores[..., ::5] = 0.0  # σ(0) = 1/2 exactly: integer positions beside fractional ones
    table = torch.randn(b, h, c, npos_max + 1, generator=gen)
    visible = torch.arange(t)[None, :] <= torch.arange(t - c, t)[:, None]
    upstream = torch.randn(b, h, c, t, generator=gen).masked_fill(~visible, 0.0)
    fused, aten = _both_paths(monkeypatch, scores, table, visible, npos_max, upstream)
    for a, b_ in zip(fused, aten, strict=True):
        assert torch.equal(a, b_)
    assert fused[1].abs().sum() > 0 and fused[2].abs().sum() > 0  # gradients that could differ


@needs_compiler
def test_a_cope_models_training_gradients_are_the_same_with_the_fused_kernels(
    native, monkeypatch
) -> None:
    """Two layers, trained-looking weights (random CoPE tables, sharpened attention): the loss
    and every parameter's gradient bit for bit with and without the kernels; the scores'
    buffer the kernels overwrite is the model's own temporary."""
    idx = torch.randint(0, 64, (2, 150), generator=torch.Generator().manual_seed(3))
    grads = []
    for flag in ("1", "0"):
        monkeypatch.setenv("EXTRAPOS_NATIVE", flag)
        torch.manual_seed(0)
        config = GPTConfig(vocab_size=64, n_layer=2, n_head=2, d_model=32, encoding="cope")
        model = GPT(config)
        with torch.no_grad():
            model.encoding.embedding.normal_(0, 1.0)
            for block in model.blocks:
                block.attn.qkv.weight.mul_(6.0)
        loss = F.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
        loss.backward()
        grads.append([loss.detach()] + [p.grad for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        assert torch.equal(a, b)


@needs_compiler
def test_the_callers_scores_stay_untouched_unless_it_allows(native) -> None:
    scores = torch.randn(1, 2, 4, 9)
    kept = scores.clone()
    visible = torch.ones(4, 9, dtype=torch.bool)
    cope_logits(scores, torch.randn(1, 2, 4, 4), visible, 3)
    assert torch.equal(scores, kept)
    out = cope_logits(scores, torch.randn(1, 2, 4, 4), visible, 3, overwrite_scores=True)
    assert out.data_ptr() == scores.data_ptr()  # the allowed overwrite: no new buffer


def test_environment_switch_and_a_failed_build_fall_back(monkeypatch) -> None:
    """EXTRAPOS_NATIVE=0 skips the kernels; a build that fails warns once, naming the fix,
    and CoPE runs (its ATen path)."""
    monkeypatch.setenv("EXTRAPOS_NATIVE", "0")
    assert cope_native.load() is None
    monkeypatch.setenv("EXTRAPOS_NATIVE", "1")
    monkeypatch.setattr(cope_native, "_loaded", {})
    from torch.utils import cpp_extension

    def broken(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(cpp_extension, "load", broken)
    with pytest.warns(UserWarning, match="could not be built.*Ninja is required.*EXTRAPOS_NATIVE"):
        assert cope_native.load() is None
    assert cope_native.load() is None  # remembered: no second build, no second warning
    visible = torch.ones(3, 5, dtype=torch.bool).tril(2)
    out = cope_logits(torch.randn(1, 1, 3, 5), torch.randn(1, 1, 3, 4), visible, 3)
    assert out.isfinite().all()


def test_other_dtypes_take_the_aten_path(monkeypatch) -> None:
    from extrapos.encodings import cope

    monkeypatch.setattr(cope_native, "load", lambda: pytest.fail("float64 must not load them"))
    scores, table = torch.zeros(1, 1, 1, 1, dtype=torch.float64), torch.zeros(1, 1, 1, 2)
    visible = torch.ones(1, 1, dtype=torch.bool)
    assert cope._native_kernels(scores, table, visible, 1) is None


@needs_compiler
def test_inputs_outside_the_kernels_contract_take_the_aten_path(native, monkeypatch) -> None:
    """A mask broadcast to 4-D, or a table narrower than npos_max + 1, never reach the kernels
    (which would index past the table): the first gives the 2-D mask's numbers, the second
    ATen's index error; NaN scores give NaN logits, not a crash."""
    from extrapos.encodings import cope

    gen = torch.Generator().manual_seed(5)
    scores, table = torch.randn(1, 2, 4, 9, generator=gen), torch.randn(1, 2, 4, 4, generator=gen)
    visible = torch.arange(9)[None, :] <= torch.arange(5, 9)[:, None]
    assert cope._native_kernels(scores, table, visible[None, None], 3) is None
    assert cope._native_kernels(scores, table, visible, 4) is None
    assert cope._native_kernels(scores, table, visible, float("nan")) is None
    assert cope._native_kernels(scores, table, visible, 3) is native
    broadcast = cope_logits(scores, table, visible[None, None], 3)
    assert torch.equal(broadcast, cope_logits(scores, table, visible, 3))
    with pytest.raises(RuntimeError, match="index"):
        cope_logits(scores, table, visible, 4)  # positions up to 4 in a 4-row table
    nan_scores = scores.clone()
    nan_scores[0, 1, 2, 3] = float("nan")
    out = cope_logits(nan_scores, table, visible, 3)
    assert out[0, 1, 2, :4].isnan().all() and out[0, 0].isfinite().all()
