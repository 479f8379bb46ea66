"""A run directory: what a trained model needs to be used and resumed.

    RUN_DIR/
      model.safetensors   weights (tied embeddings stored once)
      config.json         {"model": GPTConfig, "train": TrainConfig, "data": corpus description}
      tokenizer.json      the tokenizer
      train_state.pt      optimizer, scheduler, step, RNG and data-sampler state (for --resume)

Every file is written atomically (extrapos.io), so a killed run leaves the previous checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model as st_load_model
from safetensors.torch import save_model as st_save_model

from extrapos.data import load_tokenizer, save_tokenizer
from extrapos.errors import UserError
from extrapos.io import atomic_path, read_json, write_json
from extrapos.model import GPT, GPTConfig

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER = "tokenizer.json"
TRAIN_STATE = "train_state.pt"


def save_model(run_dir: str | Path, model: GPT, config: dict[str, Any], tokenizer: Any) -> None:
    """Write weights, the resolved config (must hold "model") and the tokenizer into run_dir."""
    run_dir = Path(run_dir)
    with atomic_path(run_dir / WEIGHTS) as tmp:
        st_save_model(model, str(tmp))
    save_tokenizer(tokenizer, run_dir / TOKENIZER)
    write_json(run_dir / CONFIG, config)


def load_config(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist; train one with `extrapos train`")
    config = read_json(run_dir / CONFIG, "run config")
    if not isinstance(config, dict) or "model" not in config:
        raise UserError(
            f"run config {run_dir / CONFIG} has no 'model' section; is it an extrapos run?"
        )
    return config


def load_model(run_dir: str | Path, map_location: str | torch.device = "cpu") -> GPT:
    """GPT with weights, config and tokenizer (as `.tokenizer`) from a run directory."""
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    model = GPT(GPTConfig.from_dict(config["model"]))
    weights = run_dir / WEIGHTS
    if not weights.is_file():
        raise UserError(f"{weights} is missing; the run has no saved weights yet")
    try:
        missing, unexpected = st_load_model(
            model, str(weights), strict=False, device=str(map_location)
        )
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise UserError(
            f"checkpoint {weights} is corrupt, truncated or from another model ({exc}); "
            f"re-train or restore the file"
        ) from exc
    if missing or unexpected:
        raise UserError(
            f"checkpoint {weights} does not match its config: missing {sorted(missing)}, "
            f"unexpected {sorted(unexpected)}"
        )
    model.tokenizer = load_tokenizer(run_dir / TOKENIZER)
    return model.to(map_location)


def save_train_state(run_dir: str | Path, state: dict[str, Any]) -> None:
    with atomic_path(Path(run_dir) / TRAIN_STATE) as tmp:
        torch.save(state, tmp)


def load_train_state(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / TRAIN_STATE
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a truncated pickle/zip
        raise UserError(
            f"training state {path} is corrupt ({exc}); delete it to start over"
        ) from exc
