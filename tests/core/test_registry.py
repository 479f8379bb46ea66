"""The one registry type: did-you-mean suggestions, the known list, duplicate protection."""

from __future__ import annotations

import pytest

from extrapos.core.errors import UserError
from extrapos.core.registry import Registry
from extrapos.data.tasks import get_task
from extrapos.encodings import build_encoding, register
from extrapos.encodings.rope_scaling import validate_rope_scaling


def test_unknown_names_get_suggestions_and_the_known_list():
    reg: Registry[int] = Registry("colour")
    for i, name in enumerate(("red", "green", "blue")):
        reg.add(name, i)
    with pytest.raises(
        UserError,
        match=r"unknown colour 'gren' \(did you mean 'green'\?\); known colours: blue, green, red",
    ):
        reg.get("gren")
    with pytest.raises(UserError, match=r"^unknown colour 'xyz'; known colours: blue, green, red$"):
        reg.get("xyz")
    assert list(reg) == ["red", "green", "blue"] and reg["blue"] == 2 and "red" in reg


def test_a_name_registered_twice_is_refused_naming_both():
    reg: Registry[type] = Registry("thing")
    reg.add("x", int)
    with pytest.raises(
        UserError, match=r"thing 'x' is registered twice \(by builtins.int and builtins.str\)"
    ):
        reg.add("x", str)


def test_every_registry_of_the_package_suggests():
    with pytest.raises(UserError, match=r"did you mean 'alibi'"):
        build_encoding("alibii")
    with pytest.raises(UserError, match=r"did you mean 'copy'"):
        get_task("cop")
    with pytest.raises(UserError, match=r"did you mean 'yarn'"):
        validate_rope_scaling({"rope_type": "yarm", "factor": 2.0})


def test_a_plugin_cannot_replace_a_builtin_encoding():
    with pytest.raises(UserError, match="encoding 'alibi' is registered twice"):

        @register("alibi")
        class Fake:  # noqa: B903
            pass
