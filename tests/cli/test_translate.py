"""`extrapos translate train|eval|generate` and `extrapos bench --suite translation`."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from extrapos.cli import main

pytestmark = pytest.mark.e2e  # CLI runs and a bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from test_translation import make_parallel  # noqa: E402  (the tiny generated pair)

TRAIN = ["--src", "en", "--tgt", "de", "--steps", "8", "--max-tokens", "256", "--vocab-size",
         "300", "--n-layer", "1", "--d-model", "32", "--n-head", "2", "--warmup-steps", "4",
         "--save-every", "4", "--eval-every", "0"]  # fmt: skip


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EXTRAPOS_CACHE", str(tmp_path / "cache"))
    make_parallel(tmp_path / "data", n_train=80)
    return tmp_path


@pytest.fixture
def run_dir(env: Path) -> Path:
    out = env / "run"
    args = ["translate", "train", "--data", str(env / "data"), *TRAIN, "--encoding", "t5"]
    assert main([*args, "--max-src-tokens", "6", "--out", str(out)]) == 0
    return out


def test_train_eval_json_contract(run_dir: Path, env: Path, capsys: pytest.CaptureFixture) -> None:
    saved = json.loads((run_dir / "config.json").read_text())["data"]
    assert 0 < saved["kept_pairs"] < saved["train_pairs"] == 80
    out = env / "eval.json"
    code = main(["translate", "eval", str(run_dir), "--split", "test", "--beam", "2",
                 "--concat", "1,2,4", "--out", str(out)])  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    assert {"bleu", "chrf", "n_sentences", "concat", "buckets"} <= set(result)
    assert result["n_sentences"] == 16
    assert set(result["concat"]) == {"1", "2", "4"}
    assert {"bleu", "chrf", "len_ratio"} <= set(result["concat"]["2"])
    assert list(result["buckets"]) == ["1-10", "11-20", "21-40", "41-80", "81+"]
    assert {"bleu", "chrf", "len_ratio", "n"} <= set(result["buckets"]["1-10"])
    assert sum(b["n"] for b in result["buckets"].values()) == 16
    # the same sentences from files give the same scores
    files = env / "data"
    out2 = env / "eval2.json"
    code = main(["translate", "eval", str(run_dir), "--src-file", str(files / "test.en"),
                 "--ref-file", str(files / "test.de"), "--beam", "2", "--concat", "1,2,4",
                 "--out", str(out2)])  # fmt: skip
    assert code == 0
    assert json.loads(out2.read_text())["concat"] == result["concat"]


def test_generate_translates_stdin_line_by_line(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    capsys.readouterr()
    monkeypatch.setattr(sys, "stdin", io.StringIO("red dog\n\nbig cat runs\n"))
    assert main(["translate", "generate", str(run_dir), "--beam", "1"]) == 0
    assert len(capsys.readouterr().out.split("\n")) == 4  # three lines + final newline


def test_resume_extends_a_run(run_dir: Path, env: Path) -> None:
    args = ["translate", "train", "--data", str(env / "data"), *TRAIN, "--encoding", "t5"]
    args[args.index("--steps") + 1] = "12"
    assert main([*args, "--out", str(run_dir), "--resume"]) == 0
    state = json.loads((run_dir / "config.json").read_text())
    assert state["train"]["steps"] == 12 and state["data"]["max_src_tokens"] == 6


def test_bad_input_exits_2_with_one_line(env: Path, capsys: pytest.CaptureFixture) -> None:
    data = env / "data"
    base = ["translate", "train", *TRAIN, "--out", str(env / "bad")]
    assert main([*base, "--data", str(data), "--encoding", "cope"]) == 2
    assert "'cope'" in capsys.readouterr().err
    (data / "val.de").write_text("only one line\n", encoding="utf-8")
    assert main([*base, "--data", str(data)]) == 2
    err = capsys.readouterr().err.strip()
    assert "val.en has 10 lines" in err and "val.de has 1" in err and "\n" not in err
    base[base.index("--tgt") + 1] = "fr"
    assert main([*base, "--data", str(data)]) == 2
    assert "languages found: de, en" in capsys.readouterr().err


def test_bench_translation_suite(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = env / "bench"
    args = ["bench", "--suite", "translation", "--data", str(env / "data"), "--src", "en",
            "--tgt", "de", "--methods", "sinusoidal,alibi", "--seeds", "0", "--steps", "6",
            "--max-tokens", "256", "--vocab-size", "300", "--d-model", "32", "--n-layer", "1",
            "--max-src-tokens", "6", "--test-split", "test", "--beam", "1",
            "--warmup-steps", "3", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err
    # the plan line over each run, and the summary table at the end (rank by BLEU at k = 8)
    assert "run 1/2 · translate sinusoidal (seed 0) · elapsed" in err
    assert "run 2/2 · translate alibi (seed 0)" in err and "ETA" in err
    summary = err[err.index("summary (mean over seeds; rank by BLEU on 8 joined") :].splitlines()
    assert summary[1].split() == ["method", "seeds", "BLEU", "BLEU", "k=8", "ratio", "rank"]
    assert {line.split()[0] for line in summary[2:4]} == {"sinusoidal", "alibi"}
    results = json.loads((out / "results.json").read_text())
    assert results["suite"] == "translation"
    records = results["translation"]
    assert [(r["method"], r["seed"]) for r in records] == [("sinusoidal", 0), ("alibi", 0)]
    for r in records:
        assert set(r["concat"]) == {"1", "2", "4", "8"} and r["kept_pairs"] < r["train_pairs"]
    for name in ("report.md", "report.html", "translation.csv", "translation_bleu_vs_k.png",
                 "translation_bleu_vs_bucket.png"):  # fmt: skip
        assert (out / name).stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "| alibi |" in report
    # where the numbers came from and what the suite cost, in both reports
    assert "- command: `extrapos bench --suite translation" in report
    assert f"suite wall time {results['wall_seconds'] / 60:.1f} min" in report
    page = (out / "report.html").read_text()
    assert 'class="sortable"' in page and "<code>extrapos bench --suite translation" in page
    assert "suite wall time" in page and "name='viewport'" in page
    # a rerun keeps the finished records (nothing retrained: the run dirs may even be gone)
    import shutil

    shutil.rmtree(out / "runs")
    assert main(args) == 0
    assert json.loads((out / "results.json").read_text())["translation"] == records
