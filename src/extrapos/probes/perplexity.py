"""Perplexity vs length under explicit protocols.

Protocols (both score each target token at most once; a target is token t+1 predicted from
tokens ≤ t of its window):

- `nonoverlap` (Press et al. 2022, the ALiBi paper's protocol): windows start at 0, L, 2L, …
  while a full window of L inputs plus its next-token targets fits; each window scores all L
  targets from its own prefix only, so early tokens of a window see little context.
- `sliding` with stride S (default L/2; the PI/YaRN protocol): window k covers inputs
  [kS, kS + L); the first window scores all L targets, later ones only their last S targets
  (those not scored before), so every target after the first window has ≥ L − S tokens of context.

`evaluate_lengths` trims the token stream so that, where the lengths divide the longest one,
every length scores exactly the same targets; it reports how many targets each scored.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from extrapos.core.errors import UserError
from extrapos.probes.scored import ScoredLM

Protocol = Literal["nonoverlap", "sliding"]
PROTOCOLS: tuple[str, ...] = ("nonoverlap", "sliding")

#: tokens per forward batch (windows are batched up to this many tokens).
BATCH_TOKENS = 16384
#: an evaluation expected to take longer than this says so when it starts
LONG_EVAL_SECONDS = 60.0


def eval_windows(
    num_tokens: int, length: int, protocol: Protocol = "nonoverlap", stride: int | None = None
) -> list[tuple[int, int]]:
    """(start, first scored offset) of every window over a stream of `num_tokens` tokens.

    Window (start, first) feeds inputs tokens[start : start + L] and scores targets
    tokens[start + 1 + o] for o in [first, L).
    """
    if length < 1:
        raise UserError(f"evaluation length must be >= 1, got {length}")
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol '{protocol}'; known: {', '.join(PROTOCOLS)}")
    if num_tokens < length + 1:
        raise UserError(
            f"the evaluation data has {num_tokens} tokens, fewer than length + 1 = {length + 1}; "
            f"use a shorter length or more data"
        )
    if protocol == "nonoverlap":
        if stride is not None:
            raise UserError("--stride applies to the sliding protocol only")
        return [(start, 0) for start in range(0, num_tokens - length, length)]
    stride = length // 2 if stride is None else stride
    if not 1 <= stride <= length:
        raise UserError(f"stride must be in [1, length={length}], got {stride}")
    starts = range(0, num_tokens - length, stride)
    return [(start, 0 if k == 0 else length - stride) for k, start in enumerate(starts)]


@torch.inference_mode()
def perplexity(
    model: ScoredLM,
    tokens: Tensor,
    length: int,
    protocol: Protocol = "nonoverlap",
    stride: int | None = None,
    token_bytes: Tensor | None = None,
    progress: bool = False,
    desc: str | None = None,
) -> dict[str, Any]:
    """Perplexity of `model` on the 1-D int64 `tokens` with windows of `length` tokens.

    Returns {"ppl", "nll_sum", "tokens" (scored targets), "bits_per_byte" (None when the bytes per
    token are unknown), "length", "protocol", "stride", "windows", "position_nll"} where
    position_nll[o] is the mean loss of targets at window offset o (None where none scored).
    `token_bytes` (V,) gives the bytes each token stands for (`Tokenizer.token_bytes()`);
    without it bits per byte is None.
    With `progress`, a bar named `desc` (default "ppl L=<length> <protocol>"), and when the
    first batch says the whole will take over a minute, a line on stderr saying so up front
    (windows × measured seconds per batch).
    """
    if tokens.ndim != 1:
        raise UserError(f"tokens must be a 1-D tensor, got shape {tuple(tokens.shape)}")
    windows = eval_windows(tokens.numel(), length, protocol, stride)
    device = next(model.parameters()).device
    batch = max(1, BATCH_TOKENS // length)
    nll_sum, scored, num_bytes = 0.0, 0, 0
    position_sum = torch.zeros(length, dtype=torch.float64)
    position_count = torch.zeros(length, dtype=torch.long)
    offsets = torch.arange(length)
    was_training = model.training
    model.eval()
    batches = range(0, len(windows), batch)
    label = desc or f"ppl L={length} {protocol}" + (f" stride {stride}" if stride else "")
    t_second = 0.0
    for i in tqdm(batches, disable=not progress, leave=False, desc=label):
        # the second batch's time (the first may include compilation) sizes the whole: say it
        # up front when it is minutes
        if progress and i == batch:
            t_second = time.perf_counter()
        elif progress and i == 2 * batch:
            _announce(label, len(windows), len(batches), time.perf_counter() - t_second)
        chunk = windows[i : i + batch]
        rows = torch.stack([tokens[s : s + length + 1] for s, _ in chunk]).to(device)
        logits = model(rows[:, :-1])  # (b, L, V)
        nll = F.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten(), reduction="none")
        nll = nll.view(len(chunk), length).double().cpu()
        firsts = torch.tensor([first for _, first in chunk])
        keep = offsets[None, :] >= firsts[:, None]  # (b, L)
        nll_sum += float(nll[keep].sum())
        scored += int(keep.sum())
        position_sum += (nll * keep).sum(0)
        position_count += keep.sum(0)
        if token_bytes is not None:
            num_bytes += int(token_bytes[rows[:, 1:].cpu()][keep].sum())
    model.train(was_training)
    mean = nll_sum / scored
    if not math.isfinite(mean) or mean > _MAX_LOG_PPL:
        raise UserError(
            f"the mean loss at length {length} is {mean:.4g}, so the perplexity is not a finite "
            "number: the model's weights are NaN/inf or it diverged in training; retrain it "
            "(e.g. a lower --lr)"
        )
    return {
        "length": length,
        "protocol": protocol,
        "stride": (length // 2 if stride is None else stride) if protocol == "sliding" else None,
        "ppl": math.exp(mean),
        "nll_sum": nll_sum,
        "tokens": scored,
        "bits_per_byte": nll_sum / math.log(2) / num_bytes if token_bytes is not None else None,
        "windows": len(windows),
        "position_nll": [
            float(s / c) if c else None for s, c in zip(position_sum, position_count, strict=True)
        ],
    }


#: ln of the largest float64 (exp overflows past it)
_MAX_LOG_PPL = 709.0


def _announce(label: str, windows: int, batches: int, first_seconds: float) -> None:
    estimate = first_seconds * batches
    if estimate > LONG_EVAL_SECONDS:
        print(
            f"{label}: {windows:,} windows in {batches:,} batches at {first_seconds:.1f} s each: "
            f"about {estimate / 60:.0f} min; a larger --stride (or fewer --lengths) is faster",
            file=sys.stderr,
        )


def common_prefix(num_tokens: int, lengths: list[int], max_tokens: int | None = None) -> int:
    """How many tokens of the stream to keep so that every length dividing the longest scores
    the same targets: 1 + the largest multiple of max(lengths) that fits (and ≤ max_tokens)."""
    longest = max(lengths)
    budget = num_tokens - 1 if max_tokens is None else min(num_tokens - 1, max_tokens)
    usable = (budget // longest) * longest
    if usable == 0:
        raise UserError(
            f"the evaluation data has {num_tokens} tokens, fewer than the longest length + 1 = "
            f"{longest + 1}; use shorter lengths or more data"
        )
    return usable + 1


def evaluate_lengths(
    model: ScoredLM,
    tokens: Tensor,
    lengths: list[int],
    protocol: Protocol = "nonoverlap",
    stride: int | None = None,
    max_tokens: int | None = None,
    progress: bool = False,
    token_bytes: Tensor | None = None,
    desc: str | None = None,
) -> list[dict[str, Any]]:
    """`perplexity` at each length over the same trimmed stream (see `common_prefix`).

    A length the model cannot represent (a learned table shorter than it) gives a record with
    "ppl": None and the reason in "error", instead of stopping the other lengths.
    """
    tokens = tokens[: common_prefix(tokens.numel(), lengths, max_tokens)]
    records = []
    for length in lengths:
        encoding = getattr(model, "encoding", None)
        if encoding is not None and encoding.max_len is not None and length > encoding.max_len:
            try:
                encoding.check_positions(length - 1)
            except UserError as exc:
                records.append(
                    {"length": length, "protocol": protocol, "ppl": None, "error": str(exc)}
                )
                continue
        label = f"{desc} L={length} {protocol}" if desc else None
        records.append(
            perplexity(
                model, tokens, length, protocol, stride, token_bytes, progress=progress, desc=label
            )
        )
    return records


def write_records_csv(
    path: str | Path, records: list[dict[str, Any]], exclude: tuple[str, ...] = ("position_nll",)
) -> None:
    """Write flat records (from `evaluate_lengths`, `evaluate_task`, `passkey_grid`, …) as CSV:
    one row per record, columns in first-seen order; list/dict values JSON-encoded; `exclude`
    drops long per-position fields (they go to JSON)."""
    import csv
    import io
    import json

    from extrapos.core.files import write_text

    columns: list[str] = []
    for record in records:
        columns += [k for k in record if k not in columns and k not in exclude]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow(
            {
                k: json.dumps(v) if isinstance(v, list | dict) else ("" if v is None else v)
                for k, v in record.items()
                if k in columns
            }
        )
    write_text(path, buf.getvalue())
