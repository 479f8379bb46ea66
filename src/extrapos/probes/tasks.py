"""Train a GPT on a task at small sizes; measure accuracy at every size (length generalization).

Protocol of Ruoss et al. 2023 / Deletang et al. 2023: each training step draws one problem
size uniformly from `train_lengths` (default 1 … L) and a batch of that size; the loss is the
cross-entropy on answer tokens only (`TaskBatch.mask`). Evaluation samples fresh problems at
each size up to many times L and reports exact-match and per-token accuracy as flat records.

Randomized positions (Ruoss et al. 2023): with `random_positions=M`, every batch (training and
evaluation alike, as in the paper) uses a sorted random subset of T positions from [0, M)
instead of 0 … T-1, so a model trained at T ≤ L has seen every position up to M. M must be at
least the longest evaluated sequence T.

Optimization reuses `extrapos.training.loop.fit_steps` (AdamW, warmup + cosine).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from extrapos.core.errors import UserError
from extrapos.data.tasks.base import Task, TaskBatch, score
from extrapos.models.gpt import GPT, GPTConfig


@dataclass
class TaskTrainResult:
    model: GPT
    losses: list[float]  # per step, on answer tokens
    train_seconds: float
    train_lengths: list[int]
    steps: int


def resolve_lengths(train_lengths: int | Sequence[int], task: Task) -> list[int]:
    """An int L means every size 1 … L (from the task's minimum); a list is used as given."""
    if isinstance(train_lengths, int):
        lengths = list(range(task.min_length(), train_lengths + 1))
    else:
        lengths = sorted({int(n) for n in train_lengths})
    if not lengths:
        raise UserError(f"no training lengths in {train_lengths!r}; give a length >= 1")
    for n in lengths:
        task.check_length(n)
    return lengths


def sample_positions(generator: torch.Generator, seq_len: int, max_position: int) -> Tensor:
    """Ruoss et al. 2023: a sorted random subset of `seq_len` positions of [0, max_position),
    shape (seq_len,) int64."""
    if max_position < seq_len:
        raise UserError(
            f"random_positions={max_position} is shorter than the sequence ({seq_len} tokens); "
            f"raise it to at least the longest evaluated sequence"
        )
    return torch.randperm(max_position, generator=generator)[:seq_len].sort().values


def _device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def _forward(model: Any, inputs: Tensor, positions: Tensor | None) -> Tensor:
    return model(inputs) if positions is None else model(inputs, positions=positions)


def task_loss(logits: Tensor, batch: TaskBatch) -> Tensor:
    """Mean cross-entropy over the masked (answer) targets; logits (b, T, V)."""
    return F.cross_entropy(logits[batch.mask], batch.targets[batch.mask])


def train_on_task(
    model_config: GPTConfig,
    task: Task,
    train_lengths: int | Sequence[int],
    steps: int,
    *,
    batch_size: int = 32,
    lr: float = 1e-3,
    warmup_steps: int | None = None,
    weight_decay: float = 0.1,
    grad_clip: float = 1.0,
    seed: int = 0,
    random_positions: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
    description: str = "task",
) -> TaskTrainResult:
    """Train a fresh GPT on `task` (loss on answer tokens only); see the module docstring.

    `model_config.vocab_size` is replaced by `task.vocab_size` (the embedding table must match
    the task's tokens). `train_lengths`: an int L (sizes 1 … L) or a list of sizes. Returns the
    trained model (in eval mode), the loss per step and the training time.
    """
    from extrapos.training.config import TrainConfig
    from extrapos.training.loop import fit_steps

    lengths = resolve_lengths(train_lengths, task)
    longest = max(task.seq_len(n) for n in lengths)
    train_config = TrainConfig(
        train_len=longest,
        batch_size=batch_size,
        steps=steps,
        lr=lr,
        warmup_steps=max(1, steps // 10) if warmup_steps is None else warmup_steps,
        weight_decay=weight_decay,
        grad_clip=grad_clip,
        seed=seed,
    )
    torch.manual_seed(seed)
    model = GPT(dataclasses.replace(model_config, vocab_size=task.vocab_size)).to(device)
    model.encoding.check_positions((random_positions or longest) - 1)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)

    def loss_at(step: int) -> torch.Tensor:
        batch = task.sample_batch(rng, batch_size, int(rng.choice(lengths))).to(device)
        positions = None
        if random_positions is not None:
            positions = sample_positions(generator, batch.inputs.shape[1], random_positions)
            positions = positions.to(device)
        return task_loss(_forward(model, batch.inputs, positions), batch)

    losses, seconds = fit_steps(model, train_config, loss_at, description, progress)
    return TaskTrainResult(model, losses, seconds, lengths, steps)


@torch.inference_mode()
def evaluate_task(
    model: Any,
    task: Task,
    lengths: Sequence[int],
    n_samples: int = 256,
    *,
    batch_size: int = 64,
    seed: int = 12345,
    random_positions: int | None = None,
    restrict_to_answer: bool = True,
) -> list[dict[str, Any]]:
    """Accuracy of `model` (anything with forward(idx (b, T)) -> logits (b, T, V)) on
    `n_samples` fresh problems per size.

    Returns one flat record per length: {"task", "length", "seq_len" (T), "accuracy"
    (exact match over the answer), "token_accuracy", "n_samples", "chance_accuracy",
    "chance_token_accuracy"}. A size the model cannot represent (a learned position table
    shorter than T) gives accuracy None and the reason in "error". Problems depend only on
    (seed, length), so two models see the same ones. With `restrict_to_answer` the prediction
    is the argmax over the task's answer alphabet (see `extrapos.data.tasks.base`).
    """
    if n_samples < 1:
        raise UserError(f"n_samples must be >= 1, got {n_samples}")
    device = _device(model)
    answer_tokens = task.answer_tokens if restrict_to_answer else None
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    records = []
    for length in lengths:
        task.check_length(length)
        record: dict[str, Any] = {
            "task": task.name,
            "length": int(length),
            "seq_len": task.seq_len(length),
        }
        rng = np.random.default_rng([seed, length])
        generator = torch.Generator().manual_seed(seed * 1_000_003 + length)
        seq_ok, tok_ok, tok_n = 0, 0, 0
        try:
            for start in range(0, n_samples, batch_size):
                batch = task.sample_batch(rng, min(batch_size, n_samples - start), length)
                positions = None
                if random_positions is not None:
                    positions = sample_positions(generator, batch.inputs.shape[1], random_positions)
                    positions = positions.to(device)
                batch = batch.to(device)
                s_ok, t_ok = score(_forward(model, batch.inputs, positions), batch, answer_tokens)
                seq_ok += int(s_ok.sum())
                tok_ok += int(t_ok.sum())
                tok_n += int(batch.mask.sum())
        except UserError as exc:
            records.append({**record, "accuracy": None, "token_accuracy": None, "error": str(exc)})
            continue
        records.append(
            {
                **record,
                "accuracy": seq_ok / n_samples,
                "token_accuracy": tok_ok / tok_n,
                "n_samples": n_samples,
                "chance_accuracy": task.chance_accuracy(length),
                "chance_token_accuracy": task.chance_token_accuracy,
            }
        )
    if hasattr(model, "train"):
        model.train(was_training)
    return records
