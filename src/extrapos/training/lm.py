"""Training: next-token prediction on random windows of the train split (or, with
`TrainConfig.objective="mlm"`, BERT masked-token prediction by an encoder: see
`extrapos.training.mlm`; the windows, schedule, checkpoints and resume are the same).
This module is the driver: `train` (the loop) and `run_training` (from a config). The windows
it samples and validates on are `extrapos.training.windows`'s; its checks, run-directory
preparation and DDP/compile wrapping are `extrapos.training.prepare`'s.

One optimizer step, with B = `batch_size` (the global batch), A = `grad_accum`, W = world size:

1. lr = peak · `lr_factor(step)`: linear warmup, then cosine decay to `min_lr_ratio · lr`.
2. The sampler (a seeded `torch.Generator`, the same on every rank) draws B window starts in the
   train split. Rank r takes rows [r·B/W, (r+1)·B/W) and runs them as A micro-batches, each
   loss scaled by 1/A; DDP averages gradients over ranks. So the gradient is that of the mean
   loss over the B windows whatever W and A are, up to float summation order.
3. Gradient-norm clipping (`grad_clip`; the norm is logged either way), then AdamW (weight decay
   only on matrices of the Transformer body, not on norms, biases, embeddings or positional
   parameters).
4. A non-finite loss or gradient norm stops the run with a `UserError` naming the step, before
   the optimizer touches the weights; the checkpoints already written stay as they are.

`precision="bf16"` runs forward and backward under `torch.autocast(bfloat16)` (CPU and CUDA):
matmuls in bf16, weights, optimizer state, loss and the positional math in fp32 (encodings
compute their tables in fp32). `compile=True` trains through `torch.compile(model)`.

With a run directory (rank 0 writes; see `extrapos.training.run_dir` for the layout): a checkpoint
every `save_every` steps and at the end, keeping the last `keep_last`; `log.csv` with one row per
step (loss, lr, grad norm, tokens/s, validation every `EvalConfig.every` steps), TensorBoard
scalars in `tb/` when `tensorboard=True`; `config.json` with the resolved config. `resume=True`
continues from the newest checkpoint — weights, optimizer, schedule, sampler and RNG state, loss
history and log — to the same weights an uninterrupted run reaches.

Distributed data parallel: launch with `torchrun --nproc_per_node N -m extrapos train ...`;
`init_distributed()` joins the process group (NCCL on CUDA, gloo on CPU). Every rank must see
the same corpus and the run directory on a shared filesystem (every rank reads it on resume).
FSDP2 (`torch.distributed.fsdp.fully_shard`) is not wired in: the models here fit one device
many times over; the path would be `fully_shard` on each block then the root, and checkpoints
through `torch.distributed.checkpoint` (or a full state dict gathered on rank 0).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

from extrapos.core.errors import UserError
from extrapos.core.files import check_dir_target, run_lock
from extrapos.data import Corpus, Tokenizer
from extrapos.data.cache import tokenizer_hash
from extrapos.data.dialogue import DialogueCorpus, target_mask
from extrapos.data.tokenizers import mask_token_id, with_mask_token
from extrapos.models.gpt import GPT, GPTConfig
from extrapos.training.config import DataConfig, EvalConfig, RunConfig, TrainConfig
from extrapos.training.distributed import (
    DistInfo,
    barrier,
    distributed_info,
    init_distributed,
    resolve_device,
)
from extrapos.training.log import LOG_COLUMNS, RunLog
from extrapos.training.loop import autocast, lr_factor, make_optimizer, optimizer_step
from extrapos.training.mlm import check_encoder, mask_tokens, mlm_loss, validate_mlm
from extrapos.training.prepare import (
    check_shapes,
    diverged_error,
    prepare_run_dir,
    resolve_data_config,
    run_record,
    split_tokens,
    wrap_for_training,
)
from extrapos.training.run_dir import (
    latest_checkpoint,
    load_model,
    load_train_state,
    save_checkpoint,
)
from extrapos.training.state import TrainState, data_identity, mismatch
from extrapos.training.windows import sample_batch, validate

__all__ = [
    "LOG_COLUMNS",
    "DistInfo",
    "EvalConfig",
    "TrainConfig",
    "TrainResult",
    "distributed_info",
    "init_distributed",
    "lr_factor",
    "make_optimizer",
    "run_training",
    "sample_batch",
    "train",
    "validate",
]


@dataclass
class TrainResult:
    model: GPT
    losses: list[float]  # mean training loss of each optimizer step (over the global batch)
    train_seconds: float  # time in training steps (not validation or saving)
    tokens_per_second: float
    steps: int
    valid: list[tuple[int, float]] = field(default_factory=list)  # (step, valid loss)
    step_seconds: list[float] = field(default_factory=list)  # steps run by this call
    tokenizer: Tokenizer | None = None  # the tokenizer the model was trained with


def _lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the targets that are not -100 (ignored: outside
    dialogue responses under `loss_on="responses"`); logits (b, L, V), targets (b, L). A batch
    with no target left gives a zero loss (and zero gradient), not NaN."""
    flat = targets.flatten()
    if not bool((flat != -100).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float().flatten(0, 1), flat)


# ----------------------------------------------------------------------------- the loop


def train(
    model_config: GPTConfig,
    train_config: TrainConfig,
    corpus: Corpus,
    tokenizer: Tokenizer,
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    description: str = "train",
    eval_config: EvalConfig | None = None,
    data_config: DataConfig | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Train a GPT on `corpus`'s train split; see the module docstring.

    A run_dir holding another run's checkpoints is refused unless `resume` (continue it) or
    `overwrite` (delete them and start over).

    `eval_config` None: no periodic validation. `data_config` is only recorded (default: the
    corpus's name and the tokenizer's). Inside a torchrun job call `init_distributed()` first.
    """
    info = distributed_info()
    device = resolve_device(train_config.device, info)
    run_dir = check_dir_target(run_dir, "run directory (--out)") if run_dir is not None else None
    check_shapes(model_config, train_config, tokenizer, info)
    tokens = split_tokens(corpus, "train", tokenizer, train_config.train_len + 1)
    # dialogue corpora: windows start at turn boundaries, loss optionally on responses only
    turns = corpus.layout("train", tokenizer) if isinstance(corpus, DialogueCorpus) else None
    if train_config.loss_on != "all" and turns is None:
        raise UserError(
            f"train.loss_on={train_config.loss_on!r} needs a dialogue corpus (a DailyDialog-format "
            f"folder); {corpus.name} is plain text: use loss_on 'all'"
        )
    if eval_config is not None:
        eval_config = eval_config.resolved(train_config)
    valid_tokens = valid_mask = None
    if eval_config is not None and eval_config.every:
        valid_tokens = split_tokens(corpus, "valid", tokenizer, eval_config.length or 0)
        valid_mask = target_mask(corpus, "valid", tokenizer, train_config.loss_on)  # None: all
    data_config = resolve_data_config(data_config, corpus, tokenizer)

    torch.manual_seed(train_config.seed)
    model = GPT(model_config)
    model.encoding.check_positions(train_config.train_len - 1)
    mlm = train_config.objective == "mlm"
    if mlm:
        check_encoder(model_config, model.encoding.sites)
        mask_id = mask_token_id(tokenizer)
    model.to(device)
    optimizer = make_optimizer(model, train_config)
    generator = torch.Generator().manual_seed(train_config.seed)
    tok_hash = tokenizer_hash(tokenizer)
    data_id = data_identity(corpus.content_hash, tokenizer.name, tokenizer.vocab_size)
    # what a checkpoint's train state is checked against on resume, and saved with
    state_key = (model_config, train_config, tok_hash, data_id)
    lock = contextlib.ExitStack()
    if run_dir is not None and info.is_main:  # a second writer of run_dir is refused
        lock.enter_context(run_lock(run_dir, "run directory (--out)"))
    with lock:
        prepare_run_dir(run_dir, resume, overwrite, info)
        state = TrainState()
        if resume and latest_checkpoint(run_dir) is not None:
            state = _resume(run_dir, model, optimizer, generator, device, state_key)

        record = run_record(model_config, train_config, eval_config, data_config, corpus, tokenizer)

        def save(step: int) -> None:
            if run_dir is not None and info.is_main:
                saved = state.capture(
                    optimizer,
                    generator,
                    device,
                    model_config,
                    train_config,
                    tok_hash,
                    info.world_size,
                    data_id,
                )
                saved["step"] = step
                save_checkpoint(
                    run_dir, step, model, record, tokenizer, saved, keep_last=train_config.keep_last
                )
            barrier(info)

        forward, ddp, compile_settings = wrap_for_training(model, train_config, device, info)
        log = RunLog(
            run_dir if info.is_main else None, state.step, info.is_main and train_config.tensorboard
        )
        model.train()
        share = train_config.batch_size // info.world_size
        rows = slice(info.rank * share, (info.rank + 1) * share)
        tokens_per_step = train_config.batch_size * train_config.train_len
        # a uniform guess scores ln V; ten times that is no longer training but divergence
        diverged_above = 10 * math.log(model_config.vocab_size)
        start_step, step_seconds = state.step, []
        every = eval_config.every if eval_config is not None else 0
        score_valid = (
            partial(validate_mlm, mask_id=mask_id)
            if mlm
            else partial(validate, target_mask=valid_mask)
        )
        bar = tqdm(
            range(start_step, train_config.steps),
            initial=start_step,
            total=train_config.steps,
            desc=description,
            disable=not (progress and info.is_main),
            dynamic_ncols=True,
            leave=False,
        )

        def backward() -> torch.Tensor:
            if turns is not None:
                x, y = turns.sample_batch(
                    train_config.batch_size,
                    train_config.train_len,
                    generator,
                    None if mlm else rows,
                    train_config.loss_on,
                )
            else:
                x, y = sample_batch(
                    tokens,
                    train_config.batch_size,
                    train_config.train_len,
                    generator,
                    None if mlm else rows,
                )
            if mlm:  # mask the global batch (every rank draws alike), then take this rank's rows
                x, y = mask_tokens(x, generator, model_config.vocab_size, mask_id)
                x, y = x[rows], y[rows]
            return _forward_backward(forward, ddp, x.to(device), y.to(device), train_config, info)

        try:
            with compile_settings:
                for step in bar:
                    t0 = time.perf_counter()
                    stats = optimizer_step(model, optimizer, train_config, step, backward)
                    done = step + 1
                    _stop_if_diverged(stats, done, log, run_dir, train_config, diverged_above)
                    seconds = time.perf_counter() - t0
                    state.step, state.elapsed = done, state.elapsed + seconds
                    state.losses.append(stats.loss)
                    step_seconds.append(seconds)
                    row = _log_row(stats, done, seconds, state.elapsed, tokens_per_step)
                    if valid_tokens is not None and (
                        done % every == 0 or done == train_config.steps
                    ):
                        value = score_valid(
                            model,
                            valid_tokens,
                            eval_config.length or train_config.train_len,
                            eval_config.max_tokens,
                            share // train_config.grad_accum,
                            train_config.precision,
                            info,
                        )
                        state.valid.append((done, value))
                        row["valid_loss"], row["valid_ppl"] = value, math.exp(min(value, 700.0))
                    log.write(row)
                    tokens_now = (done - start_step) * tokens_per_step  # in this call
                    bar.set_postfix(
                        _postfix(stats.loss, tokens_now, sum(step_seconds), state.valid)
                    )
                    save_every = train_config.save_every
                    if save_every and done % save_every == 0 and done < train_config.steps:
                        save(done)
        finally:
            bar.close()
            log.close()
        save(train_config.steps)
        model.eval()
        trained_tokens = train_config.steps * tokens_per_step
        return TrainResult(
            model=model,
            losses=state.losses,
            train_seconds=state.elapsed,
            tokens_per_second=trained_tokens / max(state.elapsed, 1e-9),
            steps=train_config.steps,
            valid=state.valid,
            step_seconds=step_seconds,
            tokenizer=tokenizer,
        )


def _resume(
    run_dir: Path,
    model: GPT,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    device: torch.device,
    state_key: tuple[GPTConfig, TrainConfig, str, Any],
) -> TrainState:
    """Continue from run_dir's newest checkpoint: its weights into `model`, its optimizer,
    schedule, sampler and RNG state into the rest; refused when the saved run's model,
    training, tokenizer or data differ from `state_key`'s."""
    saved = load_train_state(run_dir)
    differs = mismatch(saved, *state_key)
    if differs:
        raise UserError(
            f"{run_dir} holds a run with another {differs}; resume it with the same "
            f"settings or pick another --out"
        )
    folder = latest_checkpoint(run_dir)
    model.load_state_dict(load_model(folder, map_location=device).state_dict())
    return TrainState.restore(saved, optimizer, generator, device)


def _stop_if_diverged(
    stats: Any, done: int, log: RunLog, run_dir: Path | None, config: TrainConfig, above: float
) -> None:
    """A non-finite loss or gradient norm (logged first), or a loss over `above`, stops the
    run with a `UserError` (`prepare.diverged_error`)."""
    if not stats.finite:
        log.write({"step": done, "lr": stats.lr, "loss": stats.loss, "grad_norm": stats.grad_norm})
        raise diverged_error(stats, done, run_dir, config)
    if stats.loss > above:
        raise diverged_error(stats, done, run_dir, config, above)


def _log_row(
    stats: Any, done: int, seconds: float, elapsed: float, tokens_per_step: int
) -> dict[str, Any]:
    """One step's log.csv row (validation columns are added when it ran)."""
    return {
        "step": done,
        "tokens": done * tokens_per_step,
        "lr": stats.lr,
        "loss": stats.loss,
        "grad_norm": stats.grad_norm,
        "tokens_per_s": tokens_per_step / max(seconds, 1e-9),
        "elapsed_s": elapsed,
    }


def _postfix(
    loss: float, tokens: int, seconds: float, valid: list[tuple[int, float]]
) -> dict[str, str]:
    """The progress bar's loss, tokens/s of this call, and last validation loss."""
    postfix = {"loss": f"{loss:.3f}", "tok_s": f"{tokens / (seconds + 1e-9):,.0f}"}
    if valid:
        postfix["valid"] = f"{valid[-1][1]:.3f}"
    return postfix


def _forward_backward(
    forward: Any,
    ddp: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    info: DistInfo,
) -> torch.Tensor:
    """Forward and backward over this rank's rows x, y (b, L) in `accum` micro-batches, each
    loss scaled by 1/accum (DDP syncs gradients on the last only). Returns the mean loss over
    the global batch, the same number on every rank. The loss is the objective's: next-token
    cross-entropy, or for mlm the mean over each micro-batch's selected positions."""
    accum, precision = config.grad_accum, config.precision
    micro = x.shape[0] // accum
    step_loss = torch.zeros((), device=x.device)
    for m in range(accum):
        xm, ym = x[m * micro : (m + 1) * micro], y[m * micro : (m + 1) * micro]
        sync = ddp is None or m == accum - 1
        with contextlib.nullcontext() if sync else ddp.no_sync():
            with autocast(x.device, precision):
                logits = forward(xm)
            loss = (mlm_loss if config.objective == "mlm" else _lm_loss)(logits, ym)
            (loss / accum if accum > 1 else loss).backward()
        step_loss += loss.detach()
    if accum > 1:
        step_loss /= accum
    if info.world_size > 1:  # gloo has no AVG: sum, then divide
        dist.all_reduce(step_loss)
        step_loss /= info.world_size
    return step_loss


# ----------------------------------------------------------------------------- from a config


def run_training(
    config: dict[str, Any] | RunConfig,
    run_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    where: str | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Train from a nested config dict (sections model/train/data/eval; see `extrapos.training.config`)
    or a `RunConfig`: validate it, load the corpus, build (or on resume, reload) the tokenizer,
    set the model's vocab_size to the tokenizer's, and call `train`.

    Under torchrun, rank 0 trains the BPE tokenizer and tokenizes the corpus (filling the
    on-disk cache) while the other ranks wait, then receives the same tokenizer.
    """
    from extrapos.data import build_tokenizer, load_corpus, load_tokenizer, tokenizer_from_dict
    from extrapos.training.run_dir import TOKENIZER

    if isinstance(config, RunConfig):
        config = config.to_dict()
    run = RunConfig.from_dict(config, where)  # fail fast, before any data is read
    info = distributed_info()
    corpus = load_corpus(run.data.name)

    tokenizer = None
    saved = Path(run_dir) / TOKENIZER
    if resume and saved.is_file() and latest_checkpoint(run_dir) is not None:
        tokenizer = load_tokenizer(saved)  # exactly the tokenizer the run started with
        if tokenizer.name != run.data.tokenizer:
            raise UserError(
                f"{run_dir} was trained with the {tokenizer.name} tokenizer, not "
                f"{run.data.tokenizer}; resume with the same flags or pick another --out"
            )
        wanted = run.data.tokenizer_options().get("vocab_size")
        if wanted is not None and wanted != tokenizer.vocab_size:
            raise UserError(
                f"{run_dir} holds a run with another data.vocab_size (saved "
                f"{tokenizer.vocab_size}, now {wanted}); resume it with the same settings or "
                "pick another --out"
            )
    if tokenizer is None:
        options = run.data.tokenizer_options()
        if run.data.tokenizer == "bpe":
            options["corpus"] = corpus
        if info.world_size > 1:
            built = (
                [build_tokenizer(run.data.tokenizer, **options).to_dict()]
                if info.is_main
                else [None]
            )
            dist.broadcast_object_list(built, src=0)
            tokenizer = tokenizer_from_dict(built[0])
        else:
            tokenizer = build_tokenizer(run.data.tokenizer, **options)
    if run.train.objective == "mlm":  # BPE gets its [MASK] token (the byte tokenizer has 0xFF)
        tokenizer = with_mask_token(tokenizer)
    if info.is_main:  # fill the token cache once, before the other ranks read it
        corpus.token_array("train", tokenizer)
    barrier(info)

    model_dict = {**config.get("model", {}), "vocab_size": tokenizer.vocab_size}
    run = RunConfig.from_dict({**config, "model": model_dict}, where)
    return train(
        run.model,
        run.train,
        corpus,
        tokenizer,
        run_dir=run_dir,
        resume=resume,
        progress=progress,
        description=f"train {run.model.encoding}",
        eval_config=run.eval,
        data_config=run.data,
        overwrite=overwrite,
    )
