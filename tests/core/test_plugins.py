"""An encoding defined outside the package, named in EXTRAPOS_PLUGINS, trains, evaluates,
reloads and benches from the command line (each command a fresh process, as a user runs it);
a plugin that fails to import is a one-line error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PLUGIN = '''
"""A plugin encoding: one fixed linear recency bias -0.1·(i - j) on every head."""
import torch

from extrapos.encodings import PositionalEncoding, register


@register("linear_recency")
class LinearRecency(PositionalEncoding):
    """Score bias -0.1·(i - j), the same for every head (a test plugin)."""

    def __init__(self, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads

    def distance_bias(self, num_distances: int) -> torch.Tensor:
        d = torch.arange(num_distances, dtype=torch.float32)
        return (-0.1 * d).expand(self.num_heads, -1).contiguous()
'''


def _run(
    args: list[str], tmp_path: Path, plugins: str = "my_plugin"
) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "EXTRAPOS_PLUGINS": plugins,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(SRC)]),
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "extrapos", *args], capture_output=True, text=True, env=env,
        cwd=tmp_path, timeout=600,
    )  # fmt: skip


@pytest.mark.e2e
def test_a_plugin_encoding_trains_evaluates_and_benches(tmp_path):
    (tmp_path / "my_plugin.py").write_text(PLUGIN)
    listed = _run(["list"], tmp_path)
    assert listed.returncode == 0 and "linear_recency" in listed.stdout
    train = ["train", "--encoding", "linear_recency", "--steps", "3", "--train-len", "32",
             "--batch-size", "2", "--n-layer", "1", "--d-model", "16", "--n-head", "2",
             "--eval-every", "0", "--out", "run"]  # fmt: skip
    done = _run(train, tmp_path)
    assert done.returncode == 0, done.stderr
    evaluated = _run(
        ["eval", "run", "--lengths", "32,64", "--max-tokens", "256", "--out", "e.json"], tmp_path
    )
    assert evaluated.returncode == 0, evaluated.stderr
    records = json.loads((tmp_path / "e.json").read_text())["results"]
    assert [r["length"] for r in records] == [32, 64] and all(r["ppl"] > 1 for r in records)
    bench = ["bench", "--methods", "linear_recency,nope", "--steps", "2", "--train-len", "32",
             "--eval-lens", "32,64", "--eval-tokens", "128", "--tasks", "none",
             "--passkey-steps", "0", "--no-memory", "--extensions", "none", "--n-layer", "1",
             "--d-model", "16", "--n-head", "2", "--out", "b"]  # fmt: skip
    benched = _run(bench, tmp_path)
    assert benched.returncode == 0, benched.stderr
    runs = json.loads((tmp_path / "b" / "results.json").read_text())["runs"]
    assert {r["method"] for r in runs} == {"linear_recency", "nope"}
    # without the plugin, the run directory names an encoding nobody registered: one line
    orphan = _run(["eval", "run", "--lengths", "32"], tmp_path, plugins="")
    assert orphan.returncode == 2 and "unknown encoding 'linear_recency'" in orphan.stderr
    assert "Traceback" not in orphan.stderr


def test_a_broken_plugin_is_a_one_line_error(tmp_path):
    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('boom')\n")
    done = _run(["list"], tmp_path, plugins="broken_plugin")
    assert done.returncode == 2
    assert (
        "plugin 'broken_plugin' (from EXTRAPOS_PLUGINS) failed to import: RuntimeError: boom"
        in done.stderr
    )
    assert "Traceback" not in done.stderr
