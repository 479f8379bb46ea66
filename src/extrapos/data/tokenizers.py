"""Tokenizers: text <-> 1-D int64 token ids.

Every tokenizer follows the `Tokenizer` protocol: `encode` gives a 1-D int64 tensor `(n,)`,
`decode` inverts it, `token_bytes()` gives `(vocab_size,)` int64 — how many UTF-8 bytes each
token stands for, so bits per byte = nll_sum / (ln 2 · Σ token_bytes[targets]) — and `to_dict()`
gives a JSON-serializable dict with a `"type"` key from which `tokenizer_from_dict` rebuilds it.
A run directory saves its tokenizer with `save_tokenizer` and reloads it with `load_tokenizer`.

Only the byte-level tokenizer exists today; a BPE tokenizer (through the `tokenizers` library)
slots in by implementing the protocol and adding one line to `_FROM_DICT` and `_BUILDERS`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch

from extrapos.errors import UserError

__all__ = [
    "ByteTokenizer",
    "Tokenizer",
    "build_tokenizer",
    "list_tokenizers",
    "load_tokenizer",
    "save_tokenizer",
    "tokenizer_from_dict",
]


@runtime_checkable
class Tokenizer(Protocol):
    """What the rest of extrapos needs from a tokenizer."""

    name: str
    vocab_size: int

    def encode(self, text: str) -> torch.Tensor:
        """`text` -> token ids, shape `(n,)`, int64."""
        ...

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Token ids (any 1-D sequence) -> text."""
        ...

    def token_bytes(self) -> torch.Tensor:
        """`(vocab_size,)` int64: UTF-8 bytes each token stands for (for bits per byte)."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable description with a `"type"` key; see `tokenizer_from_dict`."""
        ...


@dataclass(frozen=True)
class ByteTokenizer:
    """Byte-level tokenizer: each token is one byte of the UTF-8 encoding (vocab 256).

    Lossless for any text; `decode` of a byte sequence cut mid-character (e.g. model samples)
    shows the broken character as U+FFFD instead of raising. All instances are equal.
    """

    name: ClassVar[str] = "byte"
    vocab_size: ClassVar[int] = 256

    def encode(self, text: str) -> torch.Tensor:
        """UTF-8 bytes of `text` as a `(n_bytes,)` int64 tensor (vectorized, no Python loop)."""
        data = text.encode("utf-8")
        return torch.from_numpy(np.frombuffer(data, dtype=np.uint8).astype(np.int64))

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """`(n,)` ids in [0, 256) -> text; invalid UTF-8 becomes U+FFFD (errors="replace")."""
        arr = torch.as_tensor(ids, dtype=torch.int64).reshape(-1)
        if arr.numel() == 0:
            return ""
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= self.vocab_size:
            raise ValueError(f"byte token ids must lie in [0, 256), got values in [{lo}, {hi}]")
        return arr.to(torch.uint8).numpy().tobytes().decode("utf-8", errors="replace")

    def token_bytes(self) -> torch.Tensor:
        """`(256,)` int64 of ones: every token is exactly one byte."""
        return torch.ones(self.vocab_size, dtype=torch.int64)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "byte", "vocab_size": self.vocab_size}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ByteTokenizer:
        vocab_size = d.get("vocab_size", cls.vocab_size)
        if vocab_size != cls.vocab_size:
            raise UserError(
                f"byte tokenizer has vocab_size 256, but the tokenizer file says {vocab_size!r}; "
                "fix or re-save the tokenizer file"
            )
        return cls()


# type (as written by to_dict) -> constructor from that dict
_FROM_DICT: dict[str, Callable[[dict[str, Any]], Tokenizer]] = {
    "byte": ByteTokenizer.from_dict,
}

# name accepted by build_tokenizer -> factory taking its keyword options
_BUILDERS: dict[str, Callable[..., Tokenizer]] = {
    "byte": ByteTokenizer,
}


def list_tokenizers() -> list[str]:
    """Names that `build_tokenizer` accepts."""
    return sorted(_BUILDERS)


def build_tokenizer(name: str, **kw: Any) -> Tokenizer:
    """Build a tokenizer by name (`"byte"`); unknown names or options raise `UserError`."""
    if name not in _BUILDERS:
        raise UserError(
            f"unknown tokenizer {name!r}; choose one of: {', '.join(list_tokenizers())}"
        )
    try:
        return _BUILDERS[name](**kw)
    except TypeError as e:
        raise UserError(
            f"bad options for tokenizer {name!r}: {sorted(kw)} ({e}); drop or rename them"
        ) from e


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from `to_dict()` output; an unknown `"type"` raises `UserError`."""
    if not isinstance(d, dict) or "type" not in d:
        raise UserError(
            'a tokenizer description must be a JSON object with a "type" key; re-save the tokenizer'
        )
    kind = d["type"]
    if kind not in _FROM_DICT:
        raise UserError(
            f"unknown tokenizer type {kind!r}; known types: {', '.join(sorted(_FROM_DICT))}"
        )
    return _FROM_DICT[kind](d)


def save_tokenizer(tok: Tokenizer, path: str | os.PathLike[str]) -> None:
    """Write `tok.to_dict()` as JSON to `path`, atomically (temp file in the same dir + replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(tok.to_dict(), indent=2, sort_keys=True) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """Read a tokenizer saved by `save_tokenizer`; a missing or corrupt file raises `UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"tokenizer file not found: {path}; check the run directory")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(
            f"tokenizer file {path} is not valid JSON ({e}); re-save it or retrain the run"
        ) from e
    return tokenizer_from_dict(d)
