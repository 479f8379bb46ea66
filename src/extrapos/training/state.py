"""What a resumed run needs besides its weights: `TrainState`.

`capture` turns the live objects (optimizer, sampler generator, RNGs) and the progress so far
into the dict saved as `train_state.pt` beside each checkpoint; `restore` puts a saved one back;
`mismatch` names the first setting that differs between a saved run and the one asked for, so a
resume with other flags is refused with the field that differs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from extrapos.models.config import GPTConfig
from extrapos.training.config import TrainConfig


@dataclass
class TrainState:
    """Progress of a run: the next step to take, the loss of each step so far, validation
    points (step, loss), and the seconds spent in training steps."""

    step: int = 0
    losses: list[float] = field(default_factory=list)
    valid: list[tuple[int, float]] = field(default_factory=list)
    elapsed: float = 0.0

    def capture(
        self,
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
        device: torch.device,
        model_config: GPTConfig,
        train_config: TrainConfig,
        tokenizer_sha256: str,
        world_size: int,
    ) -> dict[str, Any]:
        """The saved form: progress, optimizer and RNG states, and the settings it ran with."""
        state = {
            "step": self.step,
            "optimizer": optimizer.state_dict(),
            "sampler_rng": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "losses": self.losses,
            "valid": self.valid,
            "elapsed": self.elapsed,
            "model_config": model_config.to_dict(),
            "train_config": asdict(train_config),
            "tokenizer_sha256": tokenizer_sha256,
            "world_size": world_size,
        }
        if device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(device)
        return state

    @classmethod
    def restore(
        cls,
        saved: dict[str, Any],
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
        device: torch.device,
    ) -> TrainState:
        """Load optimizer and RNG states from `saved` into the live objects; the progress."""
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["sampler_rng"])
        torch.set_rng_state(saved["torch_rng"])
        if device.type == "cuda" and "cuda_rng" in saved:
            torch.cuda.set_rng_state(saved["cuda_rng"], device)
        valid = [(int(s), float(v)) for s, v in saved.get("valid", [])]
        return cls(saved["step"], list(saved["losses"]), valid, saved["elapsed"])


def mismatch(
    saved: dict[str, Any], model_config: GPTConfig, train_config: TrainConfig, tokenizer_sha256: str
) -> str | None:
    """The first setting whose value in the saved state differs from the run asked for, as
    "section.field (saved X, now Y)", or None when the run can continue. Settings that do not
    change the weights a run reaches (checkpointing, device, compile, logging) may differ."""
    saved_train = TrainConfig(**saved["train_config"]).trajectory()
    pairs = [
        ("model", saved["model_config"], model_config.to_dict()),
        ("train", saved_train, train_config.trajectory()),
    ]
    for section, before, now in pairs:
        for key in sorted(set(before) | set(now)):
            if before.get(key) != now.get(key):
                return f"{section}.{key} (saved {before.get(key)!r}, now {now.get(key)!r})"
    if saved.get("tokenizer_sha256", tokenizer_sha256) != tokenizer_sha256:
        return "the tokenizer (its hash differs)"
    return None
