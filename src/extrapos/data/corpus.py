"""Corpora: documents split into train/valid/test, loaded from a name or a path.

`load_corpus(spec)` accepts:

* `None` or `"builtin"` — the built-in corpus (zero downloads; see `BUILTIN_RULES` below).
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

Built-in corpus rules (`BUILTIN_RULES`)
---------------------------------------
Made only from what every CPython install has:

1. Documentation: each topic of `pydoc_data.topics` is one document, named
   `pydoc_data.topics:<topic>` (~0.47 MB on 3.11; skipped if the module is missing).
2. Source: the `.py` files under `sysconfig.get_paths()["stdlib"]`, named by POSIX path relative
   to it, skipping folders `test`, `tests`, `idlelib`, `lib2to3`, `site-packages`,
   `pydoc_data` (already used as documentation), `__pycache__` and hidden ones, and skipping:
   files that are not UTF-8, files with no non-space text, and files that are *mostly data*:
   more than half of their non-space characters sit on lines that begin with a string or number
   literal (codec tables in `encodings/`, `html/entities.py`, `_sysconfigdata*`, `stringprep.py`,
   the alias table of `locale.py`, ...).
3. Size cap: the documentation is always in; source files are taken in the order of
   sha256(`"extrapos-select:" + name`) — a fixed pseudo-random order, so the sample spans the
   whole library instead of its alphabetical head — until the next file would push the total
   past `BUILTIN_MAX_BYTES` (4,000,000 UTF-8 bytes). The chosen documents are then sorted by name.
4. Split: by `split_by_name_hash` (sha256 of the name, ~90/5/5), then, if needed, train documents
   move to valid until it is non-empty and to test until it holds `BUILTIN_TEST_MIN_BYTES`
   (150,000 bytes), taking them in order of their name's sha256 — a deterministic fix (the
   benchmark scores many windows of up to 2048 bytes on test).

The result depends only on the Python version's standard library, is cached per process, and
loads in well under a second.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import os
import re
import stat
import sysconfig
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from extrapos.core.errors import UserError

from .cache import cached_tokens, tokenizer_hash
from .hf_datasets import HF_PREFIX, load_hf_splits
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

SPLITS: tuple[str, str, str] = ("train", "valid", "test")
KNOWN_CORPORA: tuple[str, ...] = ("builtin",)

#: folders in a format of their own: (is_format(path), load(path, name)), tried in order;
#: `extrapos.data.dialogue` adds the DailyDialog format (imported by `extrapos.data`)
FOLDER_FORMATS: list[tuple[Callable[[Path], bool], Callable[[Path, str], Corpus]]] = []

BUILTIN_MAX_BYTES = 4_000_000
BUILTIN_TEST_MIN_BYTES = 150_000
BUILTIN_EXCLUDED_DIRS = frozenset(
    {"test", "tests", "idlelib", "lib2to3", "site-packages", "pydoc_data", "__pycache__"}
)
BUILTIN_RULES = __doc__

# percent buckets of sha256(name) % 100: [0, 90) train, [90, 95) valid, [95, 100) test
_TRAIN_PCT, _VALID_PCT = 90, 95
_SPLIT_WORDS = {
    "train": frozenset({"train"}),
    "valid": frozenset({"valid", "val", "validation", "dev"}),
    "test": frozenset({"test"}),
}
# a line that begins with a string literal (not a docstring quote) or a number
_DATA_LINE = re.compile(r"""[rbuRBU]{0,2}(?:'(?!'')|"(?!""))|[-+]?\.?\d""")


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
        return _corpus_from_hf(raw)
    path = Path(raw).expanduser()
    if path.is_file():
        return _corpus_from_file(raw, path)
    if path.is_dir():
        for is_format, load in FOLDER_FORMATS:
            if is_format(path):
                return load(path, raw)
        return _corpus_from_folder(raw, path)
    if path.exists():
        raise UserError(f"{raw!r} is neither a regular file nor a folder; pass a text file")
    if glob.has_magic(raw):
        return _corpus_from_glob(raw)
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


def _name_digest(name: str, salt: str = "") -> bytes:
    return hashlib.sha256((salt + name).encode("utf-8")).digest()


def _split_of(name: str) -> str:
    pct = int.from_bytes(_name_digest(name)[:8], "big") % 100
    return "train" if pct < _TRAIN_PCT else "valid" if pct < _VALID_PCT else "test"


def split_by_name_hash(names: Sequence[str]) -> dict[str, list[int]]:
    """Assign documents to splits by sha256 of their name (~90/5/5), stable across runs.

    Returns split -> indices into `names`, in the order given. If there are at least three
    documents, valid and test are made non-empty by moving train documents (in order of their
    name's sha256) — so the split never depends on anything but the names.
    """
    out: dict[str, list[int]] = {s: [] for s in SPLITS}
    for i, name in enumerate(names):
        out[_split_of(name)].append(i)
    if len(names) >= 3:
        for split in ("valid", "test"):
            if not out[split]:
                _move_from_train(out, split, names, lambda idx: len(idx) > 0, min_left=1)
    return out


def _move_from_train(
    out: dict[str, list[int]],
    split: str,
    names: Sequence[str],
    done: Callable[[list[int]], bool],
    min_left: int,
) -> None:
    """Move train indices to `split`, lowest sha256(name) first, until `done(out[split])`."""
    order = sorted(out["train"], key=lambda i: _name_digest(names[i]))
    for i in order:
        if done(out[split]) or len(out["train"]) <= min_left:
            break
        out["train"].remove(i)
        out[split].append(i)
    out[split].sort()


def _split_words(filename: str) -> set[str]:
    return {w for w in re.split(r"[^a-z0-9]+", filename.lower()) if w}


def _check_text(data: bytes, where: str) -> str:
    """Decode UTF-8 (a leading BOM dropped), or raise a `UserError` naming file and offset."""
    nul = data.find(b"\0")
    if nul >= 0:
        raise UserError(
            f"{where} looks binary (NUL byte at byte offset {nul}); "
            "pass UTF-8 text files only (remove or convert this file)"
        )
    skip = 3 if data.startswith(b"\xef\xbb\xbf") else 0  # UTF-8 byte order mark
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = skip + e.start
        raise UserError(
            f"{where} is not UTF-8 (invalid byte 0x{data[at]:02x} at byte offset {at}); "
            "convert it to UTF-8, e.g. `iconv -f latin1 -t utf-8`"
        ) from e


def _read_text(path: Path) -> str:
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or device would block or never end
            raise UserError(f"{path} is not a regular file (a pipe or device?); pass a text file")
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}; check its permissions") from e
    return _check_text(data, f"file {path}")


def _corpus_from_file(name: str, path: Path) -> Corpus:
    text = _read_text(path)
    if not text.strip():
        raise UserError(f"file {path} is empty (no text); pass a file with text in it")
    splits, sources = _cut_text(text, f"file {path}", path.name)
    return Corpus.from_splits(name, splits, sources)


def _cut_text(
    text: str, where: str, label: str, fractions: tuple[float, float] = (0.90, 0.95)
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Cut one text into train/valid/test by byte ranges (default 90/5/5), each cut moved to
    just after the next newline. Returns (splits, sources)."""
    data = text.encode("utf-8")
    n = len(data)

    def cut(frac: float) -> int:
        # after the next newline; in a text without one after that point (text8 is one 100 MB
        # line), after the next whitespace; else at the next UTF-8 character boundary
        start = int(n * frac)
        nl = data.find(b"\n", start)
        if nl >= 0:
            return nl + 1
        space = re.search(rb"\s", data[start:])
        if space is not None:
            return start + space.end()
        while start < n and data[start] & 0xC0 == 0x80:  # a UTF-8 continuation byte
            start += 1
        return start

    c1, c2 = cut(fractions[0]), cut(fractions[1])
    pieces = {"train": data[:c1], "valid": data[c1:c2], "test": data[c2:]}
    for split, piece in pieces.items():
        if not piece.strip() and (split != "valid" or fractions[0] < fractions[1]):
            raise UserError(
                f"{where} is too short to split at line boundaries (the {split!r} split is "
                "empty); use a longer text with many lines, or separate train/valid/test files"
            )
    splits = {s: [p.decode("utf-8")] for s, p in pieces.items()}
    bounds = {"train": (0, c1), "valid": (c1, c2), "test": (c2, n)}
    sources = {s: [f"{label}[{a}:{b}]"] for s, (a, b) in bounds.items()}
    return splits, sources


def _visible_files(root: Path, recursive: bool) -> list[Path]:
    if not recursive:
        return sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        files += [
            Path(dirpath) / f
            for f in filenames
            if not f.startswith(".") and (Path(dirpath) / f).is_file()  # no FIFOs, devices
        ]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _corpus_from_folder(name: str, root: Path) -> Corpus:
    top = _visible_files(root, recursive=False)
    return _corpus_from_paths(name, root, top, lambda: _visible_files(root, recursive=True))


def _corpus_from_glob(pattern: str) -> Corpus:
    expanded = os.path.expanduser(pattern)
    files = sorted(
        Path(p)
        for p in glob.glob(expanded, recursive=True)
        if Path(p).is_file() and not Path(p).name.startswith(".")
    )
    if not files:
        raise UserError(f"no files match {pattern!r}; check the pattern (quote it in the shell)")
    if len(files) == 1:
        return _corpus_from_file(pattern, files[0])
    # names relative to the pattern's folder without wildcards, as for a folder
    static = []
    for part in Path(expanded).parts:
        if glob.has_magic(part):
            break
        static.append(part)
    root = Path(*static) if static else Path(".")
    if root == Path(expanded) or not root.is_dir():
        root = root.parent
    return _corpus_from_paths(pattern, root, files, lambda: files)


def _corpus_from_paths(
    name: str, root: Path, top: list[Path], all_files: Callable[[], list[Path]]
) -> Corpus:
    """Files named train/valid/test among `top` are the splits; otherwise every file of
    `all_files()` is a document, split by the hash of its path relative to `root`."""
    by_split: dict[str, list[Path]] = {s: [] for s in SPLITS}
    for p in top:
        words = _split_words(p.name)
        hits = [s for s in SPLITS if words & _SPLIT_WORDS[s]]
        if len(hits) > 1:
            raise UserError(
                f"file {p} names more than one split ({', '.join(hits)}); rename it so its "
                "name contains only one of train / valid (val, dev) / test"
            )
        if hits:
            by_split[hits[0]].append(p)

    if all(by_split.values()):
        splits: dict[str, list[str]] = {}
        sources: dict[str, list[str]] = {}
        for split, paths in by_split.items():
            splits[split] = [_read_text(p) for p in paths]
            sources[split] = [p.name for p in paths]
        return Corpus.from_splits(name, splits, sources)

    names, docs = [], []
    for p in all_files():
        text = _read_text(p)
        if text.strip():
            names.append(p.relative_to(root).as_posix())
            docs.append(text)
    if not docs:
        raise UserError(f"{name} has no text files; put UTF-8 text files in it")
    if len(docs) < 3:
        raise UserError(
            f"{name} has {len(docs)} text file(s), too few to split into train/valid/test "
            "by file; add files, name them train/valid/test, or pass a single file (split by "
            "byte range)"
        )
    return _split_documents(name, names, docs, test_min_bytes=0)


def _corpus_from_hf(spec: str) -> Corpus:
    rows, names, lines = load_hf_splits(spec)
    missing = [s for s in ("valid", "test") if s not in rows]
    if lines:
        texts = {s: "".join(r if r.endswith("\n") else r + "\n" for r in rows[s]) for s in rows}
        splits = {s: [t] for s, t in texts.items()}
        sources = {s: [f"{s}[0:{len(rows[s])}]"] for s in rows}
        if missing:
            fractions = (0.90, 0.95) if len(missing) == 2 else (0.95, 0.95)
            carved, carved_sources = _cut_text(texts["train"], spec, "train", fractions)
            if missing == ["valid"]:
                carved["valid"], carved["test"] = carved["test"], carved["valid"]
                carved_sources["valid"] = carved_sources["test"]
            for s in ("train", *missing):
                splits[s], sources[s] = carved[s], carved_sources[s]
        return Corpus.from_splits(spec, splits, sources)
    splits, sources = dict(rows), dict(names)
    if missing:
        idx = split_by_name_hash(names["train"])
        train_rows, train_names = rows["train"], names["train"]
        keep = list(idx["train"]) + [
            i for s in ("valid", "test") if s not in missing for i in idx[s]
        ]
        splits["train"] = [train_rows[i] for i in sorted(keep)]
        sources["train"] = [train_names[i] for i in sorted(keep)]
        for s in missing:
            splits[s] = [train_rows[i] for i in idx[s]]
            sources[s] = [train_names[i] for i in idx[s]]
    return Corpus.from_splits(spec, splits, sources)


def _split_documents(
    name: str, names: Sequence[str], docs: Sequence[str], test_min_bytes: int
) -> Corpus:
    idx = split_by_name_hash(names)
    if test_min_bytes > 0:
        sizes = [len(d.encode("utf-8")) for d in docs]
        _move_from_train(
            idx,
            "test",
            names,
            lambda chosen: sum(sizes[i] for i in chosen) >= test_min_bytes,
            min_left=1,
        )
    splits = {s: [docs[i] for i in idx[s]] for s in SPLITS}
    sources = {s: [names[i] for i in idx[s]] for s in SPLITS}
    return Corpus.from_splits(name, splits, sources)


# ----------------------------------------------------------------------------- built-in


def _is_mostly_data(text: str) -> bool:
    """True if over half the non-space characters are on lines starting with a literal."""
    total = data = 0
    for line in text.splitlines():
        s = line.strip()
        total += len(s)
        if s and _DATA_LINE.match(s):
            data += len(s)
    return total > 0 and 2 * data > total


def _pydoc_topics() -> Iterable[tuple[str, str]]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions package the docs separately
        return []
    return [(f"pydoc_data.topics:{k}", v) for k, v in sorted(topics.items()) if v.strip()]


def _stdlib_sources(root: Path) -> list[str]:
    """Relative POSIX paths of candidate `.py` files (folder rules only)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [
            d for d in dirnames if d not in BUILTIN_EXCLUDED_DIRS and not d.startswith(".")
        ]
        rel = Path(dirpath).relative_to(root)
        out += [(rel / f).as_posix() for f in filenames if f.endswith(".py")]
    return out


@functools.lru_cache(maxsize=1)
def _builtin_corpus() -> Corpus:
    names: list[str] = []
    docs: list[str] = []
    total = 0
    for name, text in _pydoc_topics():
        names.append(name)
        docs.append(text)
        total += len(text.encode("utf-8"))

    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise UserError(
            f"the standard library sources are not at {root}, so the built-in corpus cannot be "
            "made; pass a text file or folder instead"
        )
    candidates = sorted(_stdlib_sources(root), key=lambda n: _name_digest(n, "extrapos-select:"))
    for rel in candidates:
        try:
            data = (root / rel).read_bytes()
            text = data.decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if not text.strip() or "\0" in text or _is_mostly_data(text):
            continue
        if total + len(data) > BUILTIN_MAX_BYTES:
            break
        names.append(rel)
        docs.append(text)
        total += len(data)

    order = sorted(range(len(names)), key=lambda i: names[i])
    names = [names[i] for i in order]
    docs = [docs[i] for i in order]
    return _split_documents("builtin", names, docs, test_min_bytes=BUILTIN_TEST_MIN_BYTES)
