"""Shared test setup: the on-disk token/tokenizer cache goes to a temporary folder, never to
the user's ~/.cache/extrapos (subprocesses inherit it through the environment)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_extrapos_cache(tmp_path_factory):
    previous = os.environ.get("EXTRAPOS_CACHE")
    os.environ["EXTRAPOS_CACHE"] = str(tmp_path_factory.mktemp("extrapos-cache"))
    yield
    if previous is None:
        os.environ.pop("EXTRAPOS_CACHE", None)
    else:
        os.environ["EXTRAPOS_CACHE"] = previous


# ----------------------------------------------------------------------------- dialogue data
# a tiny generated DailyDialog-format folder (the real data is never copied into the repo)

_DIALOGUE_WORDS = (
    "hello how are you fine thanks what about the weather today it is sunny and warm "
    "would you like some tea or coffee i prefer tea please sure here it is"
).split()


def _dialogue_line(rng: random.Random, turns: int) -> str:
    utterances = [
        " ".join(rng.choice(_DIALOGUE_WORDS) for _ in range(rng.randint(3, 9))) + " ?"
        for _ in range(turns)
    ]
    return "".join(f"{u} __eou__ " for u in utterances).rstrip() + "\n"


def _make_dialogue_folder(
    root: Path, n_train: int = 60, n_eval: int = 12, turns: tuple[int, int] = (3, 12), seed: int = 0
) -> Path:
    """train/validation/test files; the first 2 test and 1 validation dialogues copy train ones."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    train = [_dialogue_line(rng, rng.randint(*turns)) for _ in range(n_train)]
    valid = [train[5]] + [_dialogue_line(rng, rng.randint(*turns)) for _ in range(n_eval)]
    # the same dialogue with other spacing still counts as a duplicate
    test = [train[0], train[1].replace(" ", "  ")] + [
        _dialogue_line(rng, rng.randint(*turns)) for _ in range(n_eval)
    ]
    for name, lines in (("train", train), ("validation", valid), ("test", test)):
        (root / f"dialogues_{name}.txt").write_text("".join(lines), encoding="utf-8")
        (root / f"dialogues_act_{name}.txt").write_text("1 2\n" * len(lines), encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def make_dialogue_folder():
    """`make(root, n_train=60, n_eval=12, turns=(3, 12), seed=0) -> root`: train/validation/test
    files; the first 2 test and the first validation dialogue copy train ones."""
    return _make_dialogue_folder
