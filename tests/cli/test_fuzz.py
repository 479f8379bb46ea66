"""Property-based CLI fuzz: every command with generated arguments exits 0 or 2, prints no
traceback, and touches no file outside its output folder.

The commands and their flags are read from the argparse parser (`build_parser`), sub-commands
(`translate train`, `dialogue eval`) included, so a new command or flag is fuzzed the day it
lands; a flag's values are drawn by its type (int, float, length list, name list, JSON, choices,
booleans) and, for paths, by its role (output -> inside the output folder; run, model, data,
config -> a real tiny run, its HF export, an empty file or a missing path). In-process
(`extrapos.cli.main`), so the whole file runs in well under a minute.

Bounds that keep it fast, and so its reach: commands that would start long work from nothing
(`train`, `bench`) get an empty data file, so validation runs but no step; integers are small
(-3..3), huge (±2^70) or not integers, never a large valid size (a valid 10^7 steps would just
train); every example has a 30 s alarm, so a hang fails the test instead of stalling the suite;
`profile` measures in this process rather than in a fresh one per point.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extrapos.cli import build_parser, main
from extrapos.cli.args import float_list, int_list, json_object, length_list, name_list

INTS = st.one_of(
    st.integers(-3, 3).map(str),
    st.sampled_from([str(2**70), str(-(2**70)), "0", "-1", "1e3", "x", "", "3.5"]),
)
FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e-300", "1e308", "-0.0", "abc", "", "0.5"]),
)
LENGTHS = st.sampled_from(["16", "8,32", "0", "-1", "16,16", "1e9", "a", "", "16,-4"])
INT_LISTS = st.sampled_from(["0", "0,1", "0,0", "-1", "x", "", str(2**70), "16,0"])
FLOAT_LISTS = st.sampled_from(["0.5", "0,1", "nan", "-1", "inf", "x", ""])
NAMES = st.sampled_from(
    ["rope", "alibi,rope", "nosuch", "rope,rope", "none", "yarn", "yarn,yarn", "nonoverlap",
     "sliding,sliding", "selective_copy", "é", "caf\udce9"]
)  # fmt: skip
JSONS = st.sampled_from(
    ["{}", '{"base": NaN}', '{"base": 1e400}', '{"base": -1}', "[1]", "{", '{"x": 1}',
     '{"sinusoidal": {"scale": 1}}', '{"rope_type": "yarn", "factor": 4}', '{"max_len": 2}']
)  # fmt: skip
WORDS = st.sampled_from(
    ["rope", "nosuch", "", " ", "cpu", "cuda:99", "mps:x", "/", "é€😀", "caf\udce9", "-x"]
)
SETS = st.sampled_from(
    ["train.lr=nan", "model.nosuch=1", "bad", "train.steps=2", "data.name=", "=1", "eval.every=-1"]
)

#: option dests that name something the command writes: always inside the output folder
OUTPUT_DESTS = {
    "out", "csv", "plot", "per_position", "stats_out", "hyp_out", "out_dir", "tensorboard",
}  # fmt: skip
#: what a command that would otherwise start long work from nothing always gets
ANCHORS = {
    ("train",): ["--data", "{empty}"],
    ("bench",): ["--data", "{empty}"],
    ("profile",): ["--lengths", "8,16", "--repeats", "1", "--n-layer", "1", "--d-model", "8"],
    ("tasks",): ["--steps", "1", "--eval-samples", "2", "--train-len", "2", "--n-layer", "1",
                 "--d-model", "8", "--n-head", "1"],
}  # fmt: skip
#: examples per command (default 6)
EXAMPLES = {("lm-eval",): 3}
#: flags left out: they reach outside services (Weights & Biases) or only print help
SKIPPED = {"--wandb", "--help", "-h", "--debug"}


def leaf_commands(parser: argparse.ArgumentParser) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(command path, its parser) for every command, sub-commands included."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield (), parser
        return
    for name, sub in subs[0].choices.items():
        for path, leaf in leaf_commands(sub):
            yield (name, *path), leaf


PARSER = build_parser()
COMMANDS = dict(leaf_commands(PARSER))


def _path_values(dest: str, place: Path) -> st.SearchStrategy[str]:
    empty, missing = str(place / "empty.txt"), str(place / "missing")
    if dest in ("run_dir",):
        return st.sampled_from([str(place / "run"), missing, empty])
    if dest == "model_dir":
        return st.sampled_from([str(place / "hf"), missing, str(place / "run")])
    if dest == "dirs":
        return st.sampled_from([str(place / "bad_results"), str(place / "bad_json"), missing])
    if dest in ("data", "src_file", "ref_file", "include_path"):
        return st.sampled_from([empty, missing, "builtin", str(place / "run")])
    if dest == "config":
        return st.sampled_from([empty, missing, str(place / "bad.yaml")])
    if dest == "prompt":
        return st.sampled_from(["ab", "", "é€😀", "caf\udce9", "\x00", "a" * 300])
    return WORDS


def _values(action: argparse.Action, place: Path) -> st.SearchStrategy[list[str]]:
    """Argument strings for one action (its flag included for options)."""
    flag = action.option_strings[:1]
    if action.dest in OUTPUT_DESTS:
        return st.just([*flag, str(place / "out" / action.dest)])
    if isinstance(action, argparse.BooleanOptionalAction):
        return st.sampled_from([[action.option_strings[0]], [action.option_strings[-1]]])
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return st.just(flag)
    if action.choices is not None:
        values = st.sampled_from([*map(str, action.choices), "nosuch"])
    elif action.type in (int,):
        values = INTS
    elif action.type in (float,):
        values = FLOATS
    elif action.type is length_list:
        values = LENGTHS
    elif action.type is int_list or getattr(action.type, "__name__", "") == "_ints":
        values = INT_LISTS
    elif action.type is float_list:
        values = FLOAT_LISTS
    elif action.type is name_list:
        values = NAMES
    elif action.type is json_object or "json" in getattr(action.type, "__name__", ""):
        values = JSONS
    elif isinstance(action, argparse._AppendAction):
        values = SETS
    else:
        values = _path_values(action.dest, place)
    return values.map(lambda v: [*flag, v])


@st.composite
def argv_for(draw, path: tuple[str, ...], place: Path) -> list[str]:
    parser = COMMANDS[path]
    anchor = [a.replace("{empty}", str(place / "empty.txt")) for a in ANCHORS.get(path, [])]
    actions = [
        a for a in parser._actions
        if not isinstance(a, argparse._HelpAction) and not SKIPPED & set(a.option_strings)
        and not set(a.option_strings) & set(anchor)
    ]  # fmt: skip
    # outputs are always given, so a default output (bench_out/ ...) never lands in the cwd
    required = [a for a in actions if a.required or not a.option_strings or a.dest in OUTPUT_DESTS]
    optional = [a for a in actions if a not in required]
    chosen = draw(st.lists(st.sampled_from(optional), max_size=4, unique_by=id)) if optional else []
    argv = [*path, *anchor]
    for action in required + chosen:
        argv += draw(_values(action, place))
    return argv


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> Path:
    """A tiny real run, its HF export, an empty file, hand-edited results and a bad config."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "empty.txt").write_text("")
    tiny = ["--steps", "1", "--train-len", "16", "--n-layer", "1", "--d-model", "16",
            "--n-head", "2", "--batch-size", "2", "--eval-every", "0"]  # fmt: skip
    assert main(["train", "--encoding", "rope", *tiny, "--out", str(root / "run")]) == 0
    assert main(["export-hf", str(root / "run"), str(root / "hf")]) == 0
    (root / "bad_results").mkdir()
    results = {"version": 1, "train_len": 16, "eval_lens": [16], "runs": [{"method": 3}]}
    (root / "bad_results" / "results.json").write_text(json.dumps(results))
    (root / "bad_json").mkdir()
    (root / "bad_json" / "results.json").write_text('{"runs": [')
    (root / "bad.yaml").write_text("model: [\n")
    return root


def _tree(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in root.rglob("*") if "out" not in p.parts}


def _alarm(signum, frame):
    raise TimeoutError("a fuzzed command ran past 30 s")


def _measure_here(method, n, repeats, n_layer, n_head, d_model, train=False):
    """`profile` measures each point in a fresh interpreter (seconds of torch import each);
    here in this process, through the same validation and model building."""
    from extrapos.probes import cost

    model = cost._build(method, n, n_layer, n_head, d_model)
    return cost.measure(model, n, repeats, train=train)


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_every_command_exits_0_or_2_without_a_traceback(path, place, capsys, monkeypatch):
    monkeypatch.setattr("extrapos.probes.cost.measure_in_subprocess", _measure_here)
    if path == ("lm-eval",):  # the harness indexes its ~10k task files per call: once here
        tasks = pytest.importorskip("lm_eval.tasks")
        managers: dict = {}
        real = tasks.TaskManager

        def shared(include_path=None, **kwargs):
            if include_path not in managers:
                managers[include_path] = real(include_path=include_path, **kwargs)
            return managers[include_path]

        monkeypatch.setattr(tasks, "TaskManager", shared)

    @settings(
        max_examples=EXAMPLES.get(path, 6), deadline=None, derandomize=True, database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )  # fmt: skip
    @given(argv=argv_for(path, place))
    def check(argv: list[str]) -> None:
        before, cwd = _tree(place), sorted(os.listdir("."))
        old = signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(30)
        try:
            code = main(argv)
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
        captured = capsys.readouterr()
        assert code in (0, 2), (argv, code, captured.err[-2000:])
        assert "Traceback" not in captured.err, (argv, captured.err[-2000:])
        assert _tree(place) == before, argv  # only the output folder may change
        assert sorted(os.listdir(".")) == cwd, argv

    check()


def test_every_command_is_fuzzed():
    """The list comes from the parser, so a new command cannot be missed; this pins a few."""
    assert {("list",), ("train",), ("bench",), ("report",), ("translate", "train"),
            ("dialogue", "eval"), ("lm-eval",), ("export-hf",)} <= set(COMMANDS)  # fmt: skip
    assert len(COMMANDS) >= 17
