"""The command line: the tiny bench end to end, eval/generate on its runs, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from extrapos.cli import main
from extrapos.encodings import list_encodings

pytestmark = pytest.mark.e2e  # end to end: benches and CLI runs

TINY_BENCH = ["bench", "--steps", "3", "--train-len", "16", "--eval-lens", "16,32,64",
              "--eval-tokens", "256", "--extensions", "linear,yarn", "--seeds", "0,1",
              "--task-steps", "2", "--no-memory"]  # fmt: skip


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert main([*TINY_BENCH, "--methods", "rope,alibi,learned", "--out", str(out)]) == 0
    return out


def test_bench_writes_results_and_report(bench_dir):
    results = json.loads((bench_dir / "results.json").read_text())
    assert results["version"] == 1
    assert results["train_len"] == 16 and results["eval_lens"] == [16, 32, 64]
    methods = ["rope", "rope+linear", "rope+yarn", "alibi", "learned"]
    assert [(r["method"], r["seed"]) for r in results["runs"]] == [
        (m, s) for s in (0, 1) for m in methods
    ]
    for run in results["runs"]:
        assert set(run["ppl"]) == {"16", "32", "64"}
        assert set(run["ppl_by_protocol"]) == {"nonoverlap", "sliding"}
        assert all(p is not None and p > 1 for p in run["ppl"].values())
        assert run["num_params"] > 0 and run["train_seconds"] >= 0
        assert run["tokens_per_second"] > 0 or run.get("extends") == "rope"
        assert len(set(run["tokens_scored"].values())) == 1  # same targets at every length
    for name in (
        "report.md",
        "report.html",
        "results.csv",
        "ppl_vs_length.png",
        "loss_vs_position.png",
    ):
        assert (bench_dir / name).stat().st_size > 0
    report = (bench_dir / "report.md").read_text()
    assert "| rope | " in report and " ± " in report  # two seeds: mean ± 95% interval
    rows = (bench_dir / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 5 * 2 * 3  # header + seeds × methods × protocols × lengths
    assert "data:image/png;base64," in (bench_dir / "report.html").read_text()
    # the quick preset's task runs; its passkey fine-tune cannot fit a prompt in 16 bytes
    tasks = {(r["method"], r["task"], r["seed"]) for r in results["task_runs"]}
    assert tasks == {(m, "selective_copy", s) for m in ("rope", "alibi", "learned") for s in (0, 1)}
    assert all("shorter than the prompt" in r["error"] for r in results["passkey_runs"])
    assert "## Synthetic tasks" in report and "shorter than the prompt" in report


def test_bench_rerun_keeps_finished_methods(bench_dir, capsys):
    before = json.loads((bench_dir / "results.json").read_text())
    assert main([*TINY_BENCH, "--methods", "rope,alibi,learned", "--out", str(bench_dir)]) == 0
    after = json.loads((bench_dir / "results.json").read_text())
    assert after["runs"] == before["runs"]
    assert "kept from" in capsys.readouterr().err


def test_eval_and_generate_on_a_bench_run(bench_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    run = str(bench_dir / "runs" / "alibi-seed0")
    argv = ["eval", run, "--lengths", "16,64", "--protocol", "sliding", "--max-tokens", "512"]
    assert main([*argv, "--out", str(out)]) == 0
    records = json.loads(out.read_text())["results"]
    assert [r["length"] for r in records] == [16, 64] and records[1]["stride"] == 32
    assert (
        main(["generate", run, "--prompt", "def ", "--max-new-tokens", "5", "--temperature", "0"])
        == 0
    )
    assert capsys.readouterr().out.splitlines()[-1].startswith("def ")


def test_list_names_every_encoding(capsys):
    assert main(["list"]) == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line[:1].strip()}
    assert listed == set(list_encodings())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["bench", "--methods", "rope,nosuch"],
            "unknown encoding 'nosuch'; known encodings: alibi",
        ),
        (["train", "--encoding", "rope", "--steps", "0", "--out", "x"], "steps must be >= 1"),
        (
            ["train", "--encoding", "rope", "--encoding-params", '{"rotary_dim": 7}', "--out", "x"],
            "rotary_dim",
        ),
        (["train", "--encoding", "rope", "--data", "/no/such/file", "--out", "x"], "/no/such/file"),
        (["eval", "/no/such/run", "--lengths", "16"], "does not exist"),
        (["bench", "--eval-lens", "16,0"], "--eval-lens must be positive"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_console_entry_point_exit_code(tmp_path):
    """The real process: exit code 2, one line on stderr, no traceback; --debug shows it."""
    cmd = [
        sys.executable,
        "-m",
        "extrapos",
        "train",
        "--encoding",
        "nosuch",
        "--out",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("extrapos: error: unknown encoding 'nosuch'")
    assert "Traceback" not in proc.stderr
    debug = subprocess.run(
        [cmd[0], "-m", "extrapos", "--debug", *cmd[3:]], capture_output=True, text=True, check=False
    )
    assert debug.returncode == 2 and "Traceback" in debug.stderr


def test_eval_and_generate_with_a_rope_extension(bench_dir, tmp_path, capsys):
    from extrapos.cli.args import EXTENSION_NAMES
    from extrapos.probes.extensions import EXTENSIONS

    assert EXTENSION_NAMES == EXTENSIONS
    run = str(bench_dir / "runs" / "rope-seed0")
    out = tmp_path / "ext.json"
    argv = ["eval", run, "--lengths", "16,64", "--extend", "yarn", "--max-tokens", "256"]
    assert main([*argv, "--out", str(out)]) == 0
    records = json.loads(out.read_text())["results"]
    assert [r["extension"] for r in records] == ["yarn", "yarn"]
    assert records[0]["tokens"] == records[1]["tokens"]  # the same targets at both lengths
    plain = tmp_path / "plain.json"
    assert main([*argv[:4], "--max-tokens", "256", "--out", str(plain)]) == 0
    # at the train length (factor 1) YaRN is plain RoPE; at 4× it is YaRN with factor 4
    base = json.loads(plain.read_text())["results"]
    assert records[0]["ppl"] == pytest.approx(base[0]["ppl"], rel=1e-6)
    from extrapos.data import load_corpus
    from extrapos.probes.extensions import rope_extended
    from extrapos.probes.perplexity import perplexity
    from extrapos.training.run_dir import load_run

    model = load_run(run).model
    tokens = load_corpus().tokens("test", load_run(run).tokenizer)[:257]
    plain_logits = model(tokens[None, :64])
    with rope_extended(model, "yarn", 16, 64):
        assert records[1]["ppl"] == pytest.approx(perplexity(model, tokens, 64)["ppl"], rel=1e-6)
        assert not torch.equal(model(tokens[None, :64]), plain_logits)
    argv = ["generate", run, "--prompt", "ab", "--max-new-tokens", "70", "--extend", "rerope"]
    assert main([*argv, "--temperature", "0"]) == 0
    alibi = str(bench_dir / "runs" / "alibi-seed0")
    assert main(["eval", alibi, "--lengths", "16", "--extend", "yarn"]) == 2
    assert "trained with encoding 'rope'" in capsys.readouterr().err
