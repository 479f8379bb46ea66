"""Scale knobs (token budget, warm-up, config file, BPE), the plan line, the summary table and
TensorBoard / W&B logging of the bench."""

from __future__ import annotations

import json
import sys
import types

import pytest

from extrapos.bench.config import BenchConfig
from extrapos.bench.loggers import Loggers, Plan
from extrapos.bench.run import run_bench
from extrapos.cli import main
from extrapos.core.errors import UserError
from extrapos.report.lm import summary_table

TINY = dict(
    steps=2, train_len=8, eval_lens=[8, 16], eval_tokens=64, protocols=["nonoverlap"],
    extensions=[], tasks=[], passkey_steps=0, memory=False, n_layer=1, d_model=16, n_head=2,
)  # fmt: skip


def test_train_tokens_sets_the_steps_and_exactly_one_budget_rule_holds():
    config = BenchConfig.from_preset("quick", train_tokens=16 * 128 * 30)
    assert config.steps == 30
    assert config.train_config(0).steps == 30
    with pytest.raises(UserError, match="not both"):
        BenchConfig.from_preset("quick", steps=5, train_tokens=100_000)
    with pytest.raises(UserError, match="below one step"):
        BenchConfig.from_preset("quick", train_tokens=100)


def test_warmup_steps_default_and_override():
    assert BenchConfig.from_preset("quick").train_config(0).warmup_steps == 20
    assert BenchConfig.from_preset("quick", warmup_steps=7).train_config(0).warmup_steps == 7


def test_config_file_sits_between_preset_and_flags(tmp_path):
    path = tmp_path / "bench.yaml"
    path.write_text("preset: standard\nsteps: 9\nlr: 0.001\nd_model: 64\n")
    config = BenchConfig.from_sources(None, str(path), lr=0.005)
    assert config.preset == "standard" and config.seeds == [0, 1, 2]  # the file's preset
    assert (config.steps, config.d_model, config.lr) == (9, 64, 0.005)  # flags win
    (tmp_path / "tokens.json").write_text(json.dumps({"train_tokens": 16 * 128 * 4}))
    assert BenchConfig.from_sources("quick", str(tmp_path / "tokens.json")).steps == 4
    flag_steps = BenchConfig.from_sources("quick", str(tmp_path / "tokens.json"), steps=3)
    assert flag_steps.steps == 3 and flag_steps.train_tokens is None


def test_config_file_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"stepz": 3}))
    with pytest.raises(UserError, match=r"unknown bench setting\(s\) stepz; known: preset, "):
        BenchConfig.from_sources(None, str(bad))
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"steps": "many"}))
    with pytest.raises(UserError, match="steps must be"):
        BenchConfig.from_sources(None, str(wrong))
    assert main(["bench", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stepz" in err[0]


def test_bench_with_bpe_trains_the_tokenizer_on_the_corpus_and_saves_it(tmp_path):
    from extrapos.data import load_tokenizer

    config = BenchConfig.from_preset(
        "quick", methods=["alibi"], tokenizer="bpe", vocab_size=300, **TINY
    )
    results = run_bench(config, tmp_path, progress=False)
    assert results["tokenizer"] == "bpe" and results["settings"]["vocab_size"] == 300
    saved = load_tokenizer(tmp_path / "runs" / "alibi-seed0" / "tokenizer.json")
    assert saved.name == "bpe" and saved.vocab_size == 300
    run = results["runs"][0]
    assert run["family"] == "bias" and run["loss_curve"][-1][0] == 2


def test_plan_line_counts_and_estimates():
    plan = Plan({"runs": 2, "costs": 1}, enabled=False)
    plan.start("runs", "train rope (seed 0)")
    assert plan.line("runs", "x").startswith("run 1/3 · x · elapsed ") and "ETA ?" in plan.line(
        "runs", "x"
    )
    plan.finish(kept=False)
    plan.start("runs", "train alibi (seed 0)")
    assert "ETA ?" not in plan.line("runs", "x")


def test_an_unstarted_stage_is_estimated_from_its_work_not_the_slowest_stage():
    """Training units take 100 s for 1,000 units of work; a cost probe of 10 units of work is
    then expected to take 1 s, not the 100 s a plain mean of finished units would say."""
    plan = Plan({"runs": 3, "costs": 6}, enabled=False, work={"runs": 1000.0, "costs": 10.0})
    plan.start("runs", "train rope (seed 0)")
    stage, started = plan._current
    plan._current = (stage, started - 100.0)  # as if it started 100 s ago
    plan.finish(kept=False)
    assert plan.eta() == pytest.approx(2 * 100.0 + 6 * 1.0, rel=1e-3)
    unweighted = Plan({"runs": 3, "costs": 6}, enabled=False)
    unweighted._done["runs"], unweighted._left["runs"] = [100.0], 2
    assert unweighted.eta() == pytest.approx(8 * 100.0)  # what the weighting corrects


def test_every_stage_has_a_work_estimate():
    from extrapos.bench.run import _unit_work, _units

    config = BenchConfig.from_preset("quick")
    work = _unit_work(config)
    assert set(work) == set(_units(config)) and all(w > 0 for w in work.values())
    assert work["runs"] > 10 * work["costs"]


def test_summary_table_ranks_by_the_longest_length():
    results = {
        "train_len": 8, "eval_lens": [8, 16], "protocols": ["nonoverlap"],
        "runs": [
            {"method": "a", "seed": 0, "ppl": {"8": 2.0, "16": 8.0}, "num_params": 1,
             "train_seconds": 0, "tokens_per_second": 0},
            {"method": "b", "seed": 0, "ppl": {"8": 3.0, "16": 3.3}, "num_params": 1,
             "train_seconds": 0, "tokens_per_second": 0},
        ],
    }  # fmt: skip
    lines = summary_table(results).splitlines()
    assert lines[2].split() == ["b", "3.000", "3.300", "1.10", "1"]
    assert lines[3].split() == ["a", "2.000", "8.000", "4.00", "2"]


def test_bench_prints_the_plan_and_the_summary(tmp_path, capsys):
    config = BenchConfig.from_preset("quick", methods=["alibi", "nope"], **TINY)
    results = run_bench(config, tmp_path, progress=True, save_runs=False)
    err = capsys.readouterr().err
    assert "run 1/2 · train alibi (seed 0) · elapsed" in err
    assert "run 2/2 · train nope (seed 0)" in err
    assert "summary (nonoverlap" in summary_table(results)  # the CLI prints it at the end


def test_missing_logging_packages_are_one_line_errors(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(UserError, match=r"--wandb needs the wandb package"):
        Loggers(wandb_project="p")
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(UserError, match="--tensorboard needs the tensorboard package"):
        Loggers(tensorboard="tb")


def test_wandb_gets_every_training_loss_and_the_perplexities_offline(tmp_path, monkeypatch):
    logged: list = []

    class FakeRun:
        def __init__(self, **kw):
            self.kw, self.summary, self.rows = kw, {}, []
            logged.append(self)

        def log(self, row, step):
            self.rows.append((step, row))

        def finish(self):
            self.finished = True

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: FakeRun(**kw)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    config = BenchConfig.from_preset("quick", methods=["alibi"], **TINY)
    loggers = Loggers(wandb_project="extrapos-test", out_dir=tmp_path, settings=config.settings())
    run_bench(config, tmp_path, progress=False, save_runs=False, loggers=loggers)
    import os

    assert os.environ["WANDB_MODE"] == "offline"
    (run,) = logged
    assert run.kw["project"] == "extrapos-test" and run.kw["name"] == "alibi-seed0"
    assert [step for step, _ in run.rows] == [1, 2] and run.finished
    assert {"train/loss", "train/lr", "train/grad_norm"} <= set(run.rows[0][1])
    assert set(run.summary) == {"ppl/8", "ppl/16"}
    monkeypatch.delenv("WANDB_MODE")


def test_tensorboard_gets_every_training_loss_and_the_perplexities(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = BenchConfig.from_preset("quick", methods=["alibi"], **TINY)
    loggers = Loggers(tensorboard=tmp_path / "tb", out_dir=tmp_path)
    results = run_bench(config, tmp_path / "out", progress=False, save_runs=False, loggers=loggers)
    events = EventAccumulator(str(tmp_path / "tb" / "alibi-seed0"))
    events.Reload()
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == [1, 2]
    assert losses[-1].value == pytest.approx(results["runs"][0]["loss_curve"][-1][1], rel=1e-4)
    ppl = {e.step: e.value for e in events.Scalars("eval/ppl_by_length")}
    assert ppl == pytest.approx(
        {8: results["runs"][0]["ppl"]["8"], 16: results["runs"][0]["ppl"]["16"]}
    )


def test_bench_logging_is_live_during_training_and_closes_a_failed_run(tmp_path, monkeypatch):
    """Each step reaches the logger while the run trains (not after it), and a run that fails
    mid-way still finishes its logger run."""
    import extrapos.bench.language_model as language_model
    import extrapos.training.lm as training_lm

    seen_during_training: list[int] = []
    logged: list = []

    class FakeRun:
        def __init__(self, **kw):
            self.summary, self.rows, self.finished = {}, [], False
            logged.append(self)

        def log(self, row, step):
            self.rows.append(step)

        def finish(self):
            self.finished = True

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: FakeRun(**kw)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    real_train = training_lm.train

    def spying_train(*args, on_step=None, **kwargs):
        def step(row):
            on_step(row)
            seen_during_training.append(len(logged[-1].rows))  # already logged, while training

        result = real_train(*args, on_step=step, **kwargs)
        if kwargs.get("description", "").startswith("train nope"):
            raise RuntimeError("killed after training")
        return result

    monkeypatch.setattr(language_model, "train", spying_train)
    config = BenchConfig.from_preset("quick", methods=["alibi", "nope"], **TINY)
    loggers = Loggers(wandb_project="p", out_dir=tmp_path)
    with pytest.raises(RuntimeError, match="killed after training"):
        run_bench(config, tmp_path, progress=False, save_runs=False, loggers=loggers)
    assert seen_during_training == [1, 2, 1, 2]
    alibi, nope = logged
    assert alibi.finished and set(alibi.summary) == {"ppl/8", "ppl/16"}
    assert nope.finished and nope.summary == {}  # failed before evaluation: closed, no ppl
    monkeypatch.delenv("WANDB_MODE", raising=False)


def test_every_registered_encoding_lands_in_its_family_panel_as_the_bench_records_it():
    """The bench records an encoding class's module as `family`; moving a class to a new
    module must not send its runs to the report's "other" panel."""
    from extrapos.bench.language_model import family_of
    from extrapos.encodings import list_encodings
    from extrapos.report.style import _BUILTIN_MODULE, panel_of

    for method in list_encodings():
        recorded = panel_of({"method": method, "family": family_of(method)})
        assert recorded != "other", (method, family_of(method))
        assert recorded == panel_of({"method": method}), method  # = results without `family`
    assert set(_BUILTIN_MODULE) == set(list_encodings())
