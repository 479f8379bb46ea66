"""Cached generation past the trained length equals the full forward for length-dependent RoPE
scalings (dynamic NTK, LongRoPE) with 2+ layers and weights large enough that an error shows."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from extrapos.core.errors import UserError
from extrapos.models import rotation_state as decoding
from extrapos.models.gpt import GPT, GPTConfig

TRAIN_LEN = 16
SCALINGS = {
    "dynamic": {"rope_type": "dynamic", "factor": 4.0},
    "longrope": {
        "rope_type": "longrope",
        "short_factor": [1.0] * 4,
        "long_factor": [1.0, 2.0, 4.0, 8.0],
        "original_max_position_embeddings": 16,
        "factor": 4.0,
    },
}


def _model(scaling: dict[str, Any] | None, n_layer: int = 3, hybrid: bool = False) -> GPT:
    """RoPE with `scaling` (trained length 16); or, `hybrid`, per-layer RoPE-with-`scaling`,
    NoPE, ALiBi layers."""
    torch.manual_seed(0)
    rope = {"scaling": scaling, "max_position_embeddings": 16} if scaling else {}
    encoding, params = "rope", rope
    if hybrid:
        encoding, params = "hybrid", {"layers": ["rope", "nope", "alibi"], "params": {"rope": rope}}
    config = GPTConfig(
        vocab_size=64, n_layer=n_layer, n_head=2, d_model=16,
        encoding=encoding, encoding_params=params,
    )  # fmt: skip
    model = GPT(config).eval()
    with torch.no_grad():  # far from the init scale: stale keys of deeper layers would show
        for name, p in model.named_parameters():
            if p.ndim == 2 and not name.startswith("embed"):
                p.mul_(15.0)
    return model


def _step_logits(model: GPT, prompt: torch.Tensor, n: int) -> tuple[torch.Tensor, list[Any]]:
    """Greedy cached generation, recording the logits each step was sampled from."""
    seen: list[torch.Tensor] = []
    from extrapos.models import gpt

    real = gpt.sample_next

    def spy(logits, *args, **kwargs):
        seen.append(logits.clone())
        return real(logits, *args, **kwargs)

    gpt.sample_next = spy
    try:
        out = model.generate(prompt, n, temperature=0)
    finally:
        gpt.sample_next = real
    return out, seen


@pytest.mark.parametrize("hybrid", [False, True], ids=["rope", "hybrid"])
@pytest.mark.parametrize("kind", list(SCALINGS))
def test_cached_generation_equals_the_full_forward_past_the_trained_length(kind, hybrid):
    """Also for a per-layer hybrid whose RoPE layers are length-dependent: its cache goes
    stale the same way (its deeper layers' keys come from earlier frequencies)."""
    model = _model(SCALINGS[kind], n_layer=4 if hybrid else 3, hybrid=hybrid)
    prompt = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(1))
    out, seen = _step_logits(model, prompt, 40)  # to 46 positions, ~3x the trained length
    with torch.no_grad():
        for step, logits in enumerate(seen):
            t = prompt.shape[1] + step
            full = model(out[:, :t])[:, -1]
            torch.testing.assert_close(logits, full, atol=1e-4, rtol=1e-4)
    assert torch.equal(out, model.generate(prompt, 40, temperature=0, use_cache=False))


@pytest.mark.parametrize("hybrid", [False, True], ids=["rope", "hybrid"])
@pytest.mark.parametrize("kind", list(SCALINGS))
def test_re_rotating_raw_keys_alone_is_not_exact_here(kind, hybrid):
    """The test above could fail: decoding token by token through the cache without
    recomputing (what generate did before; for the hybrid, until 2026-12-07) differs from the
    full forward on this model."""
    from extrapos.models.gpt import KVCache

    model = _model(SCALINGS[kind], n_layer=4 if hybrid else 3, hybrid=hybrid)
    idx = torch.randint(0, 64, (1, 40), generator=torch.Generator().manual_seed(2))
    cache = KVCache(model.config.n_layer)
    with torch.no_grad():
        pieces = [model(idx[:, :6], cache=cache)]
        pieces += [model(idx[:, t : t + 1], cache=cache) for t in range(6, 40)]
        stale = torch.cat(pieces, dim=1)
        full = model(idx)
    assert (stale - full).abs().max() > 1e-2


def test_rotation_keys():
    dynamic = _model(SCALINGS["dynamic"]).encoding
    inside = [decoding.rotation_key(dynamic, n) for n in (4, 16)]
    assert decoding.same_rotation(*inside)
    assert not decoding.same_rotation(inside[1], decoding.rotation_key(dynamic, 17))
    long = _model(SCALINGS["longrope"]).encoding
    past = [decoding.rotation_key(long, n) for n in (17, 40)]
    assert decoding.same_rotation(*past)  # LongRoPE switches once
    assert not decoding.same_rotation(decoding.rotation_key(long, 16), past[0])


def test_a_hybrids_rotation_is_its_length_dependent_layers():
    plain, dynamic = _model(None, hybrid=True).encoding, _model(SCALINGS["dynamic"], hybrid=True)
    assert not decoding.changes_with_length(plain)
    assert decoding.same_rotation(decoding.rotation_key(plain, 4), decoding.rotation_key(plain, 99))
    dynamic = dynamic.encoding
    assert decoding.changes_with_length(dynamic)
    keys = [decoding.rotation_key(dynamic, n) for n in (4, 16, 17)]
    assert decoding.same_rotation(keys[0], keys[1])
    assert not decoding.same_rotation(keys[1], keys[2])


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("rope", {}),
        ("rerope", {"window": 4}),  # windows far below the 17 tokens: the remapped branches
        ("self_extend", {"window": 4, "group": 2}),
        ("string", {"shift": 6, "local_window": 2}),
        ("alibi", {}),
        ("cope", {}),
    ],
)
def test_generation_recomputes_nothing_where_the_rotation_ignores_the_length(name, params):
    """Encodings whose cached keys stay exact at any length (the KV-cache parity tests of
    test_gpt.py show it) decode one token per step: before 2026-12-07 the raw-key q/k
    encodings (ReRoPE, Self-Extend, STRING) recomputed the whole sequence at every step."""
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=64, n_layer=2, n_head=2, d_model=16, encoding=name, encoding_params=params
    )
    model = GPT(config).eval()
    with torch.no_grad():  # sharp attention: a wrong key or position would change the tokens
        for block in model.blocks:
            block.attn.qkv.weight.mul_(8.0)
    widths: list[int] = []
    model.register_forward_pre_hook(lambda m, args: widths.append(args[0].shape[1]))
    prompt = torch.randint(0, 64, (1, 5), generator=torch.Generator().manual_seed(4))
    out = model.generate(prompt, 12, temperature=0)
    assert widths == [5] + [1] * 11
    assert torch.equal(out, model.generate(prompt, 12, temperature=0, use_cache=False))


def test_non_finite_weights_and_tiny_temperatures():
    model = _model(SCALINGS["dynamic"], n_layer=2)
    prompt = torch.zeros(1, 3, dtype=torch.long)
    out = model.generate(prompt, 4, temperature=1e-300)  # the limit: greedy, no crash
    assert torch.equal(out, model.generate(prompt, 4, temperature=0))
    with torch.no_grad():
        model.blocks[0].mlp.w2.weight.fill_(float("nan"))
    with pytest.raises(UserError, match="non-finite logits at generation step 0"):
        model.generate(prompt, 4)


def test_embed_scale_multiplies_token_embeddings_by_sqrt_d():
    """The Transformer paper's recipe: embeddings x sqrt(D) + unit sinusoids; the default adds
    sinusoids to embeddings as initialized."""
    torch.manual_seed(0)
    base = dict(vocab_size=32, n_layer=1, n_head=2, d_model=16, encoding="nope")
    plain, scaled = GPT(GPTConfig(**base)), GPT(GPTConfig(**base, embed_scale=True))
    scaled.load_state_dict(plain.state_dict())
    seen = {}
    for name, model in (("plain", plain), ("scaled", scaled)):
        model.blocks[0].register_forward_pre_hook(lambda m, a, n=name: seen.__setitem__(n, a[0]))
        model(torch.arange(8)[None])
    torch.testing.assert_close(seen["scaled"], seen["plain"] * 4.0)
    assert GPTConfig.from_dict({**base}).embed_scale is False
