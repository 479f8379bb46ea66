"""What the LM driver (`extrapos.training.lm.train`) checks and prepares around its loop:
shapes and vocabulary, the token splits, the recorded data config, the run directory (refusing
another run's checkpoints), the DDP / compile wrapper, and the error a diverged run stops with.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from extrapos.core.errors import UserError
from extrapos.data import Corpus, Tokenizer
from extrapos.data.cache import tokenizer_hash
from extrapos.models.gpt import GPT, GPTConfig
from extrapos.training.config import DataConfig, EvalConfig, TrainConfig
from extrapos.training.distributed import DistInfo, barrier
from extrapos.training.run_dir import (
    CHECKPOINTS,
    TRAIN_STATE,
    clear_checkpoints,
    foreign_entries,
    latest_checkpoint,
    list_checkpoints,
    remove_partial_checkpoints,
)

__all__ = [
    "check_shapes",
    "diverged_error",
    "prepare_run_dir",
    "resolve_data_config",
    "run_record",
    "split_tokens",
    "wrap_for_training",
]


def run_record(
    model_config: GPTConfig,
    train_config: TrainConfig,
    eval_config: EvalConfig | None,
    data_config: DataConfig,
    corpus: Corpus,
    tokenizer: Tokenizer,
) -> dict[str, Any]:
    """The resolved config saved as config.json (a valid `--config` file itself)."""
    return {
        "model": model_config.to_dict(),
        "train": asdict(train_config),
        "eval": asdict(eval_config) if eval_config is not None else {"every": 0},
        "data": {**asdict(data_config), **corpus.describe(), "name": data_config.name},
        "tokenizer": {
            "type": tokenizer.name,
            "vocab_size": tokenizer.vocab_size,
            "sha256": tokenizer_hash(tokenizer),
        },
    }


def check_shapes(
    model_config: GPTConfig, train_config: TrainConfig, tokenizer: Tokenizer, info: DistInfo
) -> None:
    if train_config.objective == "lm" and not model_config.causal:
        raise UserError(
            "causal=False builds an encoder, which next-token training would let see its "
            "targets; train with causal=True"
        )
    if model_config.vocab_size != tokenizer.vocab_size:
        raise UserError(
            f"model vocab_size={model_config.vocab_size} differs from the tokenizer's "
            f"{tokenizer.vocab_size}; set vocab_size to the tokenizer's"
        )
    if train_config.batch_size % (info.world_size * train_config.grad_accum):
        raise UserError(
            f"batch_size={train_config.batch_size} must be divisible by world size "
            f"{info.world_size} x grad_accum {train_config.grad_accum}; change --batch-size"
        )


def split_tokens(corpus: Corpus, split: str, tokenizer: Tokenizer, window: int) -> Any:
    """The split's token array; an error when it cannot hold one window of `window` + 1."""
    tokens = corpus.token_array(split, tokenizer)
    if len(tokens) <= window:
        if split == "train":
            raise UserError(
                f"the train split has {len(tokens)} tokens, fewer than train_len + 2 = "
                f"{window + 1}; use more data or a shorter --train-len"
            )
        raise UserError(
            f"the valid split has {len(tokens)} tokens, too few for one validation "
            f"window of {window}; set eval.length lower or eval.every to 0"
        )
    return tokens


def resolve_data_config(
    data_config: DataConfig | None, corpus: Corpus, tokenizer: Tokenizer
) -> DataConfig:
    if data_config is None:
        return DataConfig(
            name=corpus.name,
            tokenizer=tokenizer.name if tokenizer.name in ("byte", "bpe") else "byte",
            vocab_size=tokenizer.vocab_size if tokenizer.name == "bpe" else None,
        )
    if data_config.content_hash not in (None, corpus.content_hash):
        raise UserError(
            f"the corpus {corpus.name} has changed: its hash is {corpus.content_hash[:12]}…, the "
            f"config says {data_config.content_hash[:12]}…; drop data.content_hash to train on "
            "it anyway"
        )
    return data_config


def prepare_run_dir(run_dir: Path | None, resume: bool, overwrite: bool, info: DistInfo) -> None:
    """Refuse to train over another run's checkpoints unless resuming or overwriting; clear
    what a resume must not see (partial checkpoints) or a fresh run must not keep."""
    if resume and run_dir is None:
        raise UserError("resume needs a run directory (--out)")
    if run_dir is not None and info.is_main:
        foreign = foreign_entries(run_dir)
        if foreign:
            names = ", ".join(p.name for p in foreign[:3]) + (" …" if len(foreign) > 3 else "")
            raise UserError(
                f"{run_dir / CHECKPOINTS} holds entries extrapos did not write ({names}); "
                "they are never deleted: move them away or choose another --out"
            )
        earlier = list_checkpoints(run_dir)
        legacy = (run_dir / TRAIN_STATE).is_file()
        if legacy and not earlier and not (resume or overwrite):
            raise UserError(
                f"{run_dir} holds the training state of an earlier run ({TRAIN_STATE}); pass "
                "--resume to continue it, --overwrite to delete it and start over, or choose "
                "another --out"
            )
        if earlier and not (resume or overwrite):
            raise UserError(
                f"{run_dir} holds checkpoints of an earlier run (up to step {earlier[-1][0]}); "
                f"pass --resume to continue it, --overwrite to delete them and start over, or "
                f"choose another --out"
            )
        (remove_partial_checkpoints if resume else clear_checkpoints)(run_dir)
    barrier(info)


def wrap_for_training(
    model: GPT, train_config: TrainConfig, device: torch.device, info: DistInfo
) -> tuple[Any, Any, contextlib.AbstractContextManager[Any]]:
    """What the steps call: the model, in DDP across ranks and/or compiled; the DDP wrapper
    (or None); the settings the compiled steps run under."""
    forward: Any = model
    ddp = None
    if info.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        # buffers (e.g. ALiBi slopes) are derived from the config, identical on every rank:
        # no need to re-broadcast them at every forward
        sync = (
            {"forward_sync_buffers": False}
            if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
            else {"broadcast_buffers": False}
        )
        ddp = DistributedDataParallel(model, device_ids=ids, **sync)
        forward = ddp
    settings: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if train_config.compile:
        forward = torch.compile(forward)
        # torch 2.13: a warm AOTAutograd cache hit replays aliased-output views with garbage
        # shapes for this model (RuntimeError "shape '[9404…, 5547…, 48]' is invalid"; the
        # pytorch issues 141974 and 177812 family); compiling without that cache is correct
        import torch._functorch.config as functorch_config

        settings = functorch_config.patch(enable_autograd_cache=False)
    return forward, ddp, settings


def diverged_error(
    stats: Any, done: int, run_dir: Path | None, config: TrainConfig, limit: float | None = None
) -> UserError:
    kept = latest_checkpoint(run_dir) if run_dir is not None else None
    where = f"the last checkpoint ({kept}) is kept" if kept else "nothing was saved"
    # a resume keeps the run's settings (lr, warmup), so the advice is a fresh start
    advice = (
        f"Rerun with a lower --lr (now {config.lr}) or more --warmup-steps, adding --overwrite "
        "to replace this run"
    )
    if limit is not None:
        return UserError(
            f"the loss reached {stats.loss:.4g} at step {done}, above 10 x ln(vocab) = "
            f"{limit:.1f} (a uniform guess scores ln(vocab)): the run diverged and stopped; "
            f"{where}. {advice}"
        )
    what = "loss" if not math.isfinite(stats.loss) else "gradient norm"
    return UserError(
        f"the {what} became {stats.loss if what == 'loss' else stats.grad_norm} at step "
        f"{done}; the run stopped before updating the weights and {where}. {advice}"
    )
