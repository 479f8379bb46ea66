"""A run directory: what a trained model needs to be used and resumed.

    RUN_DIR/
      model.safetensors   weights of the latest checkpoint (tied embeddings stored once)
      config.json         {"model", "train", "data", "eval", "tokenizer"} — the resolved config
      tokenizer.json      the tokenizer
      log.csv             one row per step (loss, lr, grad norm, validation, tokens/s)
      checkpoints/
        step_00000200/    a complete checkpoint: the three files above + train_state.pt
        step_00000400/    (the last `keep_last` are kept)

`train_state.pt` holds the optimizer, step, RNG and data-sampler state, the loss history and the
configs, so `--resume` continues to the same weights as an uninterrupted run.

A checkpoint is written into a temporary folder beside the others and renamed into place (one
atomic rename), so a killed run leaves only complete checkpoints; resume takes the newest. The
root files are then replaced one by one (each atomically) by hard links to the checkpoint's (a
copy where links are not supported), so `load_model(RUN_DIR)` reads the latest weights without
storing them twice. Every step folder is itself a run directory `load_model` accepts.
An old checkpoint is deleted by first renaming it to a temporary name (`core.files.remove_folder`),
so a kill mid-delete never leaves a partial step folder that resume would refuse as foreign.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model as st_load_model

from extrapos.core.errors import UserError
from extrapos.core.files import (
    TMP_MARK,
    atomic_path,
    check_dir_target,
    current_umask,
    is_our_temporary,
    read_json,
    remove_folder,
    write_json,
    write_safetensors,
    write_torch,
)
from extrapos.data import Tokenizer, load_tokenizer, save_tokenizer
from extrapos.models.gpt import GPT, GPTConfig, set_checkpoint_loader

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER = "tokenizer.json"
TRAIN_STATE = "train_state.pt"
CHECKPOINTS = "checkpoints"
#: model fields every run's config.json records; the others (random_positions, causal,
#: embed_scale) were added later and their defaults are what runs did before they existed
REQUIRED_MODEL_FIELDS = (
    "vocab_size",
    "n_layer",
    "n_head",
    "d_model",
    "encoding",
    "encoding_params",
    "d_ff",
    "norm_eps",
    "tie_embeddings",
)
_STEP_DIR = re.compile(r"step_(\d+)")


def save_model(run_dir: str | Path, model: GPT, config: dict[str, Any], tokenizer: Any) -> None:
    """Write weights, the resolved config (must hold "model") and the tokenizer into run_dir."""
    run_dir = check_dir_target(run_dir, "run directory")
    write_safetensors(run_dir / WEIGHTS, model)
    save_tokenizer(tokenizer, run_dir / TOKENIZER)
    write_json(run_dir / CONFIG, config)


def step_dir(run_dir: str | Path, step: int) -> Path:
    """`RUN_DIR/checkpoints/step_NNNNNNNN`."""
    return Path(run_dir) / CHECKPOINTS / f"step_{step:08d}"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete step checkpoints of a run, oldest first: [(step, folder)]."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.fullmatch(p.name)
        if m and p.is_dir() and (p / TRAIN_STATE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The folder to resume from: the newest step checkpoint, else RUN_DIR itself if it holds a
    `train_state.pt` (runs saved before step folders existed), else None."""
    found = list_checkpoints(run_dir)
    if found:
        return found[-1][1]
    legacy = Path(run_dir) / TRAIN_STATE
    return legacy.parent if legacy.is_file() else None


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: GPT,
    config: dict[str, Any],
    tokenizer: Any,
    state: dict[str, Any],
    keep_last: int = 1,
) -> Path:
    """Write a complete checkpoint for `step` (see the module docstring), publish its files in
    RUN_DIR, and delete all but the newest `keep_last` step checkpoints (0 keeps all)."""
    run_dir = check_dir_target(run_dir, "run directory")
    root = run_dir / CHECKPOINTS
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".step_{step:08d}.{TMP_MARK}", suffix=".tmp", dir=root))
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it 0700
    except OSError as exc:
        raise UserError(
            f"could not write a checkpoint in {root}: {exc.strerror or exc}; free space or pick "
            "another --out"
        ) from exc
    try:
        # each file through the safe writer: a failed write is a UserError naming the file
        write_safetensors(tmp / WEIGHTS, model, metadata={"step": str(step)})
        save_tokenizer(tokenizer, tmp / TOKENIZER)
        write_json(tmp / CONFIG, config)
        write_torch(tmp / TRAIN_STATE, state)
        final = step_dir(run_dir, step)
        if final.exists():  # the same step saved before (e.g. a resumed run): replace it
            if not _is_our_checkpoint(final):
                raise UserError(
                    f"{final} exists and is not an extrapos checkpoint; move it away or pick "
                    "another --out"
                )
            remove_folder(final)
        os.rename(tmp, final)
        _fsync_dir(root)
    except UserError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(
            f"checkpoint step {step} not saved (earlier ones are intact): {exc}"
        ) from exc
    except OSError as exc:  # a full disk, a quota, a vanished folder
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(
            f"could not write checkpoint step {step} in {root}: {exc.strerror or exc}; free "
            "space or pick another --out (earlier checkpoints are intact)"
        ) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for name in (WEIGHTS, CONFIG, TOKENIZER):
        _publish(final / name, run_dir / name)
    if keep_last > 0:
        for _, old in list_checkpoints(run_dir)[:-keep_last]:
            with contextlib.suppress(OSError):  # a folder that cannot go stays whole
                remove_folder(old)
    return final


def _is_our_checkpoint(folder: Path) -> bool:
    """A step folder extrapos wrote: named step_N, holding a train_state.pt and nothing but the
    files of a checkpoint."""
    if not (_STEP_DIR.fullmatch(folder.name) and folder.is_dir() and not folder.is_symlink()):
        return False
    names = {p.name for p in folder.iterdir()}
    return TRAIN_STATE in names and names <= {WEIGHTS, CONFIG, TOKENIZER, TRAIN_STATE}


def foreign_entries(run_dir: str | Path) -> list[Path]:
    """What a fresh run would have to delete but extrapos did not write: entries of
    RUN_DIR/checkpoints that are not our step checkpoints or leftovers of our saves."""
    root = Path(run_dir) / CHECKPOINTS
    if root.is_symlink() or (root.exists() and not root.is_dir()):
        return [root]
    if not root.is_dir():
        return []
    return [
        p
        for p in sorted(root.iterdir())
        if not (_is_our_checkpoint(p) or (p.is_dir() and is_our_temporary(p)))
    ]


def clear_checkpoints(run_dir: str | Path) -> None:
    """Remove a run's step checkpoints, leftovers of killed saves and a legacy train_state.pt
    (a fresh run in an old folder must not resume from, or keep, another run's state). Only what
    extrapos wrote is deleted: other entries of checkpoints/ are left (`foreign_entries`; the
    caller refuses to start over them)."""
    run_dir = Path(run_dir)
    remove_partial_checkpoints(run_dir)
    root = run_dir / CHECKPOINTS
    if root.is_dir() and not root.is_symlink():
        for p in root.iterdir():
            if _is_our_checkpoint(p):
                remove_folder(p)
        with contextlib.suppress(OSError):
            root.rmdir()  # only when empty
    legacy = run_dir / TRAIN_STATE
    if legacy.is_file() and not legacy.is_symlink():
        legacy.unlink()


def remove_partial_checkpoints(run_dir: str | Path) -> None:
    """Delete what saves that were killed left behind: temporary step folders, and the
    temporary files of atomic writes (`extrapos.core.files`: `.NAME.extrapos-XXXX.tmp`) in the
    run folder. Hidden `.tmp` files without that marker are not ours and stay."""
    run_dir = Path(run_dir)
    root = run_dir / CHECKPOINTS
    if root.is_dir() and not root.is_symlink():
        for p in root.glob(".step_*.tmp"):
            if p.is_dir() and not p.is_symlink() and is_our_temporary(p):
                shutil.rmtree(p, ignore_errors=True)
    if run_dir.is_dir():
        for p in run_dir.glob(".*.tmp"):
            if p.is_file() and not p.is_symlink() and is_our_temporary(p):
                p.unlink(missing_ok=True)


def _publish(src: Path, dst: Path) -> None:
    """Atomically make `dst` have `src`'s content: a hard link renamed over it (or a copy)."""
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError, AttributeError):  # not possible on every OS
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load_config(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist; train one with `extrapos train`")
    config = read_json(run_dir / CONFIG, "run config")
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise UserError(
            f"run config {run_dir / CONFIG} has no 'model' section; is it an extrapos run?"
        )
    return config


def _check_model_fields(run_dir: Path, model: dict[str, Any]) -> None:
    """A GPT run's config records every model field: a default could silently build another
    model."""
    missing = [name for name in REQUIRED_MODEL_FIELDS if name not in model]
    if missing:
        raise UserError(
            f"run config {run_dir / CONFIG} lacks model.{missing[0]}; a run's config records "
            "every model field (a default could silently build another model): restore the file"
        )


@dataclass
class TrainedRun:
    """A run directory loaded: the model, the tokenizer it was trained with, its config."""

    model: GPT
    tokenizer: Tokenizer
    config: dict[str, Any]


def load_run(run_dir: str | Path, map_location: str | torch.device = "cpu") -> TrainedRun:
    """Model, tokenizer and resolved config of a run directory (or one of its step
    checkpoints)."""
    model = load_model(run_dir, map_location)
    return TrainedRun(model, load_tokenizer(Path(run_dir) / TOKENIZER), load_config(run_dir))


def load_model(run_dir: str | Path, map_location: str | torch.device = "cpu") -> GPT:
    """The GPT (weights and config) of a run directory or one of its step checkpoints."""
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    _check_model_fields(run_dir, config["model"])
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
            f"checkpoint {weights} does not match its config (missing {sorted(missing)}, "
            f"unexpected {sorted(unexpected)}): the weights are another model's; restore this "
            f"run's {WEIGHTS} or re-train"
        )
    return model.to(map_location)


def save_train_state(run_dir: str | Path, state: dict[str, Any]) -> None:
    write_torch(Path(run_dir) / TRAIN_STATE, state)


def load_train_state(run_dir: str | Path) -> dict[str, Any] | None:
    """The training state of a run's newest checkpoint (see `latest_checkpoint`), or None."""
    folder = latest_checkpoint(run_dir)
    if folder is None:
        return None
    path = folder / TRAIN_STATE
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a truncated pickle/zip
        raise UserError(
            f"training state {path} is corrupt ({exc}); delete {folder} to resume from an "
            "older checkpoint, or start over without --resume"
        ) from exc


set_checkpoint_loader(load_model)  # GPT.from_checkpoint
