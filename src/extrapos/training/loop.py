"""The one optimisation step every trainer here uses — the corpus LM (`training.lm.train`),
the synthetic-task models and the passkey fine-tunes (`fit_steps`).

One step at `step`: lr = peak · `lr_factor(step)` (linear warmup, then cosine decay to
`min_lr_ratio · lr`); gradients from the caller's forward+backward; the gradient norm
clipped at `grad_clip` (0: not clipped, still measured); AdamW (`make_optimizer`: weight decay
only on matrices of the Transformer body). A non-finite loss or gradient norm leaves the
weights untouched and is reported to the caller, which names the step.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from extrapos.core.errors import UserError
from extrapos.training.config import TrainConfig


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of the peak lr at `step`: linear warmup, then cosine to min_lr_ratio."""
    warmup = config.warmup_steps or 0
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, config.steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; decay only weight matrices of the Transformer body (not norms, biases, the
    positional encoding's parameters, nor the embedding)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        body_matrix = param.ndim >= 2 and not name.startswith(("encoding.", "embed."))
        (decay if body_matrix else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95), eps=1e-8)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """bf16: `torch.autocast` for matmuls (weights, optimizer state and loss stay fp32)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass(frozen=True)
class StepStats:
    lr: float
    loss: float
    grad_norm: float

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss) and math.isfinite(self.grad_norm)


def optimizer_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    step: int,
    backward: Callable[[], torch.Tensor],
) -> StepStats:
    """One step: set the lr, zero the gradients, `backward()` (forward and backward; returns
    the step's loss), clip, and — only when loss and gradient norm are finite — update."""
    lr = config.lr * lr_factor(step, config)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss = float(backward())
    max_norm = config.grad_clip if config.grad_clip > 0 else math.inf
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
    stats = StepStats(lr, loss, grad_norm)
    if stats.finite:
        optimizer.step()
    return stats


def fit_steps(
    model: torch.nn.Module,
    config: TrainConfig,
    loss_at: Callable[[int], torch.Tensor],
    description: str = "train",
    progress: bool = True,
) -> tuple[list[float], float]:
    """`config.steps` optimizer steps on the loss `loss_at(step)`, for objectives other than
    the corpus LM (tasks, passkey fine-tunes). Returns the loss per step and the seconds spent;
    the model is left in eval mode. A non-finite step stops with its number."""
    optimizer = make_optimizer(model, config)
    losses: list[float] = []
    model.train()
    start = time.perf_counter()

    def backward(step: int) -> torch.Tensor:
        loss = loss_at(step)
        loss.backward()
        return loss.detach()

    bar = tqdm(range(config.steps), desc=description, disable=not progress, leave=False)
    for step in bar:
        stats = optimizer_step(model, optimizer, config, step, lambda step=step: backward(step))
        if not stats.finite:
            raise UserError(
                f"the loss became {stats.loss} (gradient norm {stats.grad_norm}) at step {step}; "
                f"lower the learning rate (now {config.lr})"
            )
        losses.append(stats.loss)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    model.eval()
    return losses, time.perf_counter() - start
