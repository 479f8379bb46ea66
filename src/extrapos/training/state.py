"""What a resumed run needs besides its weights: `TrainState`.

`capture` turns the live objects (optimizer, sampler generator, RNGs) and the progress so far
into the dict saved as `train_state.pt` beside each checkpoint; `restore` puts a saved one back;
`mismatch` names the first setting that differs between a saved run and the one asked for, so a
resume with other flags is refused with the field that differs.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
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
        data: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The saved form: progress, optimizer and RNG states, and the settings it ran with
        (`data`: the corpus identity and tokenizer settings, see `data_identity`)."""
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
        if data is not None:
            state["data"] = data
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


#: the data settings a resume must keep: the corpus content and the tokenizer
DATA_FIELDS = ("content_hash", "tokenizer", "vocab_size")

_MISSING = "<missing>"


def data_identity(content_hash: str | None, tokenizer: str, vocab_size: int) -> dict[str, Any]:
    """What identifies a run's data (saved as `data` in the training state)."""
    return {"content_hash": content_hash, "tokenizer": tokenizer, "vocab_size": vocab_size}


def mismatch(
    saved: dict[str, Any],
    model_config: GPTConfig,
    train_config: TrainConfig,
    tokenizer_sha256: str,
    data: dict[str, Any] | None = None,
) -> str | None:
    """The first setting whose value in the saved state differs from the run asked for, as
    "section.field (saved X, now Y)", or None when the run can continue. Settings that do not
    change the weights a run reaches (checkpointing, device, compile, logging) may differ.

    A field the saved state lacks (a state written before the field existed) matches only when
    the run asks for that field's default; otherwise it is named as `<missing>`. `data` (see
    `data_identity`) is compared with the saved one when both are known."""
    free = set(asdict(train_config)) - set(train_config.trajectory())
    saved_train = {k: v for k, v in saved.get("train_config", {}).items() if k not in free}
    pairs = [
        ("model", saved.get("model_config", {}), model_config.to_dict(), _defaults(GPTConfig)),
        ("train", saved_train, train_config.trajectory(), _defaults(TrainConfig)),
    ]
    if data is not None and isinstance(saved.get("data"), dict):
        pairs.append(("data", saved["data"], data, {}))
    for section, before, now, defaults in pairs:
        for key in sorted(set(before) | set(now)):
            old = before.get(key, defaults.get(key, _MISSING))
            if old != now.get(key, _MISSING):
                old_text = old if old is _MISSING else repr(old)
                new_text = now[key] if key in now else _MISSING
                return f"{section}.{key} (saved {old_text}, now {new_text!r})"
    if saved.get("tokenizer_sha256", tokenizer_sha256) != tokenizer_sha256:
        return "the tokenizer (its hash differs)"
    return None


def _defaults(cls: type) -> dict[str, Any]:
    out = {}
    for f in fields(cls):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out
