"""Per-layer hybrids: layer ℓ attends with layers[ℓ mod len(layers)]."""

from __future__ import annotations

import pytest
import torch

from extrapos.encodings.base import Positions
from extrapos.models.gpt import GPT, GPTConfig, KVCache


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
    torch.testing.assert_close(enc.attend(q, k, v, Positions(pos, pos), layer=3), nope)
    torch.testing.assert_close(enc.attend(q, k, v, Positions(pos, pos), layer=0), rope)
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


def test_a_decoding_step_rotates_only_the_new_key_in_rope_layers() -> None:
    """A hybrid's RoPE layers cache rotated keys, as a RoPE model does: a decoding step
    rotates one key per layer, not the whole cache (raw keys re-rotated every step cost
    O(t) per layer); its xPos layers, whose keys need the model's scaling centre, still get
    all raw keys."""
    m = model("hybrid", layers=["rope", "xpos"])
    seen: dict[str, list[int]] = {"rope": [], "xpos": []}
    for name, enc in m.encoding.inner.items():
        original = enc.rotate_qk

        def spy(q, k, *args, _name=name, _original=original, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            seen[_name].append(k.shape[-2])
            return _original(q, k, *args, **kwargs)

        enc.rotate_qk = spy
    idx = torch.randint(0, 64, (1, 12))
    cache = KVCache(m.config.n_layer)
    with torch.no_grad():
        m(idx[:, :8], cache=cache)
        for name in seen:
            seen[name].clear()
        m(idx[:, 8:9], cache=cache)
    assert seen["rope"] == [1, 1]  # layers 0 and 2: the new key only
    assert seen["xpos"] == [9, 9]  # layers 1 and 3: every raw key


@pytest.mark.parametrize(
    "layers", [["rope", "rope", "rope", "nope"], ["rope", "alibi", "xpos", "t5"]]
)
def test_hybrid_kv_cache_decoding_equals_the_full_forward(layers: list[str]) -> None:
    """Prefill, token-by-token steps and a multi-token piece through one cache give the
    one-pass logits, with rotated-key layers, bias layers and xPos's raw-key layers mixed;
    weights scaled up so that an error in any layer would show (init-scale models hide it)."""
    m = model("hybrid", layers=layers)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(4.0)
    idx = torch.randint(0, 64, (2, 40), generator=torch.Generator().manual_seed(3))
    cache = KVCache(m.config.n_layer)
    with torch.no_grad():
        full = m(idx)
        pieces = [m(idx[:, :9], cache=cache)]
        pieces += [m(idx[:, t : t + 1], cache=cache) for t in range(9, 30)]
        pieces.append(m(idx[:, 30:], cache=cache))
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(full[:, -1], full[:, -2], atol=1e-2)  # the logits are not flat
