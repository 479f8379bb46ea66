"""Corpora: documents split into train/valid/test, loaded from a name or a path.

`load_corpus(spec)` accepts:

* `None` or `"builtin"` — the built-in corpus (zero downloads; see `BUILTIN_RULES` in
  `extrapos.data.builtin`).
* `"hf:NAME[:CONFIG][#COLUMN]"` — a Hugging Face dataset loaded by `datasets` (see
  `extrapos.data.hf_datasets` for the rules; e.g. `hf:wikitext:wikitext-103-raw-v1`).
* a glob (`"dir/*.txt"`, `"books/**/*.md"`) — the matching files, treated like the files of a
  folder (below); one match is treated as a single text file.
* a text file — cut into train/valid/test by contiguous byte ranges (90/5/5), each cut moved
  forward to just after the next newline, so each split is one document of whole lines (in a
  text with no newline after the cut, such as text8's single line, just after the next
  whitespace, else at the next UTF-8 character boundary).
* a DailyDialog-format folder (`dialogues_{train,validation,test}.txt`) — a `DialogueCorpus`
  (see `extrapos.data.dialogue`).
* a folder — if its top-level files include, by name, a train, a valid and a test file (a name
  contains the word `train`; `valid`, `val`, `validation` or `dev`; `test` — words being the
  parts between non-alphanumeric characters, as in WikiText's `wiki.valid.tokens`), those files
  are the splits (one document per file, several files per split allowed). Otherwise every
  non-hidden regular file under it (pipes, sockets and devices are skipped: reading one could
  block forever) (recursively, sorted by relative path) is one document, assigned
  to a split by the hash of its relative path (`split_by_name_hash`).

Documents are kept whole and in a deterministic order. `Corpus.content_hash` is the sha256 of
the split names and their documents, so a result records exactly what it ran on.

Tokenized splits are cached on disk as memory-mapped numpy arrays keyed by the content hash and
the tokenizer's hash (`extrapos.data.cache`; `$EXTRAPOS_CACHE`, default `~/.cache/extrapos`).

The formats are read by `extrapos.data.formats`, the splitting rules are
`extrapos.data.splitting`'s, the built-in corpus is `extrapos.data.builtin`'s.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from extrapos.core.errors import UserError

from .builtin import (  # noqa: F401  (re-exported)
    BUILTIN_EXCLUDED_DIRS,
    BUILTIN_MAX_BYTES,
    BUILTIN_RULES,
    BUILTIN_TEST_MIN_BYTES,
    builtin_documents,
)
from .cache import cached_tokens, tokenizer_hash
from .formats import splits_from_file, splits_from_folder, splits_from_glob, splits_from_hf
from .hf_datasets import HF_PREFIX
from .splitting import SPLITS, split_by_name_hash, split_documents
from .tokenizers import BpeTokenizer, ByteTokenizer, Tokenizer

__all__ = [
    "BUILTIN_MAX_BYTES",
    "BUILTIN_TEST_MIN_BYTES",
    "SPLITS",
    "Corpus",
    "list_corpora",
    "load_corpus",
    "split_by_name_hash",
]

KNOWN_CORPORA: tuple[str, ...] = ("builtin",)

#: folders in a format of their own: (is_format(path), load(path, name)), tried in order;
#: `extrapos.data.dialogue` adds the DailyDialog format (imported by `extrapos.data`)
FOLDER_FORMATS: list[tuple[Callable[[Path], bool], Callable[[Path, str], Corpus]]] = []


@dataclass(frozen=True)
class Corpus:
    """Documents in train/valid/test splits.

    Attributes:
        name: where it came from: `"builtin"` or the path given.
        splits: `"train"`, `"valid"`, `"test"` -> documents (whole, deterministic order).
        content_hash: sha256 hex of the split names and documents (see `Corpus.from_splits`).
        sources: split -> one name per document (relative path, topic) where known, for
            provenance; not part of `content_hash`.
    """

    name: str
    splits: dict[str, list[str]]
    content_hash: str
    sources: dict[str, list[str]] = field(default_factory=dict)
    _token_cache: dict[tuple[str, str], torch.Tensor] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _array_cache: dict[tuple[str, str], np.ndarray] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __hash__(self) -> int:
        return hash(self.content_hash)

    @classmethod
    def from_splits(
        cls,
        name: str,
        splits: dict[str, list[str]],
        sources: dict[str, list[str]] | None = None,
    ) -> Corpus:
        """Build a corpus, computing `content_hash`; every split must be non-empty text."""
        for split in SPLITS:
            docs = splits.get(split)
            if not docs or not any(d.strip() for d in docs):
                raise UserError(
                    f"corpus {name!r}: the {split!r} split is empty; "
                    "give more text (or a folder with train/valid/test files)"
                )
        return cls(
            name=name,
            splits={k: list(v) for k, v in splits.items()},
            content_hash=_content_hash(splits),
            sources={k: list(v) for k, v in (sources or {}).items()},
        )

    def text(self, split: str) -> str:
        """The documents of `split` joined by a blank line (`"\\n\\n"`)."""
        return "\n\n".join(self._docs(split))

    def token_array(self, split: str, tokenizer: Tokenizer) -> np.ndarray:
        """`text(split)` encoded, shape `(n_tokens,)`, in the narrowest unsigned dtype; a
        read-only memory map of the on-disk cache (`extrapos.data.cache`) when it is on.

        Training samples windows from this array, so a split larger than memory still trains.
        """
        key = (split, tokenizer_hash(tokenizer))
        cached = self._array_cache.get(key)
        if cached is None:
            self._docs(split)  # unknown split -> UserError before touching the cache

            def encode() -> np.ndarray:
                return tokenizer.encode(self.text(split)).numpy()

            # on disk only for tokenizers whose to_dict() is their whole content (others, e.g.
            # a wrapped `transformers` tokenizer, are described by a path that can change)
            if isinstance(tokenizer, (ByteTokenizer, BpeTokenizer)):
                cached = cached_tokens(self.content_hash, tokenizer, split, encode)
            else:
                cached = encode()
            self._array_cache[key] = cached
        return cached

    def tokens(self, split: str, tokenizer: Tokenizer) -> torch.Tensor:
        """`text(split)` encoded, shape `(n_tokens,)` int64; cached per (split, tokenizer) in
        memory and on disk (see `token_array`).

        The cached tensor is shared: do not modify it in place.
        """
        key = (split, tokenizer_hash(tokenizer))
        cached = self._token_cache.get(key)
        if cached is None:
            array = np.asarray(self.token_array(split, tokenizer), dtype=np.int64)
            cached = torch.from_numpy(array if array.flags.writeable else array.copy())
            self._token_cache[key] = cached
        return cached

    def describe(self) -> dict[str, Any]:
        """`{"name", "content_hash", "splits": {split: {"documents", "characters", "bytes"}}}`."""
        return {
            "name": self.name,
            "content_hash": self.content_hash,
            "splits": {
                split: {
                    "documents": len(docs),
                    "characters": len(self.text(split)),
                    "bytes": len(self.text(split).encode("utf-8")),
                }
                for split, docs in self.splits.items()
            },
        }

    def _docs(self, split: str) -> list[str]:
        if split not in self.splits:
            raise UserError(
                f"corpus {self.name!r} has no split {split!r}; choose one of: "
                f"{', '.join(self.splits)}"
            )
        return self.splits[split]


def list_corpora() -> list[str]:
    """Corpus names `load_corpus` knows besides paths."""
    return list(KNOWN_CORPORA)


def load_corpus(spec: str | os.PathLike[str] | None = None) -> Corpus:
    """Load a corpus by name (`None`/`"builtin"`) or from a text file or folder.

    See the module docstring for the rules. Bad input (missing path, no text, binary or
    non-UTF-8 file, an empty split, an unknown name) raises `UserError`.
    """
    if spec is None or (isinstance(spec, str) and spec == "builtin"):
        return _builtin_corpus()
    raw = os.fspath(spec)
    if not str(raw).strip():  # Path("") would be the current folder
        raise UserError("the data path is empty; give a text file, a folder or a corpus name")
    if isinstance(spec, str) and raw.startswith(HF_PREFIX):
        return Corpus.from_splits(raw, *splits_from_hf(raw))
    path = Path(raw).expanduser()
    if path.is_file():
        return Corpus.from_splits(raw, *splits_from_file(path))
    if path.is_dir():
        for is_format, load in FOLDER_FORMATS:
            if is_format(path):
                return load(path, raw)
        return Corpus.from_splits(raw, *splits_from_folder(raw, path))
    if path.exists():
        raise UserError(f"{raw!r} is neither a regular file nor a folder; pass a text file")
    if glob.has_magic(raw):
        return Corpus.from_splits(raw, *splits_from_glob(raw))
    if isinstance(spec, os.PathLike) or any(s in raw for s in ("/", "\\", "~")):
        raise UserError(f"no such file or folder: {raw!r}; check the path")
    raise UserError(
        f"{raw!r} is neither a file nor a known corpus; give a path to a text file or folder, "
        f"a glob, hf:NAME[:CONFIG] for a Hugging Face dataset, or one of: "
        f"{', '.join(KNOWN_CORPORA)}"
    )


# ----------------------------------------------------------------------------- helpers


def _content_hash(splits: dict[str, list[str]]) -> str:
    # length-prefixed, so no two different corpora serialize to the same byte stream
    h = hashlib.sha256()
    for split in sorted(splits):
        docs = splits[split]
        h.update(f"split {len(split)}:{split} {len(docs)}\n".encode())
        for doc in docs:
            data = doc.encode("utf-8")
            h.update(f"{len(data)}:".encode())
            h.update(data)
    return h.hexdigest()


def _split_documents(
    name: str, names: Sequence[str], docs: Sequence[str], test_min_bytes: int
) -> Corpus:
    return Corpus.from_splits(name, *split_documents(names, docs, test_min_bytes))


@functools.lru_cache(maxsize=1)
def _builtin_corpus() -> Corpus:
    names, docs = builtin_documents()
    return _split_documents("builtin", names, docs, test_min_bytes=BUILTIN_TEST_MIN_BYTES)
