"""RoPE scalings: differential tests against `transformers`, relations between types, validation."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from extrapos.core.errors import UserError
from extrapos.encodings.rope_scaling import (
    ROPE_SCALING_TYPES,
    rope_inv_freq,
    validate_rope_scaling,
)

HEAD_DIMS = (8, 32, 128)
BASES = (10000.0, 500000.0)


def _assert_freqs_equal(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.dtype == torch.float32
    # atol=0: the lowest frequencies are ~1e-6, below the default float32 atol.
    torch.testing.assert_close(ours, theirs.float(), rtol=1.3e-6, atol=0)


# ---------------------------------------------------------------------------------------------
# differential: against transformers


def _transformers_rope(
    head_dim: int,
    base: float,
    scaling: dict[str, Any] | None,
    max_position_embeddings: int,
    seq_len: int | None,
) -> tuple[torch.Tensor, float]:
    """inv_freq and attention factor from transformers, for a Llama config with these values."""
    pytest.importorskip("transformers")
    import transformers.modeling_rope_utils as hf_rope
    from transformers import LlamaConfig

    scaling = dict(scaling or {"rope_type": "default"})  # transformers mutates the dict
    common = {
        "hidden_size": 2 * head_dim,
        "num_attention_heads": 2,
        "head_dim": head_dim,
        "max_position_embeddings": max_position_embeddings,
    }
    if hasattr(hf_rope, "RopeParameters"):  # v5: base and scaling live in `rope_parameters`
        config = LlamaConfig(**common, rope_parameters={**scaling, "rope_theta": base})
        rope_type = config.rope_parameters["rope_type"]
    else:  # v4: `rope_theta` plus a `rope_scaling` dict
        config = LlamaConfig(**common, rope_theta=base, rope_scaling=scaling)
        rope_type = config.rope_scaling.get("rope_type", config.rope_scaling.get("type"))
    if rope_type != "default" and rope_type not in hf_rope.ROPE_INIT_FUNCTIONS:
        pytest.skip(f"this transformers version has no rope_type {rope_type!r}")
    if rope_type == "default" and "default" not in hf_rope.ROPE_INIT_FUNCTIONS:
        # v5 moved the default computation into each model's rotary embedding class
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        inv_freq, attention_factor = LlamaRotaryEmbedding.compute_default_rope_parameters(config)
    else:
        inv_freq, attention_factor = hf_rope.ROPE_INIT_FUNCTIONS[rope_type](
            config, None, seq_len=seq_len
        )
    return inv_freq, float(attention_factor)


def _longrope(head_dim: int, seed: int, **extra: Any) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    short = (1 + torch.rand(head_dim // 2, generator=gen)).tolist()
    long = (1 + 8 * torch.rand(head_dim // 2, generator=gen)).tolist()
    return {"rope_type": "longrope", "short_factor": short, "long_factor": long, **extra}


def _cases() -> list[Any]:
    """(head_dim, base, scaling, max_position_embeddings, seq_len) for every transformers type."""
    cases: list[tuple[int, float, dict[str, Any] | None, int, int | None]] = []
    for d in HEAD_DIMS:
        for base in BASES:
            cases += [
                (d, base, None, 2048, None),
                (d, base, {"rope_type": "default"}, 2048, None),
                (d, base, {"rope_type": "linear", "factor": 4.0}, 2048, None),
                (d, base, {"type": "linear", "factor": 2}, 2048, None),
                (d, base, {"rope_type": "linear", "factor": 1.0}, 2048, None),
            ]
            for factor in (2.0, 4.5):
                for seq_len in (100, 2048, 2049, 20000):
                    cases.append(
                        (d, base, {"rope_type": "dynamic", "factor": factor}, 2048, seq_len)
                    )
            yarn = {"rope_type": "yarn", "original_max_position_embeddings": 1024}
            for factor in (1.0, 4.0, 40.0):
                cases += [
                    (d, base, {**yarn, "factor": factor}, 4096, None),
                    (d, base, {**yarn, "factor": factor, "truncate": False}, 4096, None),
                    (d, base, {**yarn, "factor": factor, "mscale": 0.707}, 4096, None),
                    (
                        d,
                        base,
                        {**yarn, "factor": factor, "mscale": 0.707, "mscale_all_dim": 0.707},
                        4096,
                        None,
                    ),
                    (
                        d,
                        base,
                        {**yarn, "factor": factor, "mscale": 1.0, "mscale_all_dim": 0.5},
                        4096,
                        None,
                    ),
                    (
                        d,
                        base,
                        {**yarn, "factor": factor, "mscale": 1.0, "mscale_all_dim": 0},
                        4096,
                        None,
                    ),
                    (d, base, {**yarn, "factor": factor, "attention_factor": 1.3}, 4096, None),
                    (
                        d,
                        base,
                        {**yarn, "factor": factor, "beta_fast": 16, "beta_slow": 2.0},
                        4096,
                        None,
                    ),
                    # no original length in the dict: it falls back to max_position_embeddings
                    (d, base, {"rope_type": "yarn", "factor": factor}, 4096, None),
                ]
            # factor None (DeepSeek-V3): derived as max_position_embeddings / original length
            cases.append((d, base, {**yarn, "factor": None, "mscale": 1.0}, 16384, None))
            for llama3 in (
                {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0},
                {"factor": 2.0, "low_freq_factor": 0.5, "high_freq_factor": 2.0},
                {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 32.0},
            ):
                for original in (64, 8192):
                    scaling = {
                        "rope_type": "llama3",
                        "original_max_position_embeddings": original,
                        **llama3,
                    }
                    cases.append((d, base, scaling, 131072, None))
            for seq_len in (100, 4096, 4097):
                cases += [
                    (
                        d,
                        base,
                        _longrope(d, 0, original_max_position_embeddings=4096),
                        131072,
                        seq_len,
                    ),
                    (
                        d,
                        base,
                        _longrope(d, 1, original_max_position_embeddings=4096, factor=8.0),
                        131072,
                        seq_len,
                    ),
                    (
                        d,
                        base,
                        _longrope(
                            d, 2, original_max_position_embeddings=4096, attention_factor=1.2
                        ),
                        131072,
                        seq_len,
                    ),
                    # no original length and no factor: original = max_position_embeddings, factor 1
                    (d, base, _longrope(d, 3), 4096, seq_len),
                ]
            for proportion in (0.0, 0.25, 1.0):
                for extra in ({}, {"factor": 2.0}):
                    scaling = {
                        "rope_type": "proportional",
                        "partial_rotary_factor": proportion,
                        **extra,
                    }
                    cases.append((d, base, scaling, 2048, None))
    return [
        pytest.param(*case, id=f"{i}-{(case[2] or {}).get('rope_type')}")
        for i, case in enumerate(cases)
    ]


@pytest.mark.parametrize(
    ("head_dim", "base", "scaling", "max_position_embeddings", "seq_len"), _cases()
)
def test_matches_transformers(
    head_dim: int,
    base: float,
    scaling: dict[str, Any] | None,
    max_position_embeddings: int,
    seq_len: int | None,
) -> None:
    theirs, their_factor = _transformers_rope(
        head_dim, base, scaling, max_position_embeddings, seq_len
    )
    ours, our_factor = rope_inv_freq(
        head_dim, base, scaling, max_position_embeddings=max_position_embeddings, seq_len=seq_len
    )
    assert ours.shape == (head_dim // 2,)
    _assert_freqs_equal(ours, theirs)
    assert our_factor == their_factor


def test_transformers_has_no_type_we_lack() -> None:
    hf_rope = pytest.importorskip("transformers.modeling_rope_utils")
    assert set(hf_rope.ROPE_INIT_FUNCTIONS) <= set(ROPE_SCALING_TYPES)


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("factor", (1.5, 4.0, 16.0))
def test_ntk_equals_transformers_dynamic_at_factor_length(head_dim: int, factor: float) -> None:
    """Dynamic NTK with factor 1 at s = factor * L is static NTK with `factor`."""
    length = 1024
    theirs, _ = _transformers_rope(
        head_dim, 10000.0, {"rope_type": "dynamic", "factor": 1.0}, length, int(factor * length)
    )
    ours, attention_factor = rope_inv_freq(
        head_dim, 10000.0, {"rope_type": "ntk", "factor": factor}
    )
    _assert_freqs_equal(ours, theirs)
    assert attention_factor == 1.0


# ---------------------------------------------------------------------------------------------
# relations between types


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("factor", (1.0, 2.0, 8.0))
def test_linear_is_default_over_factor(head_dim: int, factor: float) -> None:
    default, _ = rope_inv_freq(head_dim, 10000.0)
    linear, attention_factor = rope_inv_freq(
        head_dim, 10000.0, {"rope_type": "linear", "factor": factor}
    )
    torch.testing.assert_close(linear, default / factor, rtol=1.3e-6, atol=0)
    assert attention_factor == 1.0


@pytest.mark.parametrize("seq_len", (1, 100, 512))
def test_dynamic_is_default_inside_trained_length(seq_len: int) -> None:
    default, _ = rope_inv_freq(64, 10000.0)
    dynamic, _ = rope_inv_freq(
        64,
        10000.0,
        {"rope_type": "dynamic", "factor": 4.0},
        max_position_embeddings=512,
        seq_len=seq_len,
    )
    assert torch.equal(dynamic, default)


def test_dynamic_scales_more_as_length_grows() -> None:
    scaling = {"rope_type": "dynamic", "factor": 4.0}
    lowest = [
        rope_inv_freq(64, 10000.0, scaling, max_position_embeddings=512, seq_len=s)[0][-1].item()
        for s in (512, 1024, 2048, 4096)
    ]
    assert lowest == sorted(lowest, reverse=True) and lowest[0] > lowest[-1]


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("factor", (2.0, 8.0, 32.0))
def test_yarn_between_linear_and_default(head_dim: int, factor: float) -> None:
    default, _ = rope_inv_freq(head_dim, 10000.0)
    linear, _ = rope_inv_freq(head_dim, 10000.0, {"rope_type": "linear", "factor": factor})
    scaling = {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": 256}
    yarn, attention_factor = rope_inv_freq(head_dim, 10000.0, scaling)
    eps = 1e-6
    assert torch.all(yarn <= default * (1 + eps)) and torch.all(yarn >= linear * (1 - eps))
    assert yarn[0] == pytest.approx(default[0].item(), rel=eps)  # fastest dim extrapolates
    assert yarn[-1] == pytest.approx(linear[-1].item(), rel=eps)  # slowest one interpolates
    assert attention_factor == pytest.approx(0.1 * math.log(factor) + 1.0)


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("factor", (2.0, 8.0))
def test_ntk_scales_lowest_by_factor_keeps_highest(head_dim: int, factor: float) -> None:
    default, _ = rope_inv_freq(head_dim, 10000.0)
    ntk, _ = rope_inv_freq(head_dim, 10000.0, {"rope_type": "ntk", "factor": factor})
    assert ntk[0].item() == default[0].item() == 1.0
    assert ntk[-1].item() == pytest.approx(default[-1].item() / factor, rel=1e-5)
    assert torch.all(ntk <= default) and torch.all(ntk >= default / factor * (1 - 1e-5))


def test_llama3_keeps_high_and_scales_low_frequencies() -> None:
    scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 256,
    }
    default, _ = rope_inv_freq(64, 10000.0)
    llama3, _ = rope_inv_freq(64, 10000.0, scaling)
    wavelen = 2 * math.pi / default
    short, long = wavelen < 256 / 4.0, wavelen > 256 / 1.0
    assert short.any() and long.any() and (~short & ~long).any()  # all three regimes occur
    assert torch.equal(llama3[short], default[short])
    torch.testing.assert_close(llama3[long], default[long] / 8.0, rtol=1.3e-6, atol=0)
    assert torch.all(llama3 <= default) and torch.all(llama3 >= default / 8.0 * (1 - 1e-6))


def test_longrope_switches_factors_past_original_length() -> None:
    scaling = _longrope(16, 0, original_max_position_embeddings=256)
    default, _ = rope_inv_freq(16, 10000.0)
    short, _ = rope_inv_freq(16, 10000.0, scaling, max_position_embeddings=1024, seq_len=256)
    long, attention_factor = rope_inv_freq(
        16, 10000.0, scaling, max_position_embeddings=1024, seq_len=257
    )
    ext_short = torch.tensor(scaling["short_factor"])
    ext_long = torch.tensor(scaling["long_factor"])
    torch.testing.assert_close(short, default / ext_short, rtol=1e-6, atol=0)
    torch.testing.assert_close(long, default / ext_long, rtol=1e-6, atol=0)
    assert attention_factor == pytest.approx(math.sqrt(1 + math.log(4) / math.log(256)))


def test_proportional_is_default_then_zeros() -> None:
    default, _ = rope_inv_freq(32, 10000.0)
    full, _ = rope_inv_freq(32, 10000.0, {"rope_type": "proportional"})
    assert torch.equal(full, default)
    quarter, _ = rope_inv_freq(
        32, 10000.0, {"rope_type": "proportional", "partial_rotary_factor": 0.25}
    )
    assert torch.equal(quarter[:4], default[:4]) and torch.all(quarter[4:] == 0)


def test_default_forms_agree() -> None:
    plain, attention_factor = rope_inv_freq(16, 10000.0)
    assert attention_factor == 1.0 and plain.dtype == torch.float32
    for scaling in ({}, {"rope_type": "default"}, {"type": "default"}, {"rope_theta": 10000.0}):
        assert torch.equal(rope_inv_freq(16, 10000.0, scaling)[0], plain)
    assert torch.equal(plain, 1.0 / 10000.0 ** (torch.arange(0, 16, 2).float() / 16))


def test_validate_normalizes_without_mutating() -> None:
    raw = {"type": "linear", "factor": 2.0}
    assert validate_rope_scaling(raw) == {"rope_type": "linear", "factor": 2.0}
    assert raw == {"type": "linear", "factor": 2.0}
    assert validate_rope_scaling(validate_rope_scaling(raw)) == validate_rope_scaling(raw)
    assert validate_rope_scaling(None) == {"rope_type": "default"}
    assert (
        validate_rope_scaling({"rope_type": "yarn", "factor": 2.0, "mscale": None})["mscale"]
        is None
    )


def test_types_are_listed() -> None:
    assert ROPE_SCALING_TYPES == (
        "default",
        "linear",
        "ntk",
        "dynamic",
        "yarn",
        "llama3",
        "longrope",
        "proportional",
    )


# ---------------------------------------------------------------------------------------------
# validation: each bad input raises a ValueError naming the key

LONGROPE_8 = _longrope(8, 0, original_max_position_embeddings=64)


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"scaling": {"rope_type": "bogus"}}, ("bogus", "yarn", "llama3")),
        ({"scaling": "linear"}, ("rope_scaling",)),
        (
            {"scaling": {"type": "linear", "rope_type": "yarn", "factor": 2.0}},
            ("type", "rope_type"),
        ),
        ({"scaling": {"rope_type": "linear"}}, ("factor",)),
        ({"scaling": {"rope_type": "linear", "factor": None}}, ("factor",)),
        (
            {"scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0}},
            ("high_freq_factor",),
        ),
        ({"scaling": {"rope_type": "longrope", "short_factor": [1.0] * 4}}, ("long_factor",)),
        (
            {"scaling": {"rope_type": "linear", "factor": 2.0, "beta_fast": 32}},
            ("beta_fast", "factor"),
        ),
        ({"scaling": {"factor": 2.0}}, ("factor", "default")),
        (
            {"scaling": {"rope_type": "linear", "factor": 2.0, "partial_rotary_factor": 0.5}},
            ("partial_rotary_factor", "rotary_dim"),
        ),
        ({"scaling": {"rope_type": "ntk", "factor": 0}}, ("factor",)),
        ({"scaling": {"rope_type": "ntk", "factor": -2.0}}, ("factor",)),
        ({"scaling": {"rope_type": "linear", "factor": 0.5}}, ("factor", ">= 1")),
        ({"scaling": {"rope_type": "yarn", "factor": 0.5}}, ("factor",)),
        ({"scaling": {"rope_type": "linear", "factor": "2"}}, ("factor",)),
        ({"scaling": {"rope_type": "linear", "factor": True}}, ("factor",)),
        ({"scaling": {"rope_type": "linear", "factor": math.inf}}, ("factor",)),
        (
            {"scaling": {"rope_type": "yarn", "factor": 2.0, "beta_fast": 1, "beta_slow": 4}},
            ("beta_fast", "beta_slow"),
        ),
        ({"scaling": {"rope_type": "yarn", "factor": 2.0, "beta_fast": -1}}, ("beta_fast",)),
        (
            {"scaling": {"rope_type": "yarn", "factor": 2.0, "attention_factor": -1.0}},
            ("attention_factor",),
        ),
        ({"scaling": {"rope_type": "yarn", "factor": 2.0, "truncate": "yes"}}, ("truncate",)),
        ({"scaling": {"rope_type": "yarn", "factor": 2.0, "truncate": None}}, ("truncate",)),
        ({"scaling": {"rope_type": "yarn", "factor": 2.0, "mscale": -1.0}}, ("mscale",)),
        (
            {
                "scaling": {
                    "rope_type": "yarn",
                    "factor": 2.0,
                    "original_max_position_embeddings": 10.5,
                }
            },
            ("original_max_position_embeddings",),
        ),
        ({"scaling": {"rope_type": "yarn", "factor": 2.0}}, ("original_max_position_embeddings",)),
        (
            {
                "scaling": {
                    "rope_type": "yarn",
                    "factor": None,
                    "original_max_position_embeddings": 64,
                }
            },
            ("max_position_embeddings",),
        ),
        (
            {
                "scaling": {
                    "rope_type": "yarn",
                    "factor": None,
                    "original_max_position_embeddings": 64,
                },
                "max_position_embeddings": 32,
            },
            ("factor",),
        ),
        (
            {
                "scaling": {
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 4.0,
                    "high_freq_factor": 1.0,
                    "original_max_position_embeddings": 64,
                }
            },
            ("high_freq_factor", "low_freq_factor"),
        ),
        (
            {
                "scaling": {
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 0,
                    "high_freq_factor": 1.0,
                    "original_max_position_embeddings": 64,
                }
            },
            ("low_freq_factor",),
        ),
        (
            {
                "scaling": {
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                }
            },
            ("original_max_position_embeddings",),
        ),
        (
            {"scaling": {"rope_type": "dynamic", "factor": 2.0}, "max_position_embeddings": 64},
            ("seq_len",),
        ),
        (
            {"scaling": {"rope_type": "dynamic", "factor": 2.0}, "seq_len": 128},
            ("max_position_embeddings",),
        ),
        ({"scaling": LONGROPE_8, "max_position_embeddings": 64}, ("seq_len",)),
        ({"scaling": _longrope(8, 0), "seq_len": 128}, ("original_max_position_embeddings",)),
        (
            {"scaling": {**LONGROPE_8, "short_factor": [1.0] * 3}, "seq_len": 8},
            ("short_factor", "4"),
        ),
        ({"scaling": {**LONGROPE_8, "long_factor": [1.0] * 5}, "seq_len": 8}, ("long_factor", "4")),
        (
            {"scaling": {**LONGROPE_8, "long_factor": [1.0, 2.0, 0.0, 1.0]}, "seq_len": 8},
            ("long_factor",),
        ),
        ({"scaling": {**LONGROPE_8, "short_factor": 1.0}, "seq_len": 8}, ("short_factor",)),
        (
            {"scaling": {"rope_type": "proportional", "partial_rotary_factor": 1.5}},
            ("partial_rotary_factor",),
        ),
        ({"scaling": {"rope_theta": 500000.0}}, ("rope_theta",)),
        ({"head_dim": 7}, ("head_dim",)),
        ({"head_dim": 0}, ("head_dim",)),
        ({"head_dim": -4}, ("head_dim",)),
        ({"head_dim": 8.0}, ("head_dim",)),
        ({"head_dim": 2, "scaling": {"rope_type": "ntk", "factor": 2.0}}, ("head_dim",)),
        ({"base": 0.0}, ("base",)),
        ({"base": -10000.0}, ("base",)),
        ({"base": 1.0}, ("base",)),
        ({"seq_len": 0}, ("seq_len",)),
        ({"max_position_embeddings": -1}, ("max_position_embeddings",)),
    ],
)
def test_bad_input_raises_naming_the_key(kwargs: dict[str, Any], names: tuple[str, ...]) -> None:
    args = {"head_dim": 8, "base": 10000.0, **kwargs}
    with pytest.raises(ValueError) as excinfo:
        rope_inv_freq(**args)
    assert isinstance(excinfo.value, UserError)
    for name in names:
        assert name in str(excinfo.value), (name, str(excinfo.value))
