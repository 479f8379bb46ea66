"""Every ```python snippet of README.md runs, in order, in a fresh folder (a snippet may use
what an earlier one defined)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
_SNIPPET = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def snippets(path: Path) -> list[str]:
    return _SNIPPET.findall(path.read_text(encoding="utf-8"))


def _run_all(codes: list[str], where: Path, monkeypatch) -> None:
    monkeypatch.chdir(where)
    namespace: dict = {"__name__": "__readme__"}
    for i, code in enumerate(codes):
        exec(compile(code, f"README snippet {i + 1}", "exec"), namespace)  # noqa: S102


def test_readme_python_snippets_run(tmp_path, monkeypatch):
    codes = snippets(ROOT / "README.md")
    assert codes, "README.md has no python snippet"
    _run_all(codes, tmp_path, monkeypatch)
