"""The GPT with every registered encoding: config validation, training step, length, causality,
KV-cache and position parity, generation, an FFN-site encoding, tied embeddings.

Tiny model (d_model 32, 2 layers, 4 heads, vocab 64), fixed seeds.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from extrapos.core.errors import UserError
from extrapos.encodings import PositionalEncoding, encoding_parameters, list_encodings
from extrapos.encodings.absolute import sinusoidal_table
from extrapos.models.gpt import GPT, GPTConfig, KVCache, sample_next

VOCAB, N_LAYER, N_HEAD, D_MODEL = 64, 2, 4, 32
TRAIN_LEN = 32
ENCODINGS = list_encodings()


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny tensors: intra-op threads only add overhead, and stall when other jobs hold the cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _config(encoding: str = "rope", **overrides: Any) -> GPTConfig:
    fields = {"vocab_size": VOCAB, "n_layer": N_LAYER, "n_head": N_HEAD, "d_model": D_MODEL}
    return GPTConfig(**{**fields, "encoding": encoding, **overrides})


def _model(encoding: str = "rope", **encoding_params: Any) -> GPT:
    """A seeded tiny GPT in eval mode. The encoding's own parameters are randomized (T5 starts at
    zero bias, which would make bias-related checks hold vacuously)."""
    torch.manual_seed(0)
    model = GPT(_config(encoding, encoding_params=encoding_params))
    with torch.no_grad():
        for p in model.encoding.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return model.eval()


def _sharpen(model: GPT, factor: float = 8.0) -> GPT:
    """Scale every q/k/v projection: at the 0.02-std init attention is nearly uniform, so
    stale or misplaced positions would barely move the logits; sharpened, they show."""
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.mul_(factor)
    return model


def _tokens(b: int, s: int, seed: int = 1) -> Tensor:
    return torch.randint(0, VOCAB, (b, s), generator=torch.Generator().manual_seed(seed))


def _relative(model: GPT) -> bool:
    """Uses positions only through differences (q/k rotation, distance bias) or not at all."""
    return model.encoding.shift_invariant


#: KV-cache parity cases: every registered encoding that supports it, plus RoPE variants.
ROPE_VARIANTS: dict[str, dict[str, Any]] = {
    "rope-partial": {"rotary_dim": 4},
    "rope-yarn": {
        "scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}
    },
}
KV_CASES = [
    pytest.param(name, {}, id=name) for name in ENCODINGS if _model(name).encoding.cache != "none"
] + [pytest.param("rope", params, id=case) for case, params in ROPE_VARIANTS.items()]


# ---------------------------------------------------------------------------------------------
# config


def test_d_model_must_be_divisible_by_n_head() -> None:
    with pytest.raises(ValueError, match="d_model=30.*n_head=4"):
        _config(d_model=30)


def test_unknown_encoding_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="alibee") as info:
        _config("alibee")
    for name in ENCODINGS:
        assert name in str(info.value)


@pytest.mark.parametrize("field", ["vocab_size", "n_layer", "n_head", "d_model", "d_ff"])
@pytest.mark.parametrize("value", [0, -4])
def test_non_positive_sizes_are_rejected_by_name(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=field):
        _config(**{field: value})


@pytest.mark.parametrize("value", [0.0, -1e-5])
def test_non_positive_norm_eps_is_rejected(value: float) -> None:
    with pytest.raises(ValueError, match="norm_eps"):
        _config(norm_eps=value)


def test_non_integer_size_is_rejected() -> None:
    with pytest.raises(ValueError, match="n_layer"):
        _config(n_layer=2.5)


def test_from_dict_round_trips_and_rejects_unknown_fields() -> None:
    config = _config("t5", encoding_params={"num_buckets": 8, "max_distance": 20})
    assert GPTConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="n_heads") as info:
        GPTConfig.from_dict({**config.to_dict(), "n_heads": 4})
    assert "n_head" in str(info.value).split("known:")[1]


def test_bad_encoding_params_fail_when_the_model_is_built() -> None:
    with pytest.raises(ValueError, match="rotary_dim"):
        GPT(_config("rope", encoding_params={"rotary_dim": 3}))
    with pytest.raises(ValueError, match="num_heads"):  # set by the model's shape, not the user
        GPT(_config("alibi", encoding_params={"num_heads": 8}))


def test_positions_of_the_wrong_shape_are_rejected() -> None:
    with pytest.raises(ValueError, match="positions"):
        _model("rope")(_tokens(1, 8), positions=torch.arange(9))


# ---------------------------------------------------------------------------------------------
# every encoding: training step, length, causality


@pytest.mark.parametrize("name", ENCODINGS)
def test_forward_backward_at_train_length(name: str) -> None:
    """A training step gives a finite loss near ln V (fresh model) and a finite, non-zero gradient
    for every parameter."""
    model = _model(name).train()
    idx = _tokens(2, TRAIN_LEN + 1)
    logits = model(idx[:, :-1])
    assert logits.shape == (2, TRAIN_LEN, VOCAB) and logits.dtype == torch.float32
    loss = F.cross_entropy(logits.reshape(-1, VOCAB), idx[:, 1:].reshape(-1))
    assert torch.isfinite(loss)
    assert abs(loss.item() - math.log(VOCAB)) < 0.5
    loss.backward()
    for param_name, p in model.named_parameters():
        assert p.grad is not None, f"{param_name} got no gradient"
        assert torch.isfinite(p.grad).all(), param_name
        assert p.grad.abs().sum() > 0, f"{param_name} has an all-zero gradient"


@pytest.mark.parametrize("name", ENCODINGS)
def test_forward_at_four_times_the_train_length(name: str) -> None:
    """No hidden ceilings: 4x the train length runs, except an encoding with a declared max_len
    built for the train length, which raises a ValueError naming that limit."""
    params = {"max_len": TRAIN_LEN} if "max_len" in encoding_parameters(name) else {}
    model = _model(name, **params)
    idx = _tokens(1, 4 * TRAIN_LEN)
    with torch.no_grad():
        assert torch.isfinite(model(idx[:, :TRAIN_LEN])).all()
        if model.encoding.max_len is not None:
            with pytest.raises(ValueError, match=f"max_len={TRAIN_LEN}"):
                model(idx)
        else:
            logits = model(idx)
            assert logits.shape == (1, 4 * TRAIN_LEN, VOCAB)
            assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ENCODINGS)
def test_every_encoding_is_causal(name: str) -> None:
    """Changing the tokens after position p leaves the logits at positions <= p unchanged."""
    model = _model(name)
    s = 24
    idx = _tokens(2, s)
    with torch.no_grad():
        logits = model(idx)
        for p in (0, 9, 22):
            changed = idx.clone()
            changed[:, p + 1 :] = (idx[:, p + 1 :] + 1 + torch.arange(s - p - 1)) % VOCAB
            new = model(changed)
            torch.testing.assert_close(new[:, : p + 1], logits[:, : p + 1], atol=1e-6, rtol=1e-5)
            assert not torch.allclose(new[:, p + 1 :], logits[:, p + 1 :], atol=1e-4)


# ---------------------------------------------------------------------------------------------
# parity: KV cache, explicit positions


def _decode_with_cache(model: GPT, idx: Tensor, prefill: int, steps: list[int]) -> Tensor:
    """Logits from a prefill of `prefill` tokens, then pieces of the given sizes, via one KVCache."""
    cache = KVCache(model.config.n_layer)
    pieces, start = [], 0
    for size in [prefill, *steps]:
        pieces.append(model(idx[:, start : start + size], cache=cache))
        start += size
    assert start == idx.shape[1]
    assert cache.length == start
    assert torch.equal(cache.positions, torch.arange(start))
    return torch.cat(pieces, dim=1)


@pytest.mark.parametrize(("name", "params"), KV_CASES)
def test_kv_cache_decoding_equals_the_full_forward(name: str, params: dict[str, Any]) -> None:
    """Prefill, then token-by-token decoding, then a multi-token piece that outgrows the cache's
    first buffer (64): every logit equals the one-pass forward."""
    model = _sharpen(_model(name, **params))
    idx = _tokens(2, 80)
    with torch.no_grad():
        full = model(idx)
        cached = _decode_with_cache(model, idx, prefill=7, steps=[1] * 33 + [40])
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ENCODINGS)
def test_explicit_positions_equal_implicit(name: str) -> None:
    model = _sharpen(_model(name))
    idx = _tokens(2, 20)
    with torch.no_grad():
        implicit = model(idx)
        explicit = model(idx, positions=torch.arange(20))
        torch.testing.assert_close(explicit, implicit, atol=0, rtol=0)
        # and with a cache: the second piece's explicit positions continue the first's
        cache = KVCache(N_LAYER)
        model(idx[:, :12], positions=torch.arange(12), cache=cache)
        tail = model(idx[:, 12:], positions=torch.arange(12, 20), cache=cache)
    torch.testing.assert_close(tail, implicit[:, 12:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ENCODINGS)
def test_common_position_offset(name: str) -> None:
    """positions o .. o+s-1 instead of 0 .. s-1: relative encodings (q/k rotation, distance
    bias, none) give the same logits; absolute (input-site) encodings do not."""
    model = _model(name)
    idx = _tokens(2, 24)
    offset = 700  # below learned's default max_len of 1024
    with torch.no_grad():
        base = model(idx)
        shifted = model(idx, positions=torch.arange(offset, offset + 24))
    if _relative(model):
        torch.testing.assert_close(shifted, base, atol=2e-5, rtol=1e-4)
    elif "input" in model.encoding.sites:  # absolute vectors: the offset must show
        assert not torch.allclose(shifted, base, atol=1e-3)


@pytest.mark.parametrize("name", [n for n in ENCODINGS if not _model(n).encoding.sites])
def test_position_free_encoding_ignores_positions(name: str) -> None:
    """NoPE: any positions at all (even shuffled) give the same logits; order enters only
    through the causal mask."""
    model = _model(name)
    idx = _tokens(1, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(idx, positions=torch.randperm(16) * 1000), model(idx))


def test_learned_positions_past_the_table_raise() -> None:
    model = _model("learned", max_len=40)
    with pytest.raises(ValueError, match="max_len=40"):
        model(_tokens(1, 8), positions=torch.arange(35, 43))


# ---------------------------------------------------------------------------------------------
# generation


@pytest.mark.parametrize("name", ENCODINGS)
def test_generate_greedy_with_and_without_cache(name: str) -> None:
    model = _model(name)
    prompt = _tokens(2, 6)
    cached = model.generate(prompt, 12, temperature=0)
    uncached = model.generate(prompt, 12, temperature=0, use_cache=False)
    assert cached.shape == (2, 6 + 12)
    assert torch.equal(cached[:, :6], prompt)
    assert torch.equal(cached, uncached)
    # greedy = argmax of the full forward at every step
    with torch.no_grad():
        logits = model(cached[:, :-1])
    assert torch.equal(logits[:, 5:].argmax(-1), cached[:, 6:])


@pytest.mark.parametrize("name", ["rope", "alibi"])
def test_degenerate_sampling_equals_greedy(name: str) -> None:
    """top_k = 1 and a tiny top_p keep only the most likely token: sampling becomes greedy."""
    model = _model(name)
    prompt = _tokens(2, 5)
    greedy = model.generate(prompt, 10, temperature=0)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(model.generate(prompt, 10, temperature=1.0, top_k=1, generator=gen), greedy)
    assert torch.equal(
        model.generate(prompt, 10, temperature=1.0, top_p=1e-6, generator=gen), greedy
    )
    assert model.generate(prompt, 1, temperature=0).shape == (2, 6)


def test_sampling_is_reproducible_with_a_generator() -> None:
    model = _model("rope")
    prompt = _tokens(1, 4)

    def sample(seed: int) -> Tensor:
        gen = torch.Generator().manual_seed(seed)
        return model.generate(prompt, 16, temperature=1.5, generator=gen)

    assert torch.equal(sample(3), sample(3))
    assert ((sample(3) >= 0) & (sample(3) < VOCAB)).all()


@pytest.mark.parametrize(
    "scaling",
    [
        {"rope_type": "dynamic", "factor": 2.0},
        {"rope_type": "longrope", "short_factor": [1.0] * 4, "long_factor": [2.0, 3.0, 4.0, 5.0],
         "original_max_position_embeddings": 8},
    ],
    ids=["dynamic", "longrope"],
)  # fmt: skip
def test_length_dependent_rope_decodes_exactly_with_a_cache(scaling: dict) -> None:
    """Dynamic NTK / LongRoPE change frequencies with length, so rotated keys go stale. The
    cache holds keys before rotation and re-rotates them each step: at every length t the
    incremental logits of the last token equal a full forward over the t-token prefix (which
    crosses the trained length 8, where the frequencies switch)."""
    model = _model("rope", scaling=scaling, max_position_embeddings=8)
    assert model.encoding.cache == "raw"
    tokens = _tokens(1, 14)
    cache = KVCache(N_LAYER)
    with torch.no_grad():
        model(tokens[:, :5], cache=cache)
        for t in range(5, 14):
            step = model(tokens[:, t : t + 1], cache=cache)[:, -1]
            full = model(tokens[:, : t + 1])[:, -1]
            # float32 noise of two SDPA kernels (one query vs is_causal), ~1e-5; stale
            # frequencies would differ by O(0.1)
            torch.testing.assert_close(step, full, atol=1e-4, rtol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = model.generate(tokens[:, :6], 8, temperature=0)
    assert torch.equal(out, model.generate(tokens[:, :6], 8, temperature=0, use_cache=False))


def test_generate_recomputes_for_an_encoding_without_kv_cache() -> None:
    """An encoding that declares `cache = "none"` makes generate() warn and recompute
    the full sequence each step; the tokens equal the uncached run."""
    model = _model("rope")

    class Uncacheable(type(model.encoding)):  # test-only; never registered
        cache = "none"

    model.encoding.__class__ = Uncacheable
    prompt = _tokens(1, 6)
    with pytest.warns(UserWarning, match="cannot reuse cached keys"):
        out = model.generate(prompt, 8, temperature=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(out, model.generate(prompt, 8, temperature=0, use_cache=False))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": 0, "temperature": 0.0}, "top_k"),  # checked even when greedy
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": -0.5, "temperature": 0.0}, "top_p"),
    ],
)
def test_sample_next_rejects_bad_settings(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        sample_next(torch.zeros(2, VOCAB), **kwargs)


def test_sample_next_filters() -> None:
    """p = (0.5, 0.3, 0.2): top_k=2 never draws token 2; top_p=0.6 keeps {0, 1} (the tokens
    ranked above token 2 already hold 0.8 >= 0.6); top_p=0.5 keeps {0}."""
    logits = torch.tensor([[0.5, 0.3, 0.2]]).log().expand(400, 3)
    gen = torch.Generator().manual_seed(0)
    assert set(sample_next(logits, top_k=2, generator=gen).tolist()) == {0, 1}
    assert set(sample_next(logits, top_p=0.6, generator=gen).tolist()) == {0, 1}
    assert set(sample_next(logits, top_p=0.5, generator=gen).tolist()) == {0}
    assert set(sample_next(logits, generator=gen).tolist()) == {0, 1, 2}
    assert torch.equal(sample_next(logits, temperature=0), torch.zeros(400, dtype=torch.long))


# ---------------------------------------------------------------------------------------------
# an FFN-site encoding (test-only, not registered)


class SinusoidFFN(PositionalEncoding):
    """Test-only FFN-site encoding: p(pos) = sinusoids of the FFN width, added to the gate."""

    name = "test-sinusoid-ffn"

    def ffn_term(self, positions: Tensor, d_ff: int) -> Tensor:
        return sinusoidal_table(positions, d_ff)


def _ffn_model() -> GPT:
    model = _model("nope")
    model.encoding = SinusoidFFN()
    return model


def test_ffn_site_encoding_is_used() -> None:
    model = _ffn_model()
    assert model.encoding.sites == {"ffn"}
    assert SinusoidFFN.name not in list_encodings()
    idx = _tokens(2, 16)
    with torch.no_grad():
        with_term = model(idx)
        without = _model("nope")(idx)
        shifted = model(idx, positions=torch.arange(100, 116))
    assert not torch.allclose(with_term, without, atol=1e-3)  # the term enters the output
    assert not torch.allclose(shifted, with_term, atol=1e-3)  # and it is absolute in position


def test_ffn_site_encoding_is_causal_and_kv_cache_exact() -> None:
    model = _ffn_model()
    idx = _tokens(2, 20)
    with torch.no_grad():
        full = model(idx)
        changed = idx.clone()
        changed[:, 10:] = (changed[:, 10:] + 1) % VOCAB
        torch.testing.assert_close(model(changed)[:, :10], full[:, :10], atol=1e-6, rtol=1e-5)
        cached = _decode_with_cache(model, idx, prefill=5, steps=[1] * 10 + [5])
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)


def test_ffn_site_encoding_trains() -> None:
    model = _ffn_model().train()
    idx = _tokens(2, 17)
    loss = F.cross_entropy(model(idx[:, :-1]).reshape(-1, VOCAB), idx[:, 1:].reshape(-1))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# tied embeddings


def test_tied_embeddings_share_storage() -> None:
    model = _model("rope")
    assert model.lm_head.weight is model.embed.weight
    assert model.lm_head.weight.data_ptr() == model.embed.weight.data_ptr()
    with torch.no_grad():
        model.embed.weight[3, 0] = 123.0
    assert model.lm_head.weight[3, 0] == 123.0


@pytest.mark.parametrize("name", ["rope", "learned", "t5"])
def test_num_params_counts_tied_weights_once(name: str) -> None:
    """Embedding V·D + per layer (4 D² attention, 3 D·d_ff SwiGLU, 2 D norms) + D final norm
    + the encoding's own; untying adds exactly one V·D head."""
    torch.manual_seed(0)
    tied = GPT(_config(name))
    untied = GPT(_config(name, tie_embeddings=False))
    d_ff = tied.config.d_ff
    assert d_ff == 96  # 8/3·32 rounded up to a multiple of 16
    encoding = sum(p.numel() for p in tied.encoding.parameters())
    expected = (
        VOCAB * D_MODEL
        + N_LAYER * (4 * D_MODEL**2 + 3 * D_MODEL * d_ff + 2 * D_MODEL)
        + D_MODEL
        + encoding
    )
    assert tied.num_params() == expected
    assert untied.num_params() == expected + VOCAB * D_MODEL
    assert untied.lm_head.weight.data_ptr() != untied.embed.weight.data_ptr()


# ---------------------------------------------------------------------------------------------
# GPT(config, encoding=...): a built encoding injected


def test_an_injected_encoding_gives_the_same_model_as_the_config() -> None:
    """Building the encoding first and passing it in equals building it from the config: same
    draws, same weights, bit-identical logits; the model uses the very module passed."""
    from extrapos.encodings import build_for_model

    params = {"scaling": {"rope_type": "linear", "factor": 2.0}}
    config = _config("rope", encoding_params=params)
    torch.manual_seed(0)
    reference = GPT(config).eval()
    torch.manual_seed(0)
    enc = build_for_model(
        "rope", params, d_model=config.d_model, num_heads=config.n_head,
        head_dim=config.head_dim, num_layers=config.n_layer, d_ff=config.d_ff,
    )  # fmt: skip
    model = GPT(config, encoding=enc).eval()
    assert model.encoding is enc
    tokens = _tokens(2, 12)
    with torch.no_grad():
        assert torch.equal(model(tokens), reference(tokens))


def test_an_injected_encoding_must_match_the_config_name() -> None:
    from extrapos.core.errors import UserError
    from extrapos.encodings import build_encoding

    with pytest.raises(UserError, match="config.encoding is 'rope'"):
        GPT(_config("rope"), encoding=build_encoding("alibi", num_heads=N_HEAD))
    with pytest.raises(UserError, match="must be a PositionalEncoding"):
        GPT(_config("rope"), encoding="alibi")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("idx", "match"),
    [
        (torch.zeros(1, 0, dtype=torch.long), "idx is empty"),
        (torch.zeros(0, 4, dtype=torch.long), "idx is empty"),
        (torch.tensor([[1, 2, 256]]), "token id 256 is outside the vocabulary 0..255"),
        (torch.tensor([[1, -1, 3]]), "token id -1 is outside the vocabulary"),
        (torch.zeros(1, 3), "integer token ids"),
        (torch.zeros(3, dtype=torch.long), r"shape \(batch, seq\)"),
    ],
)
def test_bad_token_ids_are_a_clear_error(idx, match):
    """Out-of-vocabulary ids used to crash in nn.Embedding (IndexError); an empty input in
    the encoding (max() of an empty tensor)."""
    model = GPT(GPTConfig(vocab_size=256, n_layer=1, n_head=2, d_model=16, encoding="learned"))
    with pytest.raises(UserError, match=match):
        model(idx)


def test_negative_positions_on_a_learned_table_raise():
    """They used to index the table from its end (row -1 is the last row) silently."""
    model = GPT(GPTConfig(vocab_size=256, n_layer=1, n_head=2, d_model=16, encoding="learned",
                          encoding_params={"max_len": 8}))  # fmt: skip
    idx = torch.tensor([[1, 2, 3]])
    model(idx, positions=torch.tensor([0, 1, 2]))
    with pytest.raises(UserError, match="position -1 is negative"):
        model(idx, positions=torch.tensor([-1, 0, 1]))


@pytest.mark.parametrize("encoding", ["rope", "sinusoidal", "functional", "xpos", "sandwich"])
@pytest.mark.parametrize("base", [float("nan"), float("inf"), float("-inf"), 1.0, 0.5])
def test_a_frequency_base_that_is_not_finite_and_above_one_is_refused(encoding, base):
    """NaN passed the old `base <= 1` checks and inf built all-zero frequencies."""
    with pytest.raises(UserError, match="base must be a finite number > 1"):
        GPT(GPTConfig(vocab_size=256, n_layer=1, n_head=2, d_model=16, encoding=encoding,
                      encoding_params={"base": base}))  # fmt: skip
