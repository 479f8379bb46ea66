"""A run directory is never clobbered: what extrapos did not write is never deleted, a second
writer is refused, and a resume with any other setting names the field that differs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from extrapos.cli import main
from extrapos.core.files import LOCK_NAME

TINY = ["--steps", "2", "--train-len", "16", "--n-layer", "1", "--d-model", "32"]


def _train(out: Path, *extra: str) -> list[str]:
    return ["train", "--encoding", "rope", *TINY, "--out", str(out), *extra]


def _last_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    return lines[-1] if lines else ""


@pytest.fixture
def text(tmp_path) -> tuple[Path, Path]:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("".join(f"line {i} of the first text\n" for i in range(400)))
    b.write_text("".join(f"row {i} in another text!\n" for i in range(400)))
    return a, b


def test_fresh_run_never_deletes_what_is_not_ours(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoints" / "mine").mkdir(parents=True)
    (out / "checkpoints" / "mine" / "notes.txt").write_text("precious")
    (out / ".draft.tmp").write_text("also precious")
    for extra in ((), ("--overwrite",)):
        assert main(_train(out, *extra)) == 2
        assert "holds entries extrapos did not write (mine)" in _last_error(capsys)
    assert (out / "checkpoints" / "mine" / "notes.txt").read_text() == "precious"
    # without the foreign entry: a fresh run proceeds, the hidden .tmp file is not ours and stays
    (out / "checkpoints" / "mine" / "notes.txt").rename(tmp_path / "notes.txt")
    (out / "checkpoints" / "mine").rmdir()
    assert main(_train(out)) == 0
    assert (out / ".draft.tmp").read_text() == "also precious"
    # our own checkpoints are replaced only with --overwrite
    assert main(_train(out)) == 2
    assert "pass --resume to continue it, --overwrite" in _last_error(capsys)
    assert main(_train(out, "--overwrite")) == 0
    assert not (out / LOCK_NAME).exists()


def test_a_second_training_on_the_same_output_is_refused(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": "src", "OMP_NUM_THREADS": "1"}
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time\nfrom extrapos.core.files import run_lock\n"
         f"with run_lock({str(out)!r}):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        second = subprocess.run(
            [sys.executable, "-m", "extrapos", *_train(out)], capture_output=True, text=True,
            env=env,
        )  # fmt: skip
        assert second.returncode == 2
        assert f"in use by another extrapos process (pid {holder.pid}" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        holder.kill()
        holder.wait()
    assert main(_train(out)) == 0  # the killed holder's lock is stale and does not block


def test_resume_with_other_data_or_tokenizer_names_the_field(tmp_path, text, capsys):
    a, b = text
    out = tmp_path / "run"
    assert main(_train(out, "--data", str(a), "--save-every", "1")) == 0
    assert main(_train(out, "--data", str(b), "--resume")) == 2
    assert "another data.content_hash (saved" in _last_error(capsys)
    assert main(_train(out, "--data", str(a), "--resume", "--lr", "1e-4")) == 2
    assert "another train.lr (saved 0.002, now 0.0001)" in _last_error(capsys)
    bpe = tmp_path / "bpe"
    base = ["--data", str(a), "--tokenizer", "bpe", "--vocab-size", "300"]
    assert main(_train(bpe, *base)) == 0
    assert main(_train(bpe, *base[:-1], "320", "--resume")) == 2
    assert "another data.vocab_size (saved 300, now 320)" in _last_error(capsys)
    assert main(_train(out, "--data", str(a), "--resume")) == 0


def test_a_run_config_missing_a_field_is_named(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_train(out)) == 0
    config = json.loads((out / "config.json").read_text())
    del config["model"]["encoding_params"]
    (out / "config.json").write_text(json.dumps(config))
    assert main(["eval", str(out), "--lengths", "16"]) == 2
    assert "lacks model.encoding_params" in _last_error(capsys)


@pytest.mark.parametrize("flag", ["--out", "--data"])
def test_empty_paths_are_refused(tmp_path, flag, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = _train(Path("")) if flag == "--out" else _train(tmp_path / "run", "--data", "")
    argv[argv.index("--out") + 1] = "" if flag == "--out" else argv[argv.index("--out") + 1]
    assert main(argv) == 2
    assert f"argument {flag}: empty" in _last_error(capsys)
    assert list(tmp_path.iterdir()) == []
