"""The dialogue CLI end to end on a tiny generated dialogue folder: train, dialogue eval,
generate (streaming and --stats), bench --suite dialogue (and its reproducibility)."""

from __future__ import annotations

import json

import pytest

from extrapos.bench.dialogue import DialogueBenchConfig, run_dialogue_bench
from extrapos.cli import main

pytestmark = pytest.mark.e2e

TRAIN = ["train", "--encoding", "alibi", "--train-len", "16", "--steps", "3", "--batch-size", "4",
         "--n-layer", "2", "--d-model", "32", "--eval-every", "0"]  # fmt: skip
TIMING = {"train_seconds", "eval_seconds", "generation_seconds", "tokens_per_second"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory, make_dialogue_folder):
    return make_dialogue_folder(tmp_path_factory.mktemp("dd") / "dd")


@pytest.fixture(scope="module")
def run_dir(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main([*TRAIN, "--data", str(folder), "--loss-on", "responses", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["loss_on"] == "responses"
    assert config["data"]["format"] == "dialogue"
    assert config["data"]["duplicates_removed"]["test"] == 2
    return out


def test_dialogue_eval_writes_the_json(run_dir, tmp_path, capsys) -> None:
    out = tmp_path / "eval.json"
    assert main(["dialogue", "eval", str(run_dir), "--out", str(out), "--trials", "3"]) == 0
    result = json.loads(out.read_text())
    assert set(result) == {"history", "recall", "chance", "n_dialogues"}
    assert list(result["history"]["k"]) == ["0", "1", "2", "4", "8", "all"]
    assert list(result["recall"]) == ["16", "32", "64", "128", "256"]
    assert result["chance"] == 0.2
    assert "recall across turns" in capsys.readouterr().out


def test_generate_streams_and_stats(run_dir, tmp_path, capsys) -> None:
    assert main(["generate", str(run_dir), "--prompt", "A: hi", "--max-new-tokens", "20"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("A: hi") and printed.endswith("\n")
    stats = tmp_path / "gen.json"
    plot = tmp_path / "gen.png"
    args = ["generate", str(run_dir), "--stats", "--prompts", "2", "--total-len", "64",
            "--stats-out", str(stats), "--plot", str(plot)]  # fmt: skip
    assert main(args) == 0
    captured = capsys.readouterr()
    data = json.loads(stats.read_text())
    assert data["positions"] == [16, 32, 48] and data["total_len"] == 64
    assert captured.out.rstrip("\n").endswith(data["sample"].rstrip("\n")[-10:])
    assert "rep-n" in captured.err
    assert plot.stat().st_size > 1000


def test_bad_input_exits_2(run_dir, tmp_path, capsys) -> None:
    assert main(["dialogue", "eval", str(run_dir), "--data", "builtin"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a dialogue corpus" in err and len(err.splitlines()) == 1
    assert main(["generate", str(run_dir)]) == 2
    assert "--prompt is required" in capsys.readouterr().err
    assert main(["bench", "--suite", "dialogue", "--out", str(tmp_path / "b")]) == 2
    assert "needs --data" in capsys.readouterr().err
    assert main(["bench", "--suite", "dialogue", "--data", "builtin", "--steps", "1",
                 "--out", str(tmp_path / "b")]) == 2  # fmt: skip
    assert "DailyDialog-format" in capsys.readouterr().err


def test_bench_suite_dialogue_cli(folder, tmp_path, capsys) -> None:
    out = tmp_path / "bench"
    args = ["bench", "--suite", "dialogue", "--data", str(folder), "--methods", "nope",
            "--seeds", "0", "--steps", "2", "--train-len", "16", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert "run 1/1 · dialogue nope (seed 0) · elapsed" in capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["suite"] == "dialogue" and results["duplicates_removed"]["test"] == 2
    (run,) = results["runs"]
    assert run["kind"] == "dialogue" and run["method"] == "nope"
    for name in ("report.md", "report.html", "dialogue_history.png", "dialogue_recall.png",
                 "dialogue_generation.png"):  # fmt: skip
        assert (out / name).is_file()
    assert "Recall across turns" in (out / "report.md").read_text()


def _tiny(folder, methods, seeds) -> DialogueBenchConfig:
    return DialogueBenchConfig(
        data=str(folder), methods=methods, seeds=seeds, train_len=16, steps=4, batch_size=4,
        n_layer=2, d_model=32, max_dialogues=5, recall_trials=3, gen_prompts=2,
    )  # fmt: skip


def test_bench_rerun_reproduces_and_resumes(folder, tmp_path) -> None:
    first = run_dialogue_bench(_tiny(folder, ["t5"], [0, 1]), tmp_path / "a", progress=False)
    # one method and seed rerun from scratch in another folder: the same figures
    again = run_dialogue_bench(_tiny(folder, ["t5"], [1]), tmp_path / "b", progress=False)
    strip = [
        {k: v for k, v in r.items() if k not in TIMING} for r in (first["runs"] + again["runs"])
    ]
    by_key = {}
    for r in strip[: len(first["runs"])]:
        by_key[(r["method"], r["seed"])] = r
    for r in strip[len(first["runs"]) :]:
        assert r == by_key[(r["method"], r["seed"])]
    # the seeds differ from each other (the comparison above is not vacuous)
    assert by_key[("t5", 0)]["history"] != by_key[("t5", 1)]["history"]
    # a rerun in the same folder keeps the finished records
    kept = run_dialogue_bench(_tiny(folder, ["t5"], [0, 1]), tmp_path / "a", progress=False)
    assert kept["runs"] == first["runs"]


def test_bench_probe_size_flags(folder, tmp_path, monkeypatch, capsys) -> None:
    """--max-dialogues, --recall-trials, --gen-prompts reach DialogueBenchConfig; without them
    the config is the suite's default (200, 24, 4); other suites refuse them."""
    import extrapos.bench.dialogue as bench
    import extrapos.report.dialogue as report

    seen: list[DialogueBenchConfig] = []
    monkeypatch.setattr(bench, "run_dialogue_bench", lambda config, out: seen.append(config))
    monkeypatch.setattr(report, "write_dialogue_report", lambda results, out: None)
    base = ["bench", "--suite", "dialogue", "--data", str(folder), "--out", str(tmp_path / "b")]
    assert main(base) == 0
    assert seen[-1] == DialogueBenchConfig(data=str(folder))
    assert (seen[-1].max_dialogues, seen[-1].recall_trials, seen[-1].gen_prompts) == (200, 24, 4)
    flags = ["--max-dialogues", "7", "--recall-trials", "3", "--gen-prompts", "2"]
    assert main([*base, *flags]) == 0
    assert (seen[-1].max_dialogues, seen[-1].recall_trials, seen[-1].gen_prompts) == (7, 3, 2)
    assert seen[-1].eval_config().max_dialogues == 7
    assert seen[-1].eval_config().recall_trials == 3
    capsys.readouterr()
    assert main([*base, "--recall-trials", "0"]) == 2
    assert "recall_trials" in capsys.readouterr().err
    assert main(["bench", "--gen-prompts", "2", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--gen-prompts only apply to --suite dialogue" in err and len(err.splitlines()) == 1
    from extrapos.cli import build_parser

    parsed = build_parser().parse_args(["dialogue", "eval", "RUN", "--recall-trials", "3"])
    assert parsed.trials == 3 and parsed.max_dialogues == 200
