"""Tests for extrapos.data.dialogue (DailyDialog-format folders)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from extrapos.core.errors import UserError
from extrapos.data import build_tokenizer, load_corpus
from extrapos.data.dialogue import (
    IGNORE,
    DialogueCorpus,
    load_dialogues,
    parse_dialogue_line,
    render_dialogue,
)


def _dailydialog() -> Path | None:
    """../shared/data/dailydialog beside the checkout (or one level up, from a worktree)."""
    here = Path(__file__).resolve().parents[2]
    for root in (here.parent, here.parent.parent):
        if (root / "shared" / "data" / "dailydialog" / "dialogues_test.txt").is_file():
            return root / "shared" / "data" / "dailydialog"
    return None


DAILYDIALOG = _dailydialog()


@pytest.fixture
def folder(tmp_path, make_dialogue_folder):
    return make_dialogue_folder(tmp_path / "dd")


def test_parse_and_render() -> None:
    d = parse_dialogue_line("Hi ,  there ! __eou__ Hello . __eou__ \n")
    assert d == ("Hi , there !", "Hello .")
    assert render_dialogue(d) == "A: Hi , there !\nB: Hello .\n"


def test_load_corpus_detects_the_folder_and_dedups(folder) -> None:
    corpus = load_corpus(str(folder))
    assert isinstance(corpus, DialogueCorpus)
    assert corpus.removed == {"train": 0, "valid": 1, "test": 2}
    assert len(corpus.dialogues["test"]) == 12
    assert corpus.describe()["duplicates_removed"]["test"] == 2
    train = set(corpus.dialogues["train"])
    assert not any(d in train for d in corpus.dialogues["test"])
    # the act/emotion label files are not read as text
    assert "1 2" not in corpus.text("train")


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_tokens_keep_speaker_marks_and_layout(folder, kind) -> None:
    corpus = load_corpus(str(folder))
    options = {"vocab_size": 300, "corpus": corpus} if kind == "bpe" else {}
    tok = build_tokenizer(kind, **options)
    layout = corpus.layout("test", tok)
    assert torch.equal(layout.tokens, corpus.tokens("test", tok))
    assert tok.decode(layout.tokens) == corpus.text("test")  # marks survive the tokenizer
    bounds = list(layout.turn_starts) + [len(layout.tokens)]
    for i, start in enumerate(layout.turn_starts[:40]):
        turn = tok.decode(layout.tokens[start : bounds[i + 1]])
        assert turn[:2] in ("A:", "B:")
        body = tok.decode(
            layout.tokens[start : bounds[i + 1]][layout.response[start : bounds[i + 1]]]
        )
        first_of_dialogue = i == 0 or layout.dialogue_of_turn[i] != layout.dialogue_of_turn[i - 1]
        assert (body == "") == first_of_dialogue
        if body:
            assert turn.startswith(turn[:2] + body)
    if kind == "bpe":
        assert tok.encode(corpus.text("test")).tolist() == layout.tokens.tolist()


def test_sample_batch_starts_at_turns_and_masks_non_responses(folder) -> None:
    corpus = load_corpus(str(folder))
    tok = build_tokenizer("byte")
    layout = corpus.layout("train", tok)
    g = torch.Generator().manual_seed(0)
    x, y = layout.sample_batch(32, 48, g, loss_on="all")
    assert x.shape == y.shape == (32, 48)
    row_starts = []
    for row in x:
        assert bytes(row.tolist())[:2] in (b"A:", b"B:")
        found = [int(s) for s in layout.turn_starts if torch.equal(layout.tokens[s : s + 48], row)]
        assert found, "every window starts at a turn start"
        row_starts.append(found[0])
    g = torch.Generator().manual_seed(0)
    x2, y2 = layout.sample_batch(32, 48, g, loss_on="responses")
    assert torch.equal(x, x2)
    masked = y2 == IGNORE
    assert masked.any() and (~masked).any()
    assert torch.equal(y2[~masked], y[~masked])
    for i, s in enumerate(row_starts):  # targets kept exactly where response bodies are
        assert torch.equal(~masked[i], torch.from_numpy(layout.response[s + 1 : s + 49]))
    # the rows of a global batch are the same windows whatever the split into ranks
    g = torch.Generator().manual_seed(0)
    xs, _ = layout.sample_batch(32, 48, g, rows=slice(16, 32))
    assert torch.equal(xs, x[16:32])


def test_bad_folders(tmp_path, folder) -> None:
    with pytest.raises(UserError, match="not a dialogue folder"):
        load_dialogues(tmp_path)
    (folder / "dialogues_test.txt").write_text("a __eou__ __eou__ b __eou__\n", encoding="utf-8")
    with pytest.raises(UserError, match="empty utterance"):
        load_corpus(str(folder))
    train = (folder / "dialogues_train.txt").read_text(encoding="utf-8")
    (folder / "dialogues_test.txt").write_text(train, encoding="utf-8")
    with pytest.raises(UserError, match="also occurs in train"):
        load_corpus(str(folder))


@pytest.mark.skipif(
    DAILYDIALOG is None, reason="DailyDialog not found at ../shared/data/dailydialog"
)
def test_dailydialog_duplicates() -> None:
    corpus = load_corpus(str(DAILYDIALOG))
    assert isinstance(corpus, DialogueCorpus)
    assert corpus.removed["test"] == 93
    assert corpus.removed["valid"] == 69
    assert len(corpus.dialogues["test"]) == 907
    assert len(corpus.dialogues["train"]) == 11118
    layout = corpus.layout("test", build_tokenizer("byte"))
    assert len(layout.turn_starts) == sum(len(d) for d in corpus.dialogues["test"])
    assert np.all(np.diff(layout.turn_starts) > 0)
