"""A tiny generated DailyDialog-format folder for tests (the real data is never copied)."""

from __future__ import annotations

import random
from pathlib import Path

WORDS = (
    "hello how are you fine thanks what about the weather today it is sunny and warm "
    "would you like some tea or coffee i prefer tea please sure here it is"
).split()

DAILYDIALOG = next(
    (
        p
        for p in (
            Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dailydialog",
            Path(__file__).resolve().parents[1].parents[1] / "shared" / "data" / "dailydialog",
        )
        if (p / "dialogues_test.txt").is_file()
    ),
    None,
)


def dialogue_line(rng: random.Random, turns: int) -> str:
    utterances = [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) + " ?" for _ in range(turns)
    ]
    return "".join(f"{u} __eou__ " for u in utterances).rstrip() + "\n"


def make_dialogue_folder(
    root: Path, n_train: int = 60, n_eval: int = 12, turns: tuple[int, int] = (3, 12), seed: int = 0
) -> Path:
    """train/validation/test files; the first 2 test and 1 validation dialogues copy train ones."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    train = [dialogue_line(rng, rng.randint(*turns)) for _ in range(n_train)]
    valid = [train[5]] + [dialogue_line(rng, rng.randint(*turns)) for _ in range(n_eval)]
    # the same dialogue with other spacing still counts as a duplicate
    test = [train[0], train[1].replace(" ", "  ")] + [
        dialogue_line(rng, rng.randint(*turns)) for _ in range(n_eval)
    ]
    for name, lines in (("train", train), ("validation", valid), ("test", test)):
        (root / f"dialogues_{name}.txt").write_text("".join(lines), encoding="utf-8")
        (root / f"dialogues_act_{name}.txt").write_text("1 2\n" * len(lines), encoding="utf-8")
    return root
