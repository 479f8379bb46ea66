"""Optimization settings of `extrapos translate train` (`TranslationTrainConfig`).

Kept free of torch so the command line shows these true defaults without importing torch; the
training loop is `training.translation.train_translation`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from extrapos.core.errors import UserError


@dataclass
class TranslationTrainConfig:
    """Optimization settings of `train_translation`; validated on creation."""

    # The defaults are the config measured to reach BLEU >= 30 on Multi30k en->de (test_2016_flickr,
    # beam 4) within 30 minutes on 2 CPU cores with Seq2SeqConfig's default shape (README).
    steps: int = 4500
    max_tokens: int = 2048  # padded tokens per batch, per side
    lr: float = 1e-3  # peak of the inverse-sqrt schedule
    warmup_steps: int = 400
    label_smoothing: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    vocab_size: int = 4000  # joint BPE size (the model adds 3 specials)
    max_src_tokens: int | None = None
    save_every: int = 1000  # 0: only at the end
    eval_every: int = 500  # validation loss every N steps (0: never)
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("steps", "max_tokens", "vocab_size"):
            if getattr(self, name) < 1:
                raise UserError(f"translate train: {name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise UserError(f"translate train: lr must be > 0, got {self.lr}")
        if self.warmup_steps < 1:
            raise UserError(f"translate train: warmup_steps must be >= 1, got {self.warmup_steps}")
        if not 0 <= self.label_smoothing < 1:
            raise UserError(
                f"translate train: label_smoothing must be in [0, 1), got {self.label_smoothing}"
            )
        if self.max_src_tokens is not None and self.max_src_tokens < 1:
            raise UserError(f"--max-src-tokens must be >= 1, got {self.max_src_tokens}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TranslationTrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
