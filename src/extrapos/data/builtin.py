"""The built-in corpus: zero downloads, made from what every Python install has.

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

import os
import re
import sysconfig
from collections.abc import Iterable
from pathlib import Path

from extrapos.core.errors import UserError

from .splitting import name_digest

__all__ = [
    "BUILTIN_EXCLUDED_DIRS",
    "BUILTIN_MAX_BYTES",
    "BUILTIN_RULES",
    "BUILTIN_TEST_MIN_BYTES",
    "builtin_documents",
]

BUILTIN_MAX_BYTES = 4_000_000
BUILTIN_TEST_MIN_BYTES = 150_000
BUILTIN_EXCLUDED_DIRS = frozenset(
    {"test", "tests", "idlelib", "lib2to3", "site-packages", "pydoc_data", "__pycache__"}
)
BUILTIN_RULES = __doc__
# a line that begins with a string literal (not a docstring quote) or a number
_DATA_LINE = re.compile(r"""[rbuRBU]{0,2}(?:'(?!'')|"(?!""))|[-+]?\.?\d""")


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


def builtin_documents() -> tuple[list[str], list[str]]:
    """(names, documents) of the built-in corpus, sorted by name (rules 1-3 above); rule 4,
    the split, is applied by `extrapos.data.corpus`."""
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
    candidates = sorted(_stdlib_sources(root), key=lambda n: name_digest(n, "extrapos-select:"))
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
    return names, docs
