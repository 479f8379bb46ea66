"""Passkey retrieval: an oracle that reads the key scores 100%, depth placement, exact lengths,
the fine-tune, duck-typed models and the `extrapos passkey` command."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from extrapos.cli import main
from extrapos.core.errors import UserError
from extrapos.data import ByteTokenizer
from extrapos.models.gpt import GPT, GPTConfig
from extrapos.probes.passkey import (
    FILLER,
    INTRO,
    QUESTION,
    finetune_passkey,
    make_passkey_example,
    passkey_grid,
    random_key,
)
from extrapos.training.run_dir import save_model

TOK = ByteTokenizer()
MAX_SENTENCE = max(len(TOK.encode(" " + s)) for s in FILLER)


class Oracle:
    """Reads the key out of each row's text (regex) and puts one-hot logits for " <key>" at
    the positions after the question, teacher-forced. `.tokenizer` and forward(idx) only."""

    def __init__(self, tokenizer, shift: int = 0) -> None:
        self.tokenizer, self.shift = tokenizer, shift
        self.question = tokenizer.encode(" " + QUESTION).tolist()

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*idx.shape, 256)
        for r, row in enumerate(idx.tolist()):
            text = self.tokenizer.decode(row)
            key = re.search(r"The pass key is (\d+)\. Remember it\.", text).group(1)
            key = str(int(key) + self.shift)
            q = len(self.question)
            end = next(i + q for i in range(len(row) - q + 1) if row[i : i + q] == self.question)
            for j, token in enumerate(self.tokenizer.encode(" " + key).tolist()):
                if end - 1 + j < len(row):
                    logits[r, end - 1 + j, token] = 1.0
        return logits


class WrappedOutput:
    """A model whose forward returns an object with `.logits` (as transformers models do)."""

    def __init__(self, inner) -> None:
        self.inner, self.tokenizer = inner, inner.tokenizer

    def __call__(self, idx):
        return type("Output", (), {"logits": self.inner(idx)})()


@pytest.mark.parametrize("wrap", [False, True])
def test_oracle_scores_100_percent(wrap):
    model = Oracle(TOK)
    model = WrappedOutput(model) if wrap else model
    records = passkey_grid(model, lengths=[300, 700], depths=[0, 0.3, 1], n_trials=3, seed=1)
    assert len(records) == 6
    assert all(r["accuracy"] == 1.0 and r["digit_accuracy"] == 1.0 for r in records)
    assert all(r["seq_len"] <= r["length"] for r in records)


def test_a_wrong_key_scores_zero():
    records = passkey_grid(Oracle(TOK, shift=1), TOK, [300], [0.5], n_trials=4, seed=0)
    assert records[0]["accuracy"] == 0.0
    assert 0 < records[0]["digit_accuracy"] < 1  # " " and most digits still right


@pytest.mark.parametrize("length", [260, 300, 1000, 4096])
@pytest.mark.parametrize("depth", [0.0, 0.1, 0.25, 0.5, 0.9, 1.0])
def test_depth_placement_and_exact_length(length, depth):
    key = "71432"
    e = make_passkey_example(TOK, length, depth, key)
    assert e.seq_len <= length  # the model reads at most `length` tokens, answer included
    assert e.prompt_len <= length
    assert e.seq_len > length - MAX_SENTENCE  # filler fills the rest up to one sentence
    text = TOK.decode(e.ids)
    assert text.startswith(INTRO)
    assert text.endswith(QUESTION + " " + key)
    assert TOK.decode(e.ids[e.key_start :]).startswith(f" The pass key is {key}.")
    before = e.key_start - e.filler_start
    # at the sentence boundary nearest to the requested fraction of the filler
    assert abs(before - depth * e.filler_len) <= MAX_SENTENCE / 2
    assert abs(e.actual_depth - depth) <= MAX_SENTENCE / 2 / max(e.filler_len, 1)
    filler_text = TOK.decode(e.ids[e.filler_start : e.key_start])
    assert filler_text == "" or filler_text.endswith(".")  # whole sentences only
    if depth == 0.0:
        assert e.key_start == e.filler_start
    if depth == 1.0:
        assert e.key_start + e.key_len == e.prompt_len - len(TOK.encode(" " + QUESTION))


def test_answer_is_the_key_continuation():
    e = make_passkey_example(TOK, 400, 0.5, "12345", intro="")
    assert TOK.decode(e.ids[e.prompt_len :]) == " 12345"
    assert e.answer_len == 6 and e.filler_start == 0
    assert TOK.decode(e.ids[: e.prompt_len]).endswith(QUESTION)


def test_bad_input():
    with pytest.raises(UserError, match="use a length >= "):
        make_passkey_example(TOK, 100, 0.5, "12345")
    with pytest.raises(UserError, match="depth must be in"):
        make_passkey_example(TOK, 400, 1.5, "12345")
    with pytest.raises(UserError, match="tokenizer"):
        passkey_grid(lambda idx: idx, lengths=[300])


def test_keys_are_random_and_reproducible():
    rng = np.random.default_rng(0)
    keys = [random_key(rng) for _ in range(50)]
    assert all(len(k) == 5 and k[0] != "0" for k in keys) and len(set(keys)) > 40
    rng2 = np.random.default_rng(0)
    assert keys == [random_key(rng2) for _ in range(50)]


def tiny_gpt(encoding: str = "alibi", **params) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, d_model=16, encoding=encoding,
                          encoding_params=params))  # fmt: skip
    return model


def test_finetune_runs_and_changes_weights():
    model = tiny_gpt()
    before = [p.detach().clone() for p in model.parameters()]
    info = finetune_passkey(model, TOK, length=120, steps=3, batch_size=2, intro="")
    assert len(info["losses"]) == 3 and all(np.isfinite(info["losses"]))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert not model.training
    records = passkey_grid(model, TOK, lengths=[120], depths=[0.5], n_trials=2, intro="")
    assert set(records[0]) >= {"length", "depth", "accuracy", "digit_accuracy", "n_trials"}


def test_a_length_past_a_learned_table_is_an_error_record():
    model = tiny_gpt("learned", max_len=150)
    records = passkey_grid(model, TOK, lengths=[140, 300], depths=[0.5], n_trials=1, intro="")
    assert records[0]["accuracy"] is not None
    assert records[1]["accuracy"] is None and "max_len=150" in records[1]["error"]


def test_passkey_command(tmp_path, capsys):
    run = tmp_path / "run"
    model = tiny_gpt()
    record = {"model": model.config.to_dict(), "train": {"train_len": 32}}
    save_model(run, model, record, TOK)
    out = tmp_path / "pk.json"
    argv = ["passkey", str(run), "--lengths", "120,160", "--depths", "0,1", "--trials", "2"]
    argv += ["--no-intro", "--finetune-steps", "2", "--finetune-len", "120", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "fine-tuned 2 steps" in text and "L=160" in text
    payload = json.loads(out.read_text())
    assert [(r["length"], r["depth"]) for r in payload["results"]] == [
        (120, 0.0),
        (120, 1.0),
        (160, 0.0),
        (160, 1.0),
    ]
    assert main(["passkey", str(run), "--lengths", "50"]) == 2
    assert "use a length >= " in capsys.readouterr().err
