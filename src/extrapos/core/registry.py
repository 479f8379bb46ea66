"""One registry type for every name → thing table: encodings, tasks, RoPE scalings,
tokenizers, bench presets.

`Registry.get(name)` on an unknown name raises `UserError` with the closest known names
("did you mean …?") and the full list; registering a name twice raises `UserError` naming both
modules (a plugin cannot silently replace a built-in).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from extrapos.core.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names to objects of one kind (`kind` names it in errors: "unknown encoding 'x'")."""

    def __init__(self, kind: str, plural: str | None = None, ordered: bool = False) -> None:
        """`plural` names the list in errors ("" for just "known:"); `ordered`: list names in
        registration order instead of sorted."""
        self.kind = kind
        self.plural = f"{kind}s" if plural is None else plural
        self.ordered = ordered
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        if not isinstance(name, str) or not name:
            raise UserError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if name in self._items:
            raise UserError(
                f"{self.kind} '{name}' is registered twice (by {_origin(self._items[name])} "
                f"and {_origin(item)}); pick another name"
            )
        self._items[name] = item
        return item

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of `add`."""
        return lambda item: self.add(name, item)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise UserError(self.unknown(name)) from None

    def unknown(self, name: object) -> str:
        """The message for an unknown name: suggestions, then every known name."""
        close = difflib.get_close_matches(str(name), list(self._items), n=3, cutoff=0.6)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        known = f"known {self.plural}" if self.plural else "known"
        return f"unknown {self.kind} '{name}'{hint}; {known}: {', '.join(self.names())}"

    def names(self) -> list[str]:
        """Registered names, sorted (or in registration order when `ordered`)."""
        return list(self._items) if self.ordered else sorted(self._items)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)  # registration order

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())


def _origin(item: object) -> str:
    module = getattr(item, "__module__", None) or type(item).__module__
    return f"{module}.{getattr(item, '__qualname__', type(item).__qualname__)}"
