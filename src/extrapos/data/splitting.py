"""Splitting documents into train/valid/test, deterministically: by the sha256 of each
document's name (`split_by_name_hash`, ~90/5/5), or one text by byte ranges cut at line
boundaries (`cut_text`, 90/5/5). Nothing here depends on anything but the names and the text.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence

from extrapos.core.errors import UserError

__all__ = ["SPLITS", "cut_text", "name_digest", "split_by_name_hash", "split_documents"]

SPLITS: tuple[str, str, str] = ("train", "valid", "test")

# percent buckets of sha256(name) % 100: [0, 90) train, [90, 95) valid, [95, 100) test
_TRAIN_PCT, _VALID_PCT = 90, 95


def name_digest(name: str, salt: str = "") -> bytes:
    return hashlib.sha256((salt + name).encode("utf-8")).digest()


def _split_of(name: str) -> str:
    pct = int.from_bytes(name_digest(name)[:8], "big") % 100
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
    order = sorted(out["train"], key=lambda i: name_digest(names[i]))
    for i in order:
        if done(out[split]) or len(out["train"]) <= min_left:
            break
        out["train"].remove(i)
        out[split].append(i)
    out[split].sort()


def split_documents(
    names: Sequence[str], docs: Sequence[str], test_min_bytes: int
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Documents split by `split_by_name_hash`; then, while test holds fewer than
    `test_min_bytes` UTF-8 bytes, train documents move to it. Returns (splits, sources)."""
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
    return splits, sources


def cut_text(
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
