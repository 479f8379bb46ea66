"""Masked-token accuracy and MLM perplexity vs length, for encoders trained with the mlm objective.

Protocol. The evaluation stream is trimmed to the largest multiple of the longest length that
fits (and `max_tokens`), then corrupted *once*, as a whole, by `mask_tokens` with a fixed seed
(`EVAL_MASK_SEED`): 15% of positions selected, 80/10/10 mask id / random token / unchanged, as
in training. Each length L cuts that same corrupted stream into non-overlapping windows of L
and scores every selected position of every window. So every length — and every method with the
same tokenizer and data — is scored on exactly the same targets under the same corruption; only
the context each target sees (its window) changes. For a selected position i in a window:

    accuracy = mean 1[argmax_v p(v | x̃_window) = x_i]
    MLM ppl  = exp( Σ −log p(x_i | x̃_window) / #selected )

Chance accuracy is about the frequency of the most common token (for bytes, the space).
Records (one per length, flat like the LM eval's): {"length", "objective": "mlm",
"mlm_accuracy", "mlm_ppl", "masked_tokens", "nll_sum", "windows", "mask_seed"}; a length a
learned table cannot represent gives `"mlm_ppl": None` and the reason in "error".
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from extrapos.core.errors import UserError
from extrapos.probes.perplexity import BATCH_TOKENS
from extrapos.training.mlm import EVAL_MASK_SEED, IGNORE_INDEX, mask_tokens

__all__ = ["evaluate_mlm_lengths", "masked_stream", "mlm_scores"]


def masked_stream(
    tokens: Tensor,
    lengths: list[int],
    vocab_size: int,
    mask_id: int,
    seed: int = EVAL_MASK_SEED,
    max_tokens: int | None = None,
) -> tuple[Tensor, Tensor]:
    """The 1-D stream trimmed to a multiple of max(lengths) (≤ max_tokens) and corrupted once
    with `seed`: (inputs, targets), each (n,) int64; targets `IGNORE_INDEX` where unselected."""
    if tokens.ndim != 1:
        raise UserError(f"tokens must be a 1-D tensor, got shape {tuple(tokens.shape)}")
    if min(lengths) < 1:
        raise UserError(f"evaluation lengths must be >= 1, got {lengths}")
    longest = max(lengths)
    budget = tokens.numel() if max_tokens is None else min(tokens.numel(), max_tokens)
    usable = (budget // longest) * longest
    if usable == 0:
        raise UserError(
            f"the evaluation data has {tokens.numel()} tokens, fewer than the longest length "
            f"{longest}; use shorter lengths or more data"
        )
    generator = torch.Generator().manual_seed(seed)
    return mask_tokens(tokens[:usable].long(), generator, vocab_size, mask_id)


@torch.inference_mode()
def mlm_scores(
    model: torch.nn.Module,
    inputs: Tensor,
    targets: Tensor,
    length: int,
    progress: bool = False,
) -> dict[str, Any]:
    """Score a corrupted stream (from `masked_stream`) in non-overlapping windows of `length`
    (len(inputs) must be a multiple of it). Returns the record described in the module doc."""
    if inputs.numel() % length:
        raise UserError(f"the stream of {inputs.numel()} tokens is not a multiple of {length}")
    windows = inputs.numel() // length
    x_all, y_all = inputs.view(windows, length), targets.view(windows, length)
    device = next(model.parameters()).device
    batch = max(1, BATCH_TOKENS // length)
    nll_sum, correct, scored = 0.0, 0, 0
    was_training = model.training
    model.eval()
    for i in tqdm(range(0, windows, batch), disable=not progress, leave=False, desc=f"L={length}"):
        x, y = x_all[i : i + batch].to(device), y_all[i : i + batch].to(device)
        logits = model(x).float()  # (b, L, V)
        keep = y != IGNORE_INDEX
        picked, gold = logits[keep], y[keep]  # (k, V), (k,)
        nll_sum += float(F.cross_entropy(picked, gold, reduction="sum"))
        correct += int((picked.argmax(-1) == gold).sum())
        scored += int(keep.sum())
    model.train(was_training)
    if scored == 0:
        raise UserError("no position was selected for scoring; evaluate on more tokens")
    return {
        "length": length,
        "objective": "mlm",
        "mlm_accuracy": correct / scored,
        "mlm_ppl": math.exp(nll_sum / scored),
        "masked_tokens": scored,
        "nll_sum": nll_sum,
        "windows": windows,
    }


def evaluate_mlm_lengths(
    model: torch.nn.Module,
    tokens: Tensor,
    lengths: list[int],
    mask_id: int,
    seed: int = EVAL_MASK_SEED,
    max_tokens: int | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """`mlm_scores` at each length over one corrupted stream (see the module docstring);
    `mask_id` is the run's tokenizer's (`extrapos.data.tokenizers.mask_token_id`)."""
    if getattr(model, "config", None) is not None and model.config.causal:
        raise UserError(
            "masked-token evaluation needs an encoder (causal=False); this model is causal — "
            "evaluate it with the lm perplexity instead"
        )
    inputs, targets = masked_stream(
        tokens, lengths, model.config.vocab_size, mask_id, seed, max_tokens
    )
    records = []
    for length in lengths:
        encoding = getattr(model, "encoding", None)
        if encoding is not None and encoding.max_len is not None and length > encoding.max_len:
            try:
                encoding.check_positions(length - 1)
            except UserError as exc:
                records.append(
                    {"length": length, "objective": "mlm", "mlm_ppl": None, "error": str(exc)}
                )
                continue
        record = mlm_scores(model, inputs, targets, length, progress=progress)
        records.append({**record, "mask_seed": seed})
    return records
