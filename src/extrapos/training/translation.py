"""Training an encoder-decoder the translation way (Vaswani et al. 2017, section 5).

- loss: label-smoothed cross-entropy, ε = 0.1 (Szegedy et al. 2016), padding ignored:
  L = (1 - ε)·(-log p(y)) + ε·mean_v(-log p(v));
- batches by token count with length bucketing (`extrapos.data.parallel.token_batches`), the
  batch order shuffled per epoch by (seed, epoch);
- Adam (β = 0.9, 0.98, ε = 1e-9) with the inverse-square-root schedule
  lr(step) = peak · min(step / warmup, sqrt(warmup / step)), step counted from 1;
- "train short": `max_src_tokens` keeps only pairs whose source has at most that many tokens;
  the number kept is recorded in config.json and the result.

A run directory holds the same files as an LM run (`extrapos.checkpoint`: model.safetensors,
config.json with "kind": "seq2seq", tokenizer.json, checkpoints/step_N/ with train_state.pt), so
`resume=True` continues exactly: the batches of a step depend only on (seed, step), and the
optimizer and RNG states are restored.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from extrapos.core.errors import UserError
from extrapos.data import load_tokenizer
from extrapos.data.parallel import (
    ParallelData,
    encode_pairs,
    epoch_order,
    filter_max_src,
    joint_bpe,
    token_batches,
)
from extrapos.models.seq2seq import NUM_SPECIALS, Seq2Seq, Seq2SeqConfig
from extrapos.training.run_dir import (
    CONFIG,
    WEIGHTS,
    clear_checkpoints,
    latest_checkpoint,
    load_config,
    load_train_state,
    remove_partial_checkpoints,
    save_checkpoint,
)
from extrapos.training.translation_config import TranslationTrainConfig

KIND = "seq2seq"


def inverse_sqrt_lr(step: int, peak: float, warmup: int) -> float:
    """Vaswani et al.'s schedule scaled to a peak: linear warmup to `peak` at `warmup`, then
    peak·sqrt(warmup/step); `step` counts from 1."""
    step = max(step, 1)
    return peak * min(step / warmup, math.sqrt(warmup / step))


def smoothed_loss(
    logits: torch.Tensor, targets: torch.Tensor, pad_id: int, eps: float
) -> torch.Tensor:
    """Label-smoothed cross-entropy per target token; logits (b, T, V), targets (b, T)."""
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=pad_id,
        label_smoothing=eps,
    )


def make_batch(
    encoded: list[tuple[torch.Tensor, torch.Tensor]], rows: list[int], config: Seq2SeqConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """src (b, S), decoder input BOS + y (b, T + 1), targets y + EOS (b, T + 1), right-padded."""
    pad, bos, eos = config.pad_id, config.bos_id, config.eos_id
    s_len = max(len(encoded[i][0]) for i in rows)
    t_len = max(len(encoded[i][1]) for i in rows) + 1
    src = torch.full((len(rows), s_len), pad, dtype=torch.long)
    tgt_in = torch.full((len(rows), t_len), pad, dtype=torch.long)
    tgt_out = torch.full((len(rows), t_len), pad, dtype=torch.long)
    for r, i in enumerate(rows):
        s, t = encoded[i]
        src[r, : len(s)] = s
        tgt_in[r, 0] = bos
        tgt_in[r, 1 : len(t) + 1] = t
        tgt_out[r, : len(t)] = t
        tgt_out[r, len(t)] = eos
    return src, tgt_in, tgt_out


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name} asked for, but CUDA is not available; use --device cpu")
    return device


def _optimizer(model: Seq2Seq, config: TranslationTrainConfig) -> torch.optim.Adam:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        body = param.ndim >= 2 and "encoding" not in name.split(".")[0] and name != "embed.weight"
        (decay if body else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98), eps=1e-9)


@torch.no_grad()
def validation_loss(
    model: Seq2Seq, encoded: list[tuple[torch.Tensor, torch.Tensor]], max_tokens: int
) -> float:
    """Mean (unsmoothed) cross-entropy per target token over `encoded` pairs."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    lengths = [(len(s), len(t)) for s, t in encoded]
    for rows in token_batches(lengths, max_tokens):
        src, tgt_in, tgt_out = (x.to(device) for x in make_batch(encoded, rows, model.config))
        logits = model(src, tgt_in)
        n = int((tgt_out != model.config.pad_id).sum())
        total += float(smoothed_loss(logits, tgt_out, model.config.pad_id, 0.0)) * n
        count += n
    model.train(was_training)
    return total / max(count, 1)


def train_translation(
    data: ParallelData,
    model_config: dict[str, Any],
    train_config: TranslationTrainConfig,
    out: str | Path,
    resume: bool = False,
    data_spec: str = "",
    progress: bool = True,
) -> dict[str, Any]:
    """Train a `Seq2Seq` on `data`'s train split into run directory `out` (with `resume`,
    continue the run there, with its saved settings, to `train_config.steps`).

    model_config: Seq2SeqConfig fields except vocab_size (set from the joint BPE + specials).
    Returns a summary: steps, final/valid loss, kept and total train pairs, seconds, tokens/s.
    """
    out = Path(out)
    cfg = train_config
    state = None
    if resume:
        if latest_checkpoint(out) is None:
            raise UserError(f"--resume: {out} holds no checkpoint to resume; drop --resume")
        remove_partial_checkpoints(out)
        state = load_train_state(out)
        assert state is not None
        saved = load_config(out)
        model_config = {k: v for k, v in saved["model"].items() if k != "vocab_size"}
        # the saved settings, except the step count: resuming may extend a run
        cfg = replace(TranslationTrainConfig.from_dict(saved["train"]), steps=cfg.steps)
        tokenizer = load_tokenizer(out / "tokenizer.json")
    else:
        if (out / CONFIG).is_file() or (out / WEIGHTS).is_file():
            clear_checkpoints(out)
        tokenizer = joint_bpe(data, cfg.vocab_size)
    mconfig = Seq2SeqConfig(**{**model_config, "vocab_size": tokenizer.vocab_size + NUM_SPECIALS})
    device = _device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = Seq2Seq(mconfig).to(device)

    train_pairs = data.splits["train"]
    encoded_all = encode_pairs(tokenizer, train_pairs)
    kept = filter_max_src(encoded_all, cfg.max_src_tokens)
    if not kept:
        raise UserError(f"--max-src-tokens {cfg.max_src_tokens} keeps no training pair; raise it")
    encoded = [encoded_all[i] for i in kept]
    batches = token_batches([(len(s), len(t)) for s, t in encoded], cfg.max_tokens)
    valid_name = data.valid_split
    valid = encode_pairs(tokenizer, data.splits[valid_name]) if valid_name else []

    record = {
        "kind": KIND,
        "model": mconfig.to_dict(),
        "train": asdict(cfg),
        "data": {
            "data": data_spec or data.source,
            "src": data.src,
            "tgt": data.tgt,
            "train_pairs": len(train_pairs),
            "kept_pairs": len(kept),
            "skipped_empty": dict(data.skipped),
            "max_src_tokens": cfg.max_src_tokens,
            "valid_split": valid_name,
        },
        "tokenizer": {"type": tokenizer.name, "vocab_size": tokenizer.vocab_size},
    }
    optimizer = _optimizer(model, cfg)
    start, history, prior_seconds = 0, [], 0.0
    if state is not None:
        from safetensors.torch import load_model as st_load_model

        st_load_model(model, str(latest_checkpoint(out) / WEIGHTS), device=str(device))
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"])
        start, history = state["step"], state["history"]
        prior_seconds = float(state.get("seconds", 0.0))  # training time before the resume

    model.train()
    tokens_seen, t0 = 0, time.perf_counter()
    bar = tqdm(range(start, cfg.steps), desc="translate train", disable=not progress)
    loss_value = float("nan")
    for step in bar:
        epoch, index = divmod(step, len(batches))
        rows = batches[epoch_order(len(batches), cfg.seed, epoch)[index]]
        src, tgt_in, tgt_out = (x.to(device) for x in make_batch(encoded, rows, mconfig))
        lr = inverse_sqrt_lr(step + 1, cfg.lr, cfg.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = smoothed_loss(model(src, tgt_in), tgt_out, mconfig.pad_id, cfg.label_smoothing)
        if not torch.isfinite(loss):
            raise UserError(f"loss became {loss.item()} at step {step}; lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        loss_value = loss.item()
        tokens_seen += int((tgt_out != mconfig.pad_id).sum()) + int((src != mconfig.pad_id).sum())
        done = step + 1
        row: dict[str, Any] = {"step": done, "loss": loss_value, "lr": lr}
        if valid and cfg.eval_every and (done % cfg.eval_every == 0 or done == cfg.steps):
            row["valid_loss"] = validation_loss(model, valid, cfg.max_tokens)
        history.append(row)
        bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}")
        if done == cfg.steps or (cfg.save_every and done % cfg.save_every == 0):
            train_state = {
                "step": done,
                "optimizer": optimizer.state_dict(),
                "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state() if device.type == "cuda" else None,
                "history": history,
                "seconds": prior_seconds + time.perf_counter() - t0,
            }
            save_checkpoint(out, done, model, record, tokenizer, train_state)
    bar.close()
    session = time.perf_counter() - t0
    seconds = prior_seconds + session
    valid_losses = [r["valid_loss"] for r in history if "valid_loss" in r]
    return {
        "steps": cfg.steps,
        "final_loss": history[-1]["loss"] if history else None,
        "valid_loss": valid_losses[-1] if valid_losses else None,
        "train_pairs": len(train_pairs),
        "kept_pairs": len(kept),
        "max_src_tokens": cfg.max_src_tokens,
        "train_seconds": seconds,
        "tokens_per_second": tokens_seen / session if session > 0 else None,
        "num_params": model.num_params(),
    }


def load_seq2seq(
    run_dir: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[Seq2Seq, Any]:
    """A trained `Seq2Seq` (in eval mode) and its tokenizer, from a run directory."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model as st_load_model

    run_dir = Path(run_dir)
    config = load_config(run_dir)
    if config.get("kind") != KIND:
        raise UserError(
            f'{run_dir} is not a translation run (config.json has no "kind": "seq2seq"); '
            "train one with `extrapos translate train`"
        )
    model = Seq2Seq(Seq2SeqConfig.from_dict(config["model"]))
    weights = run_dir / WEIGHTS
    if not weights.is_file():
        raise UserError(f"{weights} is missing; the run has no saved weights yet")
    try:
        st_load_model(model, str(weights), device=str(map_location))
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise UserError(f"checkpoint {weights} is corrupt or another model's ({exc})") from exc
    tokenizer = load_tokenizer(run_dir / "tokenizer.json")
    model.eval()
    return model.to(map_location), tokenizer


__all__ = [
    "TranslationTrainConfig",
    "inverse_sqrt_lr",
    "load_seq2seq",
    "make_batch",
    "smoothed_loss",
    "train_translation",
    "validation_loss",
]
