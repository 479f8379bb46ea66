"""Synthetic tasks: formats against an independent solver, oracle = 100%, random = chance,
determinism, masks, registry errors, a smoke training and the `extrapos tasks` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from extrapos.cli import main
from extrapos.core.errors import UserError
from extrapos.data.tasks import accuracy, get_task, list_tasks, pad_batches, score
from extrapos.data.tasks.base import SEP
from extrapos.models.gpt import GPTConfig
from extrapos.probes.tasks import evaluate_task, train_on_task

ALL_TASKS = list_tasks()
QUERY_TASKS = {"associative_recall", "counting"}  # one query token after <sep>


def test_registry_has_the_tasks():
    assert set(ALL_TASKS) >= {
        "copy",
        "reverse",
        "parity",
        "addition",
        "sort",
        "associative_recall",
        "selective_copy",
        "counting",
    }


def solve(task, tokens: list[str]) -> tuple[int, list[str]]:
    """Independent reference: from the token strings of a prompt (and maybe more), return
    (prompt length, answer tokens)."""
    sep = tokens.index(SEP)
    body = tokens[1:sep]
    prompt_len = sep + (2 if task.name in QUERY_TASKS else 1)
    name = task.name
    if name == "copy":
        answer = body
    elif name == "reverse":
        answer = body[::-1]
    elif name == "sort":
        answer = sorted(body, key=task.vocab.tokens.index)
    elif name == "parity":
        answer = ["odd" if body.count("1") % 2 else "even"]
    elif name == "addition":
        plus = body.index("+")
        a, b = body[:plus], body[plus + 1 :]
        if task.reverse_digits:
            a, b = a[::-1], b[::-1]
        total = str(int("".join(a)) + int("".join(b))).zfill(len(a) + 1)
        answer = list(total[::-1] if task.reverse_digits else total)
    elif name == "associative_recall":
        query = tokens[sep + 1]
        answer = [v for k, v in zip(body[0::2], body[1::2], strict=True) if k == query][-1:]
    elif name == "selective_copy":
        answer = [t for t in body if t != "."]
    elif name == "counting":
        answer = list(str(body.count(tokens[sep + 1])).zfill(task.width))
    else:
        raise AssertionError(f"no reference solver for task {name}; add one to this test")
    return prompt_len, answer


class SolverModel:
    """An oracle that *reads* each input row and answers it: one-hot logits of the reference
    answer at the positions that predict answer tokens (teacher forcing), zeros elsewhere."""

    def __init__(self, task) -> None:
        self.task = task

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*idx.shape, self.task.vocab_size)
        for r, row in enumerate(idx.tolist()):
            prompt_len, answer = solve(self.task, [self.task.vocab.tokens[i] for i in row])
            for j, tok in enumerate(answer):
                logits[r, prompt_len - 1 + j, self.task.vocab.id(tok)] = 1.0
        return logits


class RandomModel:
    def __init__(self, vocab_size: int, seed: int = 0) -> None:
        self.vocab_size, self.generator = vocab_size, torch.Generator().manual_seed(seed)

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.randn(*idx.shape, self.vocab_size, generator=self.generator)


@pytest.mark.parametrize("name", ALL_TASKS)
@pytest.mark.parametrize("length", [1, 6, 13])
def test_batches_match_the_reference_solver(name, length):
    task = get_task(name)
    batch = task.sample_batch(np.random.default_rng(length), 16, length)
    for r in range(16):
        seq = [*batch.inputs[r].tolist(), int(batch.targets[r, -1])]
        tokens = [task.vocab.tokens[i] for i in seq]
        prompt_len, answer = solve(task, tokens)
        assert tokens[prompt_len:] == answer
        assert prompt_len == task.prompt_length(length)
        assert len(answer) == task.answer_length(length)


@pytest.mark.parametrize("name", ALL_TASKS)
def test_shapes_masks_and_shift(name):
    task = get_task(name)
    length, b = 9, 5
    batch = task.sample_batch(np.random.default_rng(0), b, length)
    T = task.seq_len(length)
    assert batch.inputs.shape == batch.targets.shape == batch.mask.shape == (b, T)
    assert batch.inputs.dtype == batch.targets.dtype == torch.int64
    assert batch.mask.dtype == torch.bool
    assert torch.equal(batch.targets[:, :-1], batch.inputs[:, 1:])  # next-token targets
    assert (batch.inputs[:, 0] == task.vocab.bos_id).all()
    A = task.answer_length(length)
    expected = torch.zeros(T, dtype=torch.bool)
    expected[T - A :] = True  # exactly the answer targets, at the end
    assert (batch.mask == expected).all()
    assert int(batch.inputs.max()) < task.vocab_size and int(batch.inputs.min()) >= 1
    answers = batch.targets[batch.mask]
    assert torch.isin(answers, task.answer_tokens).all()


@pytest.mark.parametrize("name", ALL_TASKS)
def test_batches_are_deterministic(name):
    task = get_task(name)
    one = task.sample_batch(np.random.default_rng(7), 4, 10)
    two = task.sample_batch(np.random.default_rng(7), 4, 10)
    other = task.sample_batch(np.random.default_rng(8), 4, 10)
    assert torch.equal(one.inputs, two.inputs) and torch.equal(one.targets, two.targets)
    assert not torch.equal(one.inputs, other.inputs)
    t1 = task.sample_batch(torch.Generator().manual_seed(3), 4, 10)
    t2 = task.sample_batch(torch.Generator().manual_seed(3), 4, 10)
    assert torch.equal(t1.inputs, t2.inputs)


@pytest.mark.parametrize("name", ALL_TASKS)
def test_oracle_scores_100_percent(name):
    task = get_task(name)
    # ground truth as one-hot logits
    batch = task.sample_batch(np.random.default_rng(1), 8, 7)
    onehot = torch.nn.functional.one_hot(batch.targets, task.vocab_size).float()
    assert accuracy(onehot, batch, task.answer_tokens) == {"accuracy": 1.0, "token_accuracy": 1.0}
    assert accuracy(onehot, batch) == {"accuracy": 1.0, "token_accuracy": 1.0}
    # a solver that reads the prompt, through evaluate_task
    records = evaluate_task(SolverModel(task), task, [1, 5, 11], n_samples=24, batch_size=10)
    assert [r["accuracy"] for r in records] == [1.0, 1.0, 1.0]
    assert [r["token_accuracy"] for r in records] == [1.0, 1.0, 1.0]


#: chance token accuracy of uniformly random predictions over the answer alphabet
CHANCE = {
    "copy": 1 / 8,
    "reverse": 1 / 8,
    "sort": 1 / 8,
    "parity": 1 / 2,
    "addition": 1 / 10,
    "associative_recall": 1 / 10,
    "selective_copy": 1 / 8,
    "counting": 1 / 10,
}


@pytest.mark.parametrize("name", ALL_TASKS)
def test_random_logits_score_chance(name):
    task = get_task(name)
    assert task.chance_token_accuracy == pytest.approx(CHANCE[name])
    length = 8
    n = 1200 if task.answer_length(length) == 1 else 300
    (record,) = evaluate_task(RandomModel(task.vocab_size), task, [length], n_samples=n)
    scored = n * task.answer_length(length)
    tolerance = 4.5 * (CHANCE[name] * (1 - CHANCE[name]) / scored) ** 0.5
    assert abs(record["token_accuracy"] - CHANCE[name]) < tolerance
    assert record["chance_accuracy"] == pytest.approx(CHANCE[name] ** task.answer_length(length))
    assert abs(record["accuracy"] - record["chance_accuracy"]) < max(0.05, tolerance)


def test_score_counts_only_masked_positions():
    task = get_task("copy")
    batch = task.sample_batch(np.random.default_rng(0), 3, 4)
    logits = torch.nn.functional.one_hot(batch.targets, task.vocab_size).float()
    logits[~batch.mask] = -logits[~batch.mask]  # wrong everywhere outside the answer
    seq_ok, tok_ok = score(logits, batch, task.answer_tokens)
    assert seq_ok.all() and int(tok_ok.sum()) == 3 * 4
    logits[0, -1] = -logits[0, -1]  # one wrong answer token
    result = accuracy(logits, batch, task.answer_tokens)
    assert result == {"accuracy": pytest.approx(2 / 3), "token_accuracy": pytest.approx(11 / 12)}


def test_pad_batches_masks_padding():
    task = get_task("reverse")
    short = task.sample_batch(np.random.default_rng(0), 2, 3)
    long = task.sample_batch(np.random.default_rng(1), 2, 6)
    joined = pad_batches([short, long])
    assert joined.inputs.shape == (4, task.seq_len(6))
    assert (joined.inputs[:2, task.seq_len(3) :] == task.vocab.pad_id).all()
    assert int(joined.mask.sum()) == 2 * 3 + 2 * 6


def test_registry_and_parameter_errors():
    with pytest.raises(UserError, match="unknown task 'nope'; known tasks: addition"):
        get_task("nope")
    with pytest.raises(UserError, match="no parameter"):
        get_task("copy", colour=3)
    with pytest.raises(UserError, match="num_symbols"):
        get_task("copy", num_symbols=1)
    with pytest.raises(UserError, match="data_fraction"):
        get_task("selective_copy", data_fraction=0)
    with pytest.raises(UserError, match=r"length must be \[1, 99\]"):
        get_task("counting", width=2).sample_batch(np.random.default_rng(0), 1, 100)
    with pytest.raises(UserError, match="length must be >= 1"):
        get_task("copy").sample_batch(np.random.default_rng(0), 1, 0)
    assert get_task("addition", reverse_digits=False).params() == {"reverse_digits": False}


def test_smoke_training_and_evaluation():
    config = GPTConfig(n_layer=1, n_head=2, d_model=16, encoding="alibi")
    task = get_task("copy", num_symbols=4)
    result = train_on_task(config, task, 6, steps=8, batch_size=8, lr=3e-3)
    assert len(result.losses) == 8 and all(np.isfinite(result.losses))
    assert result.train_lengths == [1, 2, 3, 4, 5, 6]
    assert result.model.config.vocab_size == task.vocab_size
    records = evaluate_task(result.model, task, [6, 12], n_samples=16)
    assert [r["length"] for r in records] == [6, 12]
    for r in records:
        assert set(r) >= {"task", "length", "accuracy", "token_accuracy", "seq_len"}
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["token_accuracy"] <= 1


def test_randomized_positions_and_position_limits():
    task = get_task("parity")
    config = GPTConfig(n_layer=1, n_head=2, d_model=16, encoding="learned",
                       encoding_params={"max_len": 40})  # fmt: skip
    result = train_on_task(config, task, [4, 8], steps=3, batch_size=4, random_positions=40)
    records = evaluate_task(result.model, task, [8, 30, 60], n_samples=8, random_positions=40)
    assert records[0]["accuracy"] is not None and records[1]["accuracy"] is not None
    assert records[2]["accuracy"] is None and "random_positions=40" in records[2]["error"]
    plain = evaluate_task(result.model, task, [30, 60], n_samples=8)
    assert plain[0]["accuracy"] is not None
    assert plain[1]["accuracy"] is None and "max_len=40" in plain[1]["error"]


def test_tasks_command(tmp_path, capsys):
    out = tmp_path / "copy.json"
    csv_path = tmp_path / "copy.csv"
    argv = ["tasks", "--task", "copy", "--encoding", "alibi,nope", "--train-len", "4"]
    argv += ["--eval-lens", "4,8", "--steps", "3", "--n-layer", "1", "--d-model", "16"]
    argv += ["--eval-samples", "8", "--out", str(out), "--csv", str(csv_path)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "L=4" in text and "L=8" in text and "alibi" in text and "nope" in text
    payload = json.loads(out.read_text())
    assert payload["task"] == "copy" and len(payload["results"]) == 4
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("encoding,task,length,seq_len,accuracy,token_accuracy")
    assert len(lines) == 5
    assert main(["tasks", "--list"]) == 0
    assert "associative_recall" in capsys.readouterr().out
    assert main(["tasks", "--task", "nope", "--encoding", "alibi"]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err
