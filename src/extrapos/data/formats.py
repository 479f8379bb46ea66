"""Corpus formats: a text file, a folder of files, a glob, a Hugging Face dataset, each read
into `(splits, sources)` (split -> documents, split -> one name per document) by the rules in
`extrapos.data.corpus`; `load_corpus` there picks the format and builds the `Corpus`.
"""

from __future__ import annotations

import glob
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

from extrapos.core.errors import UserError

from .hf_datasets import load_hf_splits
from .splitting import SPLITS, cut_text, split_by_name_hash, split_documents

__all__ = [
    "check_text",
    "read_text",
    "splits_from_file",
    "splits_from_folder",
    "splits_from_glob",
    "splits_from_hf",
]

#: (split -> documents, split -> one name per document)
Splits = tuple[dict[str, list[str]], dict[str, list[str]]]

_SPLIT_WORDS = {
    "train": frozenset({"train"}),
    "valid": frozenset({"valid", "val", "validation", "dev"}),
    "test": frozenset({"test"}),
}


def _split_words(filename: str) -> set[str]:
    return {w for w in re.split(r"[^a-z0-9]+", filename.lower()) if w}


def check_text(data: bytes, where: str) -> str:
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


def read_text(path: Path) -> str:
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or device would block or never end
            raise UserError(f"{path} is not a regular file (a pipe or device?); pass a text file")
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}; check its permissions") from e
    return check_text(data, f"file {path}")


def splits_from_file(path: Path) -> Splits:
    text = read_text(path)
    if not text.strip():
        raise UserError(f"file {path} is empty (no text); pass a file with text in it")
    return cut_text(text, f"file {path}", path.name)


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


def splits_from_folder(name: str, root: Path) -> Splits:
    top = _visible_files(root, recursive=False)
    return _splits_from_paths(name, root, top, lambda: _visible_files(root, recursive=True))


def splits_from_glob(pattern: str) -> Splits:
    expanded = os.path.expanduser(pattern)
    files = sorted(
        Path(p)
        for p in glob.glob(expanded, recursive=True)
        if Path(p).is_file() and not Path(p).name.startswith(".")
    )
    if not files:
        raise UserError(f"no files match {pattern!r}; check the pattern (quote it in the shell)")
    if len(files) == 1:
        return splits_from_file(files[0])
    # names relative to the pattern's folder without wildcards, as for a folder
    static = []
    for part in Path(expanded).parts:
        if glob.has_magic(part):
            break
        static.append(part)
    root = Path(*static) if static else Path(".")
    if root == Path(expanded) or not root.is_dir():
        root = root.parent
    return _splits_from_paths(pattern, root, files, lambda: files)


def _splits_from_paths(
    name: str, root: Path, top: list[Path], all_files: Callable[[], list[Path]]
) -> Splits:
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
            splits[split] = [read_text(p) for p in paths]
            sources[split] = [p.name for p in paths]
        return splits, sources

    names, docs = [], []
    for p in all_files():
        text = read_text(p)
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
    return split_documents(names, docs, test_min_bytes=0)


def splits_from_hf(spec: str) -> Splits:
    rows, names, lines = load_hf_splits(spec)
    missing = [s for s in ("valid", "test") if s not in rows]
    if lines:
        texts = {s: "".join(r if r.endswith("\n") else r + "\n" for r in rows[s]) for s in rows}
        splits = {s: [t] for s, t in texts.items()}
        sources = {s: [f"{s}[0:{len(rows[s])}]"] for s in rows}
        if missing:
            fractions = (0.90, 0.95) if len(missing) == 2 else (0.95, 0.95)
            carved, carved_sources = cut_text(texts["train"], spec, "train", fractions)
            if missing == ["valid"]:
                carved["valid"], carved["test"] = carved["test"], carved["valid"]
                carved_sources["valid"] = carved_sources["test"]
            for s in ("train", *missing):
                splits[s], sources[s] = carved[s], carved_sources[s]
        return splits, sources
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
    return splits, sources
