"""Property-based CLI fuzz: every command with generated arguments exits 0 or 2, prints no
traceback, and touches no file outside its output folder. In-process (`extrapos.cli.main`), so
it runs in seconds. Arguments that would start real work point at inputs that fail fast (an
empty data file, a missing run folder); what is fuzzed is everything before that: parsing and
validation of integers (huge, negative), floats (NaN, inf), names, paths and device strings.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extrapos.cli import main

INTS = st.one_of(
    st.integers(-3, 3), st.integers(-(2**70), 2**70), st.sampled_from(["0", "-1", "1e3", "x", ""])
).map(str)
FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e-300", "1e308", "-0.0", "abc", ""]),
)
WORDS = st.sampled_from(["rope", "alibi", "nosuch", "", "cpu", "cuda:99", "mps:x", "/", "é"])

TRAIN_FLAGS = {
    "--steps": INTS, "--batch-size": INTS, "--train-len": INTS, "--seed": INTS,
    "--lr": FLOATS, "--weight-decay": FLOATS, "--grad-clip": FLOATS, "--min-lr-ratio": FLOATS,
    "--warmup-steps": INTS, "--n-layer": INTS, "--d-model": INTS, "--device": WORDS,
    "--encoding": WORDS, "--eval-tokens": INTS,
}  # fmt: skip


def _argv(command: str, flags: dict[str, str], place: Path) -> list[str]:
    out = [command]
    if command == "train":
        out += ["--data", str(place / "empty.txt"), "--out", str(place / "out" / "run")]
    elif command in ("eval", "generate", "passkey", "diagnose"):
        out += [str(place / "missing-run")]
        if command == "generate":
            out += ["--prompt", "ab"]
        if command == "eval":
            out += ["--lengths", flags.pop("--lengths", "16")]
    elif command == "report":
        out += [str(place / "results.json"), "--out", str(place / "out")]
    for flag, value in flags.items():
        out += [flag, value]
    return out


@st.composite
def commands(draw):
    command = draw(st.sampled_from(["train", "eval", "generate", "report", "list"]))
    flags: dict[str, str] = {}
    if command == "train":
        names = draw(st.lists(st.sampled_from(sorted(TRAIN_FLAGS)), max_size=4, unique=True))
        flags = {n: draw(TRAIN_FLAGS[n]) for n in names}
    elif command == "eval":
        flags["--lengths"] = draw(st.sampled_from(["0", "-1", "16,16", "1e9", "99999999999", "a"]))
    elif command == "generate":
        flags = {
            "--max-new-tokens": draw(INTS), "--temperature": draw(FLOATS), "--seed": draw(INTS),
        }  # fmt: skip
    return command, flags


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    (root / "empty.txt").write_text("")
    (root / "results.json").write_text('{"runs": [{"method": 3}], "version": "x"}')
    return root


def _tree(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in root.rglob("*") if "out" not in p.parts}


@settings(
    max_examples=120, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)  # fmt: skip
@given(case=commands())
def test_every_command_exits_0_or_2_without_a_traceback(case, place, capsys):
    command, flags = case
    argv = _argv(command, dict(flags), place)
    before, cwd = _tree(place), sorted(os.listdir("."))
    code = main(argv)
    captured = capsys.readouterr()
    assert code in (0, 2), (argv, code, captured.err[-2000:])
    assert "Traceback" not in captured.err, (argv, captured.err[-2000:])
    assert _tree(place) == before, argv  # only the output folder may change
    assert sorted(os.listdir(".")) == cwd, argv
