"""Every row of the README's bad-input table, through the command line: exit code 2, one line
on stderr that names the problem (and the fix), no traceback, and no partial file left behind.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest

from extrapos.cli import main

pytestmark = pytest.mark.e2e  # end to end: benches and CLI runs

TINY = ["--steps", "2", "--train-len", "16", "--n-layer", "1", "--d-model", "32"]


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> Path:
    """Two tiny runs (rope, learned with 32 positions) and the bad data files."""
    root = tmp_path_factory.mktemp("bad")
    assert main(["train", "--encoding", "rope", *TINY, "--save-every", "1",
                 "--out", str(root / "rope")]) == 0  # fmt: skip
    learned = ["--encoding", "learned", "--encoding-params", '{"max_len": 32}']
    assert main(["train", *learned, *TINY, "--out", str(root / "learned")]) == 0
    (root / "empty.txt").write_text("")
    (root / "binary.bin").write_bytes(bytes(range(256)) * 8)
    (root / "latin1.txt").write_bytes("café au lait\n".encode("latin-1") * 200)
    (root / "lines.txt").write_text("".join(f"line {i} of a short text\n" for i in range(300)))
    weights = "model.safetensors"
    for name in ("corrupt", "truncated", "mismatched", "bad_config", "bad_state"):
        shutil.copytree(root / "rope", root / name)
    (root / "corrupt" / weights).write_bytes(b"\x00\x01 not a safetensors file" * 40)
    data = (root / "rope" / weights).read_bytes()
    (root / "truncated" / weights).write_bytes(data[: len(data) // 2])
    shutil.copy(root / "learned" / weights, root / "mismatched" / weights)
    (root / "bad_config" / "config.json").write_text('{"model": {')
    (state,) = (root / "bad_state").glob("checkpoints/*/train_state.pt")
    state.write_bytes(state.read_bytes()[:100])
    return root


# (row of the README table, argv with {dir} for the fixture's folder, words the message must hold)
CASES = [
    ("unknown encoding", ["train", "--encoding", "nosuch", "--out", "{dir}/o"],
     "unknown encoding 'nosuch'; known encodings: alibi, cope"),
    ("unknown scaling", ["train", "--encoding", "rope", "--encoding-params",
                         '{"scaling": {"rope_type": "nosuch", "factor": 2}}', "--out", "{dir}/o"],
     "unknown rope_type 'nosuch'; known: default, linear, ntk, dynamic, yarn"),
    ("unknown extension", ["eval", "{dir}/rope", "--lengths", "16", "--extend", "nosuch"],
     "invalid choice: 'nosuch' (choose from 'linear'"),
    ("unknown task", ["tasks", "--task", "nosuch", "--encoding", "rope"],
     "unknown task 'nosuch'; known tasks: addition"),
    ("unknown preset", ["bench", "--preset", "huge", "--out", "{dir}/o"],
     "invalid choice: 'huge' (choose from 'quick', 'standard', 'literature', 'paper')"),
    ("unknown bench task", ["bench", "--tasks", "nosuch", "--out", "{dir}/o"],
     "unknown task 'nosuch'; known tasks"),
    ("zero factor", ["train", "--encoding", "rope", "--encoding-params",
                     '{"scaling": {"rope_type": "linear", "factor": 0}}', "--out", "{dir}/o"],
     "rope_scaling['factor'] must be a number > 0, got 0"),
    ("negative factor", ["train", "--encoding", "rope", "--encoding-params",
                         '{"scaling": {"rope_type": "yarn", "factor": -2}}', "--out", "{dir}/o"],
     "rope_scaling['factor'] must be a number > 0, got -2"),
    ("odd rotary_dim", ["train", "--encoding", "rope", "--encoding-params", '{"rotary_dim": 7}',
                        "--out", "{dir}/o"],
     "rotary_dim must be a positive even number <= head_dim=32, got 7"),
    ("rotary_dim too large", ["train", "--encoding", "rope", "--encoding-params",
                              '{"rotary_dim": 64}', "--out", "{dir}/o"],
     "rotary_dim must be a positive even number <= head_dim=32, got 64"),
    ("unknown parameter", ["train", "--encoding", "alibi", "--encoding-params", '{"slope": 1}',
                           "--out", "{dir}/o"],
     "encoding 'alibi' has no parameter(s) slope; accepted:"),
    ("zero heads", ["train", "--encoding", "rope", "--n-head", "0", "--out", "{dir}/o"],
     "n_head must be a positive integer, got 0"),
    ("negative train length", ["train", "--encoding", "rope", "--train-len", "-5",
                               "--out", "{dir}/o"],
     "train_len must be >= 1, got -5"),
    ("negative eval length", ["eval", "{dir}/rope", "--lengths", "16,-4"],
     "argument --lengths: lengths must be >= 1, got -4 in '16,-4'"),
    ("zero diagnose length", ["diagnose", "{dir}/rope", "--lengths", "0"],
     "argument --lengths: lengths must be >= 1, got 0"),
    ("zero passkey length", ["passkey", "{dir}/rope", "--lengths", "16,0"],
     "argument --lengths: lengths must be >= 1, got 0"),
    ("duplicate extensions", ["bench", "--extensions", "yarn,ntk,yarn", "--out", "{dir}/o"],
     "argument --extensions: 'yarn' is listed twice in 'yarn,ntk,yarn'"),
    ("duplicate protocols", ["bench", "--protocols", "sliding,sliding", "--out", "{dir}/o"],
     "argument --protocols: 'sliding' is listed twice"),
    ("non-UTF-8 prompt", ["generate", "{dir}/rope", "--prompt", "caf\udce9"],
     "argument --prompt (caf\\xe9) is not valid UTF-8"),
    ("non-UTF-8 file name", ["eval", "{dir}/r\udcffpe", "--lengths", "16"],
     "r\\xffpe) is not valid UTF-8; extrapos takes UTF-8 text and file names"),
    ("zero bench length", ["bench", "--eval-lens", "16,0", "--out", "{dir}/o"],
     "--eval-lens must be positive"),
    ("bad bench jobs", ["bench", "--jobs", "many", "--out", "{dir}/o"],
     "--jobs takes a number of workers or 'auto', got 'many'"),
    ("zero bench jobs", ["bench", "--jobs", "0", "--out", "{dir}/o"], "--jobs must be >= 1, got 0"),
    ("jobs outside the lm suite", ["bench", "--suite", "translation", "--jobs", "2", "--data",
                                   "{dir}", "--src", "en", "--tgt", "de", "--out", "{dir}/o"],
     "--jobs/--threads-per-job apply to --suite lm, not --suite translation"),
    ("negative steps", ["train", "--encoding", "rope", "--steps", "-1", "--out", "{dir}/o"],
     "steps must be >= 1, got -1"),
    ("learned table past its end", ["eval", "{dir}/learned", "--lengths", "16,64"],
     "table of max_len=32 positions, but position 63 was requested"),
    ("missing data", ["train", "--encoding", "rope", "--data", "{dir}/nosuch.txt",
                      "--out", "{dir}/o"],
     "no such file or folder: '"),
    ("empty data", ["train", "--encoding", "rope", "--data", "{dir}/empty.txt", "--out", "{dir}/o"],
     "empty.txt is empty (no text)"),
    ("binary data", ["train", "--encoding", "rope", "--data", "{dir}/binary.bin",
                     "--out", "{dir}/o"],
     "binary.bin looks binary (NUL byte at byte offset 0); pass UTF-8 text"),
    ("non-UTF-8 data", ["train", "--encoding", "rope", "--data", "{dir}/latin1.txt",
                        "--out", "{dir}/o"],
     "latin1.txt is not UTF-8 (invalid byte 0xe9 at byte offset 3); convert it to UTF-8"),
    ("training data shorter than the length", ["train", "--encoding", "rope", "--data",
                                               "{dir}/lines.txt", "--train-len", "100000",
                                               "--out", "{dir}/o"],
     "fewer than train_len + 2 = 100002; use more data or a shorter --train-len"),
    ("evaluation data shorter than the length", ["eval", "{dir}/rope", "--lengths", "100000",
                                                 "--data", "{dir}/lines.txt"],
     "fewer than the longest length + 1 = 100001; use shorter lengths or more data"),
    ("corrupt checkpoint", ["eval", "{dir}/corrupt", "--lengths", "16"],
     "is corrupt, truncated or from another model"),
    ("truncated checkpoint", ["eval", "{dir}/truncated", "--lengths", "16"],
     "is corrupt, truncated or from another model"),
    ("mismatched checkpoint", ["eval", "{dir}/mismatched", "--lengths", "16"],
     "does not match its config (missing [], unexpected ['encoding.table'])"),
    ("corrupt run config", ["eval", "{dir}/bad_config", "--lengths", "16"],
     "config.json is corrupt"),
    ("corrupt training state", ["train", "--encoding", "rope", *TINY, "--steps", "4",
                                "--save-every", "1", "--out", "{dir}/bad_state", "--resume"],
     "train_state.pt is corrupt"),
    ("non-finite loss", ["train", "--encoding", "rope", *TINY, "--lr", "1e12",
                         "--warmup-steps", "1", "--out", "{dir}/nan"],
     "the loss became nan at step 2; the run stopped before updating the weights"),
]  # fmt: skip


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(("row", "argv", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_row(row, argv, message, place, capsys):
    before = _snapshot(place)
    code = main([a.replace("{dir}", str(place)) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()[-1:]  # progress bars end in \r, not \n
    assert code == 2, row
    assert err and message in err[0] and err[0].startswith("extrapos"), err
    after = _snapshot(place)
    assert not [p for p in after if p.endswith(".tmp")], "a temporary file was left behind"
    changed = {p for p in after if before.get(p) != after[p]}
    # nothing written but a run's log (the non-finite row logs the step that went wrong)
    assert all(p.endswith("log.csv") for p in changed), changed
    assert not [p for p in after if p.startswith("o/")], "a failed run left files in --out"


def test_one_line_even_with_progress_bars(place, capsys):
    """stderr carries progress bars (carriage returns) and exactly one newline-ended line."""
    main(["train", "--encoding", "rope", *TINY, "--lr", "1e12", "--warmup-steps", "1",
          "--out", str(place / "nan2")])  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_full_disk_fails_cleanly_and_keeps_the_old_files(place, capsys, monkeypatch):
    """Simulate ENOSPC when a file is flushed: the command exits 2 naming the file and the fix,
    the half-written temporary file is removed, and a file written before is untouched."""
    from extrapos.core.errors import UserError
    from extrapos.core.files import write_json

    results = place / "disk" / "results.json"
    write_json(results, {"runs": ["finished"]})

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("extrapos.core.files.os.fsync", full)
    with pytest.raises(UserError, match="No space left on device; free space"):
        write_json(results, {"runs": ["finished", "new"]})
    assert json.loads(results.read_text()) == {"runs": ["finished"]}
    code = main(["train", "--encoding", "rope", *TINY, "--out", str(place / "disk" / "run")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert "could not write" in err and "No space left on device; free space" in err
    files = {p.name for p in (place / "disk").rglob("*") if p.is_file()}
    # no half-written checkpoint, config or temporary file; the step log has whole lines only
    assert files <= {"results.json", "log.csv"}
    log = place / "disk" / "run" / "log.csv"
    assert not log.exists() or log.read_text().endswith("\n")


def test_a_closed_pipe_ends_quietly(tmp_path):
    """`extrapos list | head -1`: the reader is gone before extrapos writes; exit 141 (the
    shell's code for SIGPIPE), no traceback and no 'Exception ignored' at exit."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "extrapos", "list"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )
    proc.stdout.close()  # before the child has written anything
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) in (0, 141), err
    assert err == "", err


def test_output_the_terminal_cannot_encode_is_escaped(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    env["PYTHONIOENCODING"] = "ascii"
    done = subprocess.run(
        [sys.executable, "-m", "extrapos", "list"], capture_output=True, env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr.decode()
    assert b"m_h \\xb7 (i - j)" in done.stdout and b"Traceback" not in done.stderr


@pytest.mark.parametrize(
    "where",
    [
        "extrapos.cli.build_parser",
        "extrapos.core.plugins.load_plugins",
        "extrapos.cli.info.cmd_list",
    ],
)
def test_ctrl_c_anywhere_is_one_line_and_exit_130(where, monkeypatch, capsys):
    """While the parser is built, plugins load (start-up) or the command runs."""
    import importlib

    module, name = where.rsplit(".", 1)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(module), name, interrupted)
    assert main(["list"]) == 130
    assert capsys.readouterr().err == "extrapos: interrupted\n"


def test_a_failed_bench_leaves_no_empty_output_folder(tmp_path, monkeypatch):
    """`bench` with a bad --data and the default `bench_out` used to leave an empty folder;
    a folder that existed before stays."""
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--data", str(tmp_path / "missing")]) == 2
    assert not (tmp_path / "bench_out").exists()
    (tmp_path / "bench_out").mkdir()
    assert main(["bench", "--data", str(tmp_path / "missing")]) == 2
    assert (tmp_path / "bench_out").is_dir()
