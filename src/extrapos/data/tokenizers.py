"""Tokenizers: text <-> 1-D int64 token ids.

Every tokenizer follows the `Tokenizer` protocol: `encode` gives a 1-D int64 tensor `(n,)`,
`decode` inverts it, `token_bytes()` gives `(vocab_size,)` int64 — how many UTF-8 bytes each
token stands for, so bits per byte = nll_sum / (ln 2 · Σ token_bytes[targets]) — and `to_dict()`
gives a JSON-serializable dict with a `"type"` key (for BPE: the `tokenizers` library's own JSON,
recognized by its `"model"` key) from which `tokenizer_from_dict` rebuilds it.
A run directory saves its tokenizer with `save_tokenizer` and reloads it with `load_tokenizer`.

Two tokenizers:

* `byte` — each UTF-8 byte is a token (vocab 256); no training, lossless.
* `bpe` — byte-level BPE (GPT-2's pre-tokenizer regex over the 256-byte alphabet, so it is also
  lossless) trained with the Hugging Face `tokenizers` library on a corpus's train split:
  `build_tokenizer("bpe", vocab_size=1024, corpus=corpus)`. Training is deterministic; the
  result is cached per (corpus hash, vocab size, library version) in `$EXTRAPOS_CACHE`. Its
  `to_dict()` is the `tokenizers` library's own JSON, so a run's `tokenizer.json` also loads with
  `tokenizers.Tokenizer.from_file` (and `transformers.PreTrainedTokenizerFast`).

A new tokenizer implements the protocol and registers in `_FROM_DICT` and `_BUILDERS`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch

from extrapos.core.errors import UserError
from extrapos.core.registry import Registry

if TYPE_CHECKING:
    from .corpus import Corpus

__all__ = [
    "BpeTokenizer",
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


# Chunk boundaries that cannot change byte-level BPE pre-tokenization: after a lone "\n" that
# sits between two non-space characters. No pre-token of GPT-2's regex spans such a point (only
# whitespace runs hold "\n", and this run is exactly "\n" on both sides of the cut).
_SAFE_CUT = re.compile(r"(?<=\S\n)(?=\S)")
_ENCODE_CHUNK = 1 << 16  # characters per chunk given to encode_batch (parallel in Rust)
_BPE_RECIPE = 1  # bump when the training recipe changes, to invalidate cached tokenizers


def _import_tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError as e:
        raise UserError(
            "the bpe tokenizer needs the `tokenizers` library; pip install 'extrapos[bpe]' "
            "(or use --tokenizer byte)"
        ) from e
    return tokenizers


class BpeTokenizer:
    """Byte-level BPE from the `tokenizers` library (GPT-2 pre-tokenizer, no special tokens).

    Every one of the 256 bytes is in the vocabulary, so any text round-trips exactly. Build one
    with `BpeTokenizer.train(texts, vocab_size)` or `build_tokenizer("bpe", vocab_size=N,
    corpus=c)`; `to_dict()` / `from_dict()` use the library's own JSON.
    """

    name: ClassVar[str] = "bpe"

    def __init__(self, hf_json: dict[str, Any]) -> None:
        tokenizers = _import_tokenizers()
        try:
            self._tok = tokenizers.Tokenizer.from_str(json.dumps(hf_json))
        except Exception as e:  # the Rust side raises a bare Exception
            raise UserError(
                f"the BPE tokenizer description is invalid ({e}); re-save it or retrain the run"
            ) from e
        self._json = json.loads(self._tok.to_str())
        self.vocab_size: int = self._tok.get_vocab_size()
        self._token_bytes: torch.Tensor | None = None

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BpeTokenizer:
        """Train on `texts` (documents) up to `vocab_size` tokens (256 bytes + merges); the
        result may be smaller when the text has fewer distinct pairs to merge."""
        if not isinstance(vocab_size, int) or vocab_size < 256:
            raise UserError(
                f"bpe vocab_size must be an integer >= 256 (the byte alphabet), got {vocab_size!r}"
            )
        tk = _import_tokenizers()
        tok = tk.Tokenizer(tk.models.BPE())
        tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = tk.decoders.ByteLevel()
        trainer = tk.trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=[],
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(json.loads(tok.to_str()))

    def encode(self, text: str) -> torch.Tensor:
        """Token ids of `text`, `(n,)` int64. Long texts are cut only where the cut cannot change
        the result (see `_SAFE_CUT`) and encoded in parallel."""
        chunks, start = [], 0
        while len(text) - start > _ENCODE_CHUNK:
            cut = _SAFE_CUT.search(text, start + _ENCODE_CHUNK)
            if cut is None:
                break
            chunks.append(text[start : cut.start()])
            start = cut.start()
        chunks.append(text[start:])
        ids = [e.ids for e in self._tok.encode_batch(chunks, add_special_tokens=False)]
        flat = np.fromiter((i for part in ids for i in part), dtype=np.int64)
        return torch.from_numpy(flat)

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Ids -> text; a byte sequence cut mid-character shows U+FFFD instead of raising."""
        arr = torch.as_tensor(ids, dtype=torch.int64).reshape(-1)
        if arr.numel() == 0:
            return ""
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= self.vocab_size:
            raise ValueError(
                f"bpe token ids must lie in [0, {self.vocab_size}), got values in [{lo}, {hi}]"
            )
        return self._tok.decode(arr.tolist(), skip_special_tokens=False)

    def token_bytes(self) -> torch.Tensor:
        """`(vocab_size,)` int64: bytes per token. The byte-level alphabet maps each byte to one
        character, so a token's byte count is the length of its string."""
        if self._token_bytes is None:
            vocab = self._tok.get_vocab()
            out = torch.zeros(self.vocab_size, dtype=torch.int64)
            for token, i in vocab.items():
                out[i] = len(token)
            self._token_bytes = out
        return self._token_bytes

    def to_dict(self) -> dict[str, Any]:
        """The `tokenizers` library's JSON (loadable by `tokenizers.Tokenizer.from_str`)."""
        return self._json

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BpeTokenizer:
        model = d.get("model")
        if not isinstance(model, dict) or model.get("type") != "BPE":
            raise UserError(
                "the tokenizer file is a `tokenizers` JSON but not a BPE model; "
                "extrapos loads only byte-level BPE (retrain with --tokenizer bpe)"
            )
        return cls(d)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BpeTokenizer) and self._json == other._json

    def __hash__(self) -> int:
        return hash(json.dumps(self._json, sort_keys=True))

    def __repr__(self) -> str:
        return f"BpeTokenizer(vocab_size={self.vocab_size})"


def build_bpe(
    vocab_size: int = 1024,
    corpus: Corpus | None = None,
    texts: Iterable[str] | None = None,
) -> BpeTokenizer:
    """Train a byte-level BPE on `corpus`'s train split (cached per corpus hash and size) or on
    `texts` (not cached)."""
    if (corpus is None) == (texts is None):
        raise UserError(
            "the bpe tokenizer is trained on data: pass corpus= (its train split is used) or "
            "texts=, exactly one of them"
        )
    if texts is not None:
        return BpeTokenizer.train(texts, vocab_size)
    from .cache import cached_json, store_json

    tk = _import_tokenizers()
    key_text = f"bpe:{_BPE_RECIPE}:{tk.__version__}:{corpus.content_hash}:{vocab_size}"
    key = hashlib.sha256(key_text.encode()).hexdigest()[:24]
    cached = cached_json("tokenizers", key)
    if cached is not None:
        try:
            return BpeTokenizer(cached)
        except UserError:
            pass  # corrupt cache entry: retrain
    tok = BpeTokenizer.train(corpus.splits["train"], vocab_size)
    store_json("tokenizers", key, tok.to_dict())
    return tok


def _byte(vocab_size: int | None = None, corpus: Corpus | None = None) -> ByteTokenizer:
    if vocab_size not in (None, ByteTokenizer.vocab_size):
        raise UserError(
            f"the byte tokenizer has vocab_size 256, got vocab_size={vocab_size}; drop "
            "--vocab-size or use --tokenizer bpe"
        )
    return ByteTokenizer()


# type (as written by to_dict) -> constructor from that dict
_FROM_DICT: Registry[Callable[[dict[str, Any]], Tokenizer]] = Registry("tokenizer type")
_FROM_DICT.add("byte", ByteTokenizer.from_dict)
_FROM_DICT.add("bpe", BpeTokenizer.from_dict)

# name accepted by build_tokenizer -> factory taking its keyword options
_BUILDERS: Registry[Callable[..., Tokenizer]] = Registry("tokenizer")
_BUILDERS.add("byte", _byte)
_BUILDERS.add("bpe", build_bpe)


def list_tokenizers() -> list[str]:
    """Names that `build_tokenizer` accepts."""
    return _BUILDERS.names()


def build_tokenizer(name: str, **kw: Any) -> Tokenizer:
    """Build a tokenizer by name.

    `build_tokenizer("byte")`; `build_tokenizer("bpe", vocab_size=1024, corpus=corpus)` trains a
    byte-level BPE on the corpus's train split (see `build_bpe`). Unknown names or options raise
    `UserError`.
    """
    builder = _BUILDERS.get(name)
    try:
        return builder(**kw)
    except TypeError as e:
        raise UserError(
            f"bad options for tokenizer {name!r}: {sorted(kw)} ({e}); drop or rename them"
        ) from e


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from `to_dict()` output (a dict with `"type"`, or the `tokenizers`
    library's JSON for BPE); an unknown `"type"` raises `UserError`."""
    if isinstance(d, dict) and "type" not in d and isinstance(d.get("model"), dict):
        return BpeTokenizer.from_dict(d)  # the `tokenizers` library's own JSON
    if not isinstance(d, dict) or "type" not in d:
        raise UserError(
            'a tokenizer description must be a JSON object with a "type" key; re-save the tokenizer'
        )
    return _FROM_DICT.get(d["type"])(d)


def save_tokenizer(tok: Tokenizer, path: str | os.PathLike[str]) -> None:
    """Write `tok.to_dict()` as JSON to `path`, atomically (`extrapos.core.files.write_text`)."""
    from extrapos.core.files import write_text

    d = tok.to_dict()
    # the `tokenizers` JSON is written as the library writes it (compact, its key order)
    text = json.dumps(d) if "type" not in d else json.dumps(d, indent=2, sort_keys=True) + "\n"
    write_text(path, text)


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
