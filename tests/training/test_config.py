"""Run configuration: dataclasses, config files, command-line overrides, loud validation."""

from __future__ import annotations

import json

import pytest
import torch

from extrapos.cli import main
from extrapos.core.errors import UserError
from extrapos.training.config import (
    DataConfig,
    EvalConfig,
    RunConfig,
    TrainConfig,
    load_config_file,
    merge,
    parse_assignments,
)
from extrapos.training.run_dir import load_config

TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(300))
TINY = {
    "model": {"encoding": "alibi", "n_layer": 1, "n_head": 2, "d_model": 16},
    "train": {"train_len": 16, "batch_size": 4, "steps": 3, "lr": 0.01},
    "eval": {"every": 0},
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "toy.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_defaults_and_resolution():
    run = RunConfig.from_dict({"model": {"encoding": "rope"}})
    assert run.train == TrainConfig() and run.train.warmup_steps == 40  # steps // 10
    assert run.data == DataConfig() and run.eval == EvalConfig()
    assert EvalConfig().resolved(TrainConfig(steps=50, train_len=64)) == EvalConfig(5, 16384, 64)
    assert DataConfig(tokenizer="bpe").tokenizer_options() == {"vocab_size": 1024}
    assert RunConfig.from_dict(run.to_dict()) == run


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"model": {"encoding": "rope", "n_layer": "2"}},
            "model.n_layer must be an integer, got '2'",
        ),
        ({"model": {"encoding": "rope"}, "train": {"lr": "fast"}}, "train.lr must be a number"),
        ({"model": {"encoding": "rope"}, "train": {"lr": 0}}, "train.lr must be > 0"),
        (
            {"model": {"encoding": "rope"}, "train": {"precision": "fp16"}},
            "train.precision must be one of 'fp32', 'bf16', got 'fp16'",
        ),
        (
            {"model": {"encoding": "rope"}, "train": {"compile": "yes"}},
            "train.compile must be true",
        ),
        (
            {"model": {"encoding": "rope"}, "train": {"lrate": 1}},
            "train has unknown field(s) lrate",
        ),
        ({"model": {"encoding": "rope"}, "optim": {}}, "unknown section(s) optim"),
        ({"model": {"encoding": "nosuch"}}, "unknown encoding 'nosuch'"),
        ({"model": {}}, "model.encoding is not set"),
        ({"model": {"encoding": "rope"}, "eval": {"every": -1}}, "eval.every must be >= 0"),
        (
            {"model": {"encoding": "rope"}, "data": {"vocab_size": 512}},
            "data.vocab_size=512 needs tokenizer bpe",
        ),
        (
            {"model": {"encoding": "rope"}, "train": {"batch_size": 6, "grad_accum": 4}},
            "divisible by grad_accum=4",
        ),
    ],
)
def test_validation_names_the_field(data, message):
    with pytest.raises(UserError) as info:
        RunConfig.from_dict(data, "config file c.json")
    assert message in str(info.value) and str(info.value).startswith("config file c.json")


def test_files_assignments_and_merge(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(TINY))
    assert load_config_file(path) == TINY
    yaml = pytest.importorskip("yaml")
    ypath = tmp_path / "c.yaml"
    ypath.write_text(yaml.safe_dump(TINY))
    assert load_config_file(ypath) == TINY
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(UserError, match="bad.json is not valid JSON"):
        load_config_file(tmp_path / "bad.json")
    with pytest.raises(UserError, match="does not exist"):
        load_config_file(tmp_path / "missing.json")

    sets = parse_assignments(
        ["train.lr=0.5", "train.precision=bf16", 'model.encoding_params={"base": 500}']
    )
    assert sets == {
        "train": {"lr": 0.5, "precision": "bf16"},
        "model": {"encoding_params": {"base": 500}},
    }
    with pytest.raises(UserError, match="SECTION.FIELD=VALUE"):
        parse_assignments(["lr=0.5"])
    merged = merge(TINY, sets, {"train": {"lr": 0.25}})
    assert merged["train"]["lr"] == 0.25 and merged["train"]["steps"] == 3
    assert merged["model"]["n_layer"] == 1 and TINY["train"]["lr"] == 0.01  # inputs untouched


def test_cli_config_file_with_overrides_and_reuse(tmp_path, data):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({**TINY, "data": {"name": str(data)}}))
    run = tmp_path / "run"
    argv = ["train", "--config", str(cfg), "--steps", "4", "--set", "train.min_lr_ratio=0"]
    assert main([*argv, "--out", str(run)]) == 0
    saved = load_config(run)
    assert saved["train"]["steps"] == 4  # flag over file
    assert saved["train"]["min_lr_ratio"] == 0  # --set over file
    assert saved["train"]["lr"] == 0.01 and saved["model"]["encoding"] == "alibi"  # file
    assert saved["train"]["warmup_steps"] == 1  # resolved default, recorded
    assert saved["data"]["name"] == str(data) and len(saved["data"]["content_hash"]) == 64

    # a run's config.json is a config file: the same run again
    again = tmp_path / "again"
    assert main(["train", "--config", str(run / "config.json"), "--out", str(again)]) == 0
    assert load_config(again) == saved

    # a changed corpus under the recorded name is refused
    data.write_text(TEXT + "more\n", encoding="utf-8")
    with pytest.raises(UserError, match="has changed"):
        from extrapos.training.lm import run_training

        run_training(load_config_file(run / "config.json"), tmp_path / "x")


def test_cli_reports_a_bad_config_field_in_one_line(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"model": {"encoding": "rope"}, "train": {"warmup_steps": -1}}))
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"extrapos: error: config file {cfg} with the command-line flags: "
        "train.warmup_steps must be >= 0, got -1"
    )
    assert main(["train", "--out", str(tmp_path / "r")]) == 2
    assert "model.encoding is not set; pass --encoding" in capsys.readouterr().err
