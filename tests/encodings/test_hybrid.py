"""Per-layer hybrids: layer ℓ attends with layers[ℓ mod len(layers)]."""

from __future__ import annotations

import pytest
import torch

from extrapos.models.gpt import GPT, GPTConfig


def model(encoding: str, **params) -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=64, n_layer=4, n_head=2, d_model=16, encoding=encoding,
                    encoding_params=params)  # fmt: skip
    return GPT(cfg).eval()


@pytest.mark.parametrize("inner", ["rope", "alibi", "nope", "t5"])
def test_a_one_encoding_hybrid_is_that_encoding(inner: str) -> None:
    hybrid, plain = model("hybrid", layers=[inner]), model(inner)
    plain.load_state_dict(
        {k.replace(f"inner.{inner}.", ""): v for k, v in hybrid.state_dict().items()}
    )
    x = torch.randint(0, 64, (2, 30))
    torch.testing.assert_close(hybrid(x), plain(x), atol=1e-5, rtol=1e-5)


def test_layers_cycle_and_share_one_module_per_name() -> None:
    enc = model("hybrid", layers=["rope", "rope", "nope"]).encoding
    assert [enc.layer_encoding(i).name for i in range(4)] == ["rope", "rope", "nope", "rope"]
    assert enc.layer_encoding(0) is enc.layer_encoding(1)


def test_each_layer_attends_with_its_own_encoding() -> None:
    """Default RNoPE: layers 0-2 rotate q/k (RoPE), layer 3 attends without positions."""
    enc = model("hybrid").encoding
    q, k, v = (torch.randn(1, 2, 12, 8) for _ in range(3))
    pos = torch.arange(12)
    nope = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    qr, kr = enc.layer_encoding(0).rotate_qk(q, k, pos, pos)
    rope = torch.nn.functional.scaled_dot_product_attention(qr, kr, v, is_causal=True)
    torch.testing.assert_close(enc.attend(q, k, v, pos, pos, 0, layer=3), nope)
    torch.testing.assert_close(enc.attend(q, k, v, pos, pos, 0, layer=0), rope)
    assert not torch.allclose(nope, rope, atol=1e-3)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"layers": []}, "layers must list encodings"),
        ({"layers": ["rope", "sinusoidal"]}, "'sinusoidal' acts at the \\['input'\\] site"),
        ({"layers": ["rope"], "params": {"alibi": {}}}, "which no layer uses"),
        ({"layers": ["nosuch"]}, "unknown encoding 'nosuch'"),
    ],
)
def test_bad_hybrids_are_refused(params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        model("hybrid", **params)
