"""Provenance: version, commit, torch version, machine and the command line; `--version`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from extrapos import __version__
from extrapos.cli import main
from extrapos.core.provenance import command_line, git_commit, provenance


def test_provenance_fields(tmp_path):
    record = provenance(["/x/extrapos/__main__.py", "bench", "--out", "my dir"])
    assert record["extrapos"] == __version__
    assert record["torch_version"] and record["machine"]
    assert record["command"] == "extrapos bench --out 'my dir'"
    assert git_commit(tmp_path) is None  # not a checkout
    repo = Path(__file__).parents[2]
    if (repo / ".git").exists():
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"],
                              capture_output=True, text=True).stdout.strip()  # fmt: skip
        assert git_commit(repo)["commit"] == head


def test_command_line_of_a_plain_script():
    assert command_line(["script.py", "-x"]) == "script.py -x"


def test_version_flag(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"extrapos {__version__}"


def test_top_level_exports_load_lazily():
    src = str(Path(__file__).parents[2] / "src")
    code = (
        "import sys, extrapos\n"
        "assert 'torch' not in sys.modules\n"
        "from extrapos import train, TrainConfig, load_corpus\n"
        "from extrapos.training.lm import train as t\n"
        "assert train is t and TrainConfig.__name__ == 'TrainConfig' and callable(load_corpus)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": src},
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
