"""Where a result came from: the extrapos version, the git commit when run from a checkout, the
torch version, the machine and the exact command line (no torch import: `importlib.metadata`)."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def git_commit(where: str | Path | None = None) -> dict[str, Any] | None:
    """{"commit": sha, "dirty": bool} of the checkout holding `where` (default: this package's
    source), or None when it is not in a git checkout (an installed wheel) or git is missing."""
    folder = Path(where) if where is not None else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
        status = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": sha, "dirty": bool(status.strip())} if sha else None


_invocation: list[str] | None = None


def record_invocation(args: list[str]) -> None:
    """The arguments `extrapos.cli.main` was called with (what `command_line` reports when
    the CLI runs inside another program, e.g. a test or a notebook, where sys.argv is that
    program's)."""
    global _invocation
    _invocation = ["extrapos", *args]


def command_line(argv: list[str] | None = None) -> str:
    """The command as a user would retype it: `extrapos …` when run through the CLI."""
    if argv is None and _invocation is not None:
        argv = _invocation
    argv = list(sys.argv if argv is None else argv)
    if argv and (argv[0].endswith(("extrapos", "__main__.py")) or argv[0] == "-m"):
        argv = ["extrapos", *argv[1:]]
    return shlex.join(argv)


def machine() -> str:
    """CPU model (or architecture), core count, and the CUDA device when torch sees one."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} logical cores"
    torch = sys.modules.get("torch")  # only when already imported: never import it here
    if torch is not None and torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name(0)}"
    return text


def provenance(argv: list[str] | None = None) -> dict[str, Any]:
    from extrapos import __version__

    git = git_commit()
    return {
        "extrapos": __version__,
        "git_commit": git["commit"] if git else None,
        "git_dirty": git["dirty"] if git else None,
        "torch_version": package_version("torch"),
        "machine": machine(),
        "command": command_line(argv),
    }
