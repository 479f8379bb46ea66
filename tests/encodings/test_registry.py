"""The registry: names, parameter validation with messages that name the problem, derived sites."""

from __future__ import annotations

import inspect

import pytest

from extrapos.core.errors import UserError
from extrapos.encodings import (
    PositionalEncoding,
    build_encoding,
    build_for_model,
    encoding_class,
    encoding_parameters,
    list_encodings,
)

BUILTIN = ("sinusoidal", "learned", "nope", "rope", "alibi", "t5")

#: the sites each built-in encoding uses (DESIGN.md, "The one idea that shapes the code").
EXPECTED_SITES = {
    "sinusoidal": {"input"},
    "learned": {"input"},
    "nope": set(),
    "rope": {"qk"},
    "alibi": {"bias"},
    "t5": {"bias"},
}

DIMS = {"d_model": 32, "num_heads": 4, "head_dim": 8}


def _build(name: str, **params: object) -> PositionalEncoding:
    return build_for_model(name, params, **DIMS)


def test_list_encodings_has_the_builtins_sorted() -> None:
    names = list_encodings()
    assert set(BUILTIN) <= set(names)
    assert names == sorted(names)
    assert len(names) == len(set(names))


@pytest.mark.parametrize("name", list_encodings())
def test_every_registered_encoding_builds_for_a_model(name: str) -> None:
    """Every registered class builds from the model's dimensions alone, and knows its name."""
    enc = _build(name)
    assert isinstance(enc, PositionalEncoding)
    assert isinstance(enc, encoding_class(name))
    assert enc.name == name
    assert enc.sites <= {"input", "qk", "bias", "ffn", "attention"}


@pytest.mark.parametrize("name", BUILTIN)
def test_sites_are_derived_from_the_overridden_hooks(name: str) -> None:
    assert _build(name).sites == EXPECTED_SITES[name]


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError) as info:
        build_encoding("ropee", head_dim=8)
    message = str(info.value)
    assert "ropee" in message
    for name in list_encodings():
        assert name in message
    assert isinstance(info.value, UserError)


def test_unknown_parameter_is_named_with_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match="rotary_fraction") as info:
        build_encoding("rope", head_dim=8, rotary_fraction=0.5)
    for accepted in ("head_dim", "base", "rotary_dim", "scaling"):
        assert accepted in str(info.value)


def test_parameterless_encoding_rejects_any_parameter() -> None:
    with pytest.raises(ValueError, match="max_len"):
        build_encoding("nope", max_len=4)


@pytest.mark.parametrize(
    ("name", "missing"),
    [("rope", "head_dim"), ("alibi", "num_heads"), ("t5", "num_heads"), ("sinusoidal", "d_model")],
)
def test_missing_required_parameter_is_named(name: str, missing: str) -> None:
    with pytest.raises(ValueError, match=missing):
        build_encoding(name)


def test_required_parameters_are_reported_as_such() -> None:
    params = encoding_parameters("rope")
    assert params["head_dim"] is inspect.Parameter.empty
    assert params["base"] == 10000.0


def test_model_dimensions_cannot_be_set_by_the_user() -> None:
    with pytest.raises(ValueError, match="num_heads"):
        build_for_model("alibi", {"num_heads": 8}, **DIMS)


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("rope", {"head_dim": 8, "rotary_dim": 3}, "rotary_dim"),  # odd
        ("rope", {"head_dim": 8, "rotary_dim": 10}, "rotary_dim"),  # > head_dim
        ("rope", {"head_dim": 8, "rotary_dim": 0}, "rotary_dim"),
        ("rope", {"head_dim": 8, "base": 0.0}, "base"),
        ("rope", {"head_dim": 8, "base": -10000.0}, "base"),
        ("rope", {"head_dim": 8, "base": "big"}, "base"),  # wrong type: still a ValueError
        ("rope", {"head_dim": 8, "scaling": {"rope_type": "nope"}}, "rope_type"),
        ("rope", {"head_dim": 8, "scaling": {"rope_type": "linear"}}, "factor"),
        ("learned", {"d_model": 8, "max_len": 0}, "max_len"),
        ("learned", {"d_model": 8, "max_len": -5}, "max_len"),
        ("sinusoidal", {"d_model": 8, "base": 0.5}, "base"),
        ("t5", {"num_heads": 4, "num_buckets": 1}, "num_buckets"),
        ("t5", {"num_heads": 4, "num_buckets": 32, "max_distance": 16}, "max_distance"),
        ("t5", {"num_heads": 4, "num_buckets": 32, "max_distance": 8}, "max_distance"),
        ("alibi", {"num_heads": 0}, "num_heads"),
    ],
)
def test_invalid_values_name_the_field(name: str, params: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        build_encoding(name, **params)


def test_valid_edge_values_are_accepted() -> None:
    """The boundaries of the checks above are allowed values, not errors."""
    assert build_encoding("rope", head_dim=8, rotary_dim=8).rotary_dim == 8
    assert build_encoding("rope", head_dim=8, rotary_dim=2).rotary_dim == 2
    assert build_encoding("learned", d_model=8, max_len=1).max_len == 1
    assert build_encoding("t5", num_heads=4, num_buckets=2, max_distance=2).num_buckets == 2
