"""Flags generated from the config dataclasses: every field gets one, the help shows the true
default (so it cannot go stale), and a flag given lands in its config section."""

from __future__ import annotations

import argparse
from dataclasses import fields

from extrapos.bench.config import PRESETS, BenchConfig
from extrapos.cli import build_parser
from extrapos.cli.train import FLAG_FIELDS, _train_overrides
from extrapos.core.settings import field_default
from extrapos.training.config import TrainConfig


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _help_of(p: argparse.ArgumentParser, dest: str) -> str:
    return next(a.help for a in p._actions if a.dest == dest)


def test_every_train_field_has_a_flag_with_its_true_default():
    p = _subparser("train")
    for f in fields(TrainConfig):
        assert f"default {field_default(f)}" in _help_of(p, f"train.{f.name}")


def test_train_flags_land_in_their_sections_and_unset_ones_are_omitted():
    args = build_parser().parse_args(
        ["train", "--out", "x", "--lr", "0.01", "--no-compile", "--eval-tokens", "99"]
    )
    overrides = _train_overrides(args)
    assert overrides["train"] == {"lr": 0.01, "compile": False}
    assert overrides["eval"] == {"max_tokens": 99}
    assert overrides["model"] == {} and overrides["data"] == {}
    assert set(overrides) == set(FLAG_FIELDS)


def test_bench_help_shows_the_quick_presets_values():
    p = _subparser("bench")
    quick_extensions = ",".join(PRESETS["quick"]["extensions"])
    assert f"default {quick_extensions};" in _help_of(p, "bench.extensions")
    assert "default 200; presets: standard 300, literature 5000, paper 20000" in _help_of(
        p, "bench.steps"
    )
    every = {f.name for f in fields(BenchConfig)} - {"preset"}
    assert every <= {a.dest.removeprefix("bench.") for a in p._actions}


def test_none_means_an_empty_list():
    args = build_parser().parse_args(["bench", "--tasks", "none", "--extensions", "none"])
    assert args.__dict__["bench.tasks"] == [] and args.__dict__["bench.extensions"] == []
