"""On-disk cache: tokenized splits as memory-mapped numpy arrays, and trained tokenizers.

    $EXTRAPOS_CACHE/                      (default ~/.cache/extrapos; "off" disables the cache)
      tokens/<corpus>-<tokenizer>/<split>.npy   one 1-D array per split
      tokenizers/<key>.json                     trained tokenizers (e.g. BPE per corpus + size)

`<corpus>` is the first 20 hex digits of `Corpus.content_hash`, `<tokenizer>` the first 20 of
`tokenizer_hash(tok)` (sha256 of its canonical JSON description), so a changed corpus or tokenizer
never reads a stale entry. Arrays use the narrowest unsigned dtype that holds the vocabulary
(uint8 for bytes, uint16 up to 65,536 tokens, else int32) and are opened with
`np.load(mmap_mode="r")`: a split of any size costs no memory until its pages are read.

Every entry is written atomically (`extrapos.core.files.atomic_path`), so concurrent writers (several
ranks, several runs) and killed processes leave either no entry or a complete one. An unwritable
cache directory only warns: the cache is an optimization, never a reason to fail a run.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from extrapos.core.errors import UserError
from extrapos.core.files import atomic_path

__all__ = [
    "CACHE_ENV",
    "cache_dir",
    "cached_json",
    "cached_tokens",
    "store_json",
    "token_dtype",
    "tokenizer_hash",
]

CACHE_ENV = "EXTRAPOS_CACHE"
_KEY_DIGITS = 20


def cache_dir() -> Path | None:
    """The cache root from `$EXTRAPOS_CACHE` (default `~/.cache/extrapos`); None when "off"."""
    raw = os.environ.get(CACHE_ENV, "").strip()
    if raw.lower() in ("off", "0", "none", "false"):
        return None
    return Path(raw).expanduser() if raw else Path.home() / ".cache" / "extrapos"


def tokenizer_hash(tokenizer: Any) -> str:
    """sha256 hex of the tokenizer's canonical JSON description (`to_dict()`)."""
    text = json.dumps(tokenizer.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def token_dtype(vocab_size: int) -> np.dtype:
    """Narrowest dtype for ids in [0, vocab_size)."""
    if vocab_size <= 1 << 8:
        return np.dtype(np.uint8)
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def cached_tokens(
    corpus_hash: str,
    tokenizer: Any,
    split: str,
    encode: Callable[[], np.ndarray],
) -> np.ndarray:
    """The tokens of `split`, from the cache when present, else `encode()`d and stored.

    Returns a 1-D array of dtype `token_dtype(tokenizer.vocab_size)`: read-only and memory-mapped
    when it came from (or went to) the cache, in memory when the cache is off or unwritable.
    """
    dtype = token_dtype(tokenizer.vocab_size)
    root = cache_dir()
    path = None
    if root is not None:
        key = f"{corpus_hash[:_KEY_DIGITS]}-{tokenizer_hash(tokenizer)[:_KEY_DIGITS]}"
        path = root / "tokens" / key / f"{split}.npy"
        if path.is_file():
            try:
                array = np.load(path, mmap_mode="r")
                if array.ndim == 1 and array.dtype == dtype:
                    return array
            except (OSError, ValueError):
                pass  # truncated or foreign file: rebuild it below
    array = np.ascontiguousarray(encode(), dtype=dtype)
    if path is None:
        return array
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, array, allow_pickle=False)
    except (UserError, OSError) as exc:
        _warn_unwritable(exc)
        return array
    return np.load(path, mmap_mode="r")


def cached_json(kind: str, key: str) -> Any | None:
    """A JSON entry `kind/key.json` stored by `store_json`, or None (missing, corrupt, cache off)."""
    root = cache_dir()
    if root is None:
        return None
    path = root / kind / f"{key}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def store_json(kind: str, key: str, value: Any) -> None:
    """Write `value` as `kind/key.json` in the cache (atomically); warn if the cache is unwritable."""
    root = cache_dir()
    if root is None:
        return
    try:
        with atomic_path(root / kind / f"{key}.json") as tmp:
            tmp.write_text(json.dumps(value), encoding="utf-8")
    except (UserError, OSError) as exc:
        _warn_unwritable(exc)


def _warn_unwritable(exc: Exception) -> None:
    warnings.warn(
        f"extrapos cache not written ({exc}); set {CACHE_ENV} to a writable folder or to 'off'",
        stacklevel=3,
    )
