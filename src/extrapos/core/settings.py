"""Config fields that document themselves: `setting(default, help)` is a dataclass field whose
help text travels with it, so command-line flags generated from the dataclass
(`extrapos.cli.args.add_dataclass_flags`) always show the true default."""

from __future__ import annotations

import copy
from dataclasses import MISSING, Field, field, fields
from typing import Any


def setting(default: Any, help: str, *, flag: str | None = None) -> Any:
    """A dataclass field with `default` (mutable defaults are copied per instance), its `help`
    text, and an optional command-line `flag` name (default: the field name with dashes)."""
    metadata = {"help": help, "flag": flag}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def field_default(f: Field) -> Any:
    """The value a dataclass field takes when not given (MISSING when it is required)."""
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def check_known_fields(cls: type, data: dict[str, Any], what: str) -> None:
    """Raise a `UserError` naming the fields of `data` that dataclass `cls` does not have, and
    the ones it does (`what`: how the message names the config, e.g. "model config")."""
    from extrapos.core.errors import UserError

    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(
            f"{what} has unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
