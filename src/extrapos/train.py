"""Training: next-token prediction on random windows of the train split.

AdamW (weight decay only on matrices of the Transformer body, not on norms, biases or positional
parameters), linear warmup then cosine decay to `min_lr_ratio · lr`, gradient-norm clipping, a
seeded sampler, a progress bar with loss and tokens/s. With a run directory, weights
(safetensors), the resolved config (JSON), the tokenizer and the training state are saved
atomically every `save_every` steps and at the end; `resume=True` continues from the last save.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from extrapos.checkpoint import load_train_state, save_model, save_train_state
from extrapos.data import Corpus, Tokenizer
from extrapos.errors import UserError
from extrapos.model import GPT, GPTConfig


@dataclass
class TrainConfig:
    """Optimization settings. Validated on creation; saved beside every run."""

    train_len: int = 128
    batch_size: int = 16
    steps: int = 400
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 40
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    save_every: int = 0  # 0: save only at the end

    def __post_init__(self) -> None:
        for name in ("train_len", "batch_size", "steps"):
            if getattr(self, name) < 1:
                raise UserError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "save_every"):
            if getattr(self, name) < 0:
                raise UserError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise UserError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise UserError(f"TrainConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise UserError("TrainConfig.weight_decay and grad_clip must be >= 0")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"train config has unknown field(s) {', '.join(unknown)}")
        return cls(**data)


@dataclass
class TrainResult:
    model: GPT
    losses: list[float]
    train_seconds: float
    tokens_per_second: float
    steps: int


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of the peak lr at `step`: linear warmup, then cosine to min_lr_ratio."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine


def make_optimizer(model: GPT, config: TrainConfig) -> torch.optim.AdamW:
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


def sample_batch(
    tokens: torch.Tensor, batch_size: int, length: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows: inputs (b, L) and next-token targets (b, L) from a 1-D token stream."""
    starts = torch.randint(0, tokens.numel() - length, (batch_size,), generator=generator)
    windows = torch.stack([tokens[s : s + length + 1] for s in starts.tolist()])
    return windows[:, :-1], windows[:, 1:]


def train(
    model_config: GPTConfig,
    train_config: TrainConfig,
    corpus: Corpus,
    tokenizer: Tokenizer,
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    description: str = "train",
) -> TrainResult:
    """Train a GPT on `corpus`'s train split; see the module docstring."""
    if model_config.vocab_size != tokenizer.vocab_size:
        raise UserError(
            f"model vocab_size={model_config.vocab_size} differs from the tokenizer's "
            f"{tokenizer.vocab_size}; set vocab_size to the tokenizer's"
        )
    tokens = corpus.tokens("train", tokenizer)
    if tokens.numel() <= train_config.train_len + 1:
        raise UserError(
            f"the train split has {tokens.numel()} tokens, fewer than train_len + 2 = "
            f"{train_config.train_len + 2}; use more data or a shorter --train-len"
        )
    torch.manual_seed(train_config.seed)
    model = GPT(model_config)
    model.tokenizer = tokenizer
    model.encoding.check_positions(train_config.train_len - 1)
    optimizer = make_optimizer(model, train_config)
    generator = torch.Generator().manual_seed(train_config.seed)
    start_step, losses, elapsed = 0, [], 0.0

    if resume:
        if run_dir is None:
            raise UserError("resume needs a run directory (--out)")
        state = load_train_state(run_dir)
        if state is not None:
            from extrapos.checkpoint import load_model

            if state["model_config"] != model_config.to_dict() or state["train_config"] != asdict(
                train_config
            ):
                raise UserError(
                    f"{run_dir} holds a run with another configuration; resume it with the same "
                    f"flags or pick another --out"
                )
            model.load_state_dict(load_model(run_dir).state_dict())
            optimizer.load_state_dict(state["optimizer"])
            generator.set_state(state["sampler_rng"])
            torch.set_rng_state(state["torch_rng"])
            start_step, losses, elapsed = state["step"], state["losses"], state["elapsed"]

    config_record = {
        "model": model_config.to_dict(),
        "train": asdict(train_config),
        "data": corpus.describe(),
        "tokenizer": tokenizer.to_dict(),
    }

    def save(step: int) -> None:
        if run_dir is None:
            return
        save_model(run_dir, model, config_record, tokenizer)
        save_train_state(
            run_dir,
            {
                "step": step,
                "optimizer": optimizer.state_dict(),
                "sampler_rng": generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "losses": losses,
                "elapsed": elapsed,
                "model_config": model_config.to_dict(),
                "train_config": asdict(train_config),
            },
        )

    model.train()
    tokens_per_step = train_config.batch_size * train_config.train_len
    bar = tqdm(
        range(start_step, train_config.steps),
        initial=start_step,
        total=train_config.steps,
        desc=description,
        disable=not progress,
        dynamic_ncols=True,
        leave=False,
    )
    for step in bar:
        t0 = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = train_config.lr * lr_factor(step, train_config)
        x, y = sample_batch(tokens, train_config.batch_size, train_config.train_len, generator)
        logits = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        if not torch.isfinite(loss):
            raise UserError(
                f"loss became {loss.item()} at step {step}; lower --lr (now {train_config.lr}) "
                f"or raise warmup; the last saved checkpoint is kept"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if train_config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.grad_clip)
        optimizer.step()
        elapsed += time.perf_counter() - t0
        losses.append(loss.item())
        done = step + 1
        bar.set_postfix(
            loss=f"{losses[-1]:.3f}", tok_s=f"{done * tokens_per_step / max(elapsed, 1e-9):,.0f}"
        )
        if (
            train_config.save_every
            and done % train_config.save_every == 0
            and done < train_config.steps
        ):
            save(done)
    bar.close()
    save(train_config.steps)
    model.eval()
    trained_tokens = (train_config.steps) * tokens_per_step
    return TrainResult(
        model=model,
        losses=losses,
        train_seconds=elapsed,
        tokens_per_second=trained_tokens / max(elapsed, 1e-9),
        steps=train_config.steps,
    )
