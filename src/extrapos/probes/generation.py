"""Long generation: does sampled text stay coherent past the training length?

From P held-out prompts of `prompt_len` tokens (windows of the test stream; on a dialogue corpus
each starts at a turn), the model samples up to `total_len` tokens (e.g. 16·L), and, per window
of `window` generated positions [a, a + window):

- rep-n: the fraction of the window's n-grams (those ending inside it) that already occurred
  earlier in the same sequence, prompt included — 1 when the text loops (Welleck et al. 2020,
  "Neural Text Generation with Unlikelihood Training", count repeats of earlier n-grams);
- distinct-n: distinct n-grams / n-grams inside the window (Li et al. 2016, "A Diversity-Promoting
  Objective Function for Neural Conversation Models") — low when the window repeats itself;
- the model's NLL (nats per token) of the *true* continuation at the same positions (one forward
  over prompt + truth): where it rises past L the encoding no longer models the text there.

The same rep-n and distinct-n of the true continuation are given as the reference level.
n-grams are over tokens (bytes for the byte tokenizer). Sampling uses a KV cache (one new token
per step) and a seeded generator, so a rerun gives the same text; `sample_continuations` draws
exactly what `GPT.generate` draws and can stream each new token to a callback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from extrapos.core.errors import UserError

__all__ = [
    "generation_stats",
    "held_out_prompts",
    "ngram_window_stats",
    "sample_continuations",
    "windowed_mean",
]


@torch.inference_mode()
def sample_continuations(
    model: Any,
    idx: Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    on_token: Callable[[Tensor], None] | None = None,
) -> Tensor:
    """Sample `max_new_tokens` after the prompts idx (b, s) -> (b, s + max_new_tokens), the same
    draws as `GPT.generate` with the same generator; `on_token(next (b,))` after every step."""
    if max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    model.encoding.check_positions(idx.shape[1] + max_new_tokens - 1)
    # the model's own loop: exact cached decoding, non-finite logits refused
    return model.generate(
        idx, max_new_tokens, temperature, top_k, top_p, generator, on_token=on_token
    )


def _ngram_ids(row: np.ndarray, n: int) -> list[tuple[int, ...]]:
    return [tuple(row[i : i + n]) for i in range(len(row) - n + 1)]


def ngram_window_stats(
    seqs: Tensor, start: int, window: int, n: int = 4
) -> tuple[list[float | None], list[float | None]]:
    """(rep-n, distinct-n) per window [start + w·window, start + (w+1)·window) of the rows of
    seqs (b, T), averaged over rows (see the module docstring). An n-gram belongs to the window
    its last token falls in; a window with no n-gram is None."""
    if n < 1 or window < 1:
        raise UserError(f"n and window must be >= 1, got {n} and {window}")
    rows = seqs.cpu().numpy()
    total = rows.shape[1]
    n_windows = max(0, -(-(total - start) // window))
    rep: list[list[float]] = [[] for _ in range(n_windows)]
    dist: list[list[float]] = [[] for _ in range(n_windows)]
    for row in rows:
        grams = _ngram_ids(row, n)  # gram i ends at token i + n - 1
        seen: set[tuple[int, ...]] = set()
        for i, g in enumerate(grams):
            if i + n - 1 >= start:
                break
            seen.add(g)
        for w in range(n_windows):
            lo, hi = start + w * window, min(total, start + (w + 1) * window)
            inside = [grams[e - n + 1] for e in range(max(lo, n - 1), hi)]
            if not inside:
                continue
            repeats = 0
            for g in inside:  # earlier in the sequence: before the window or inside it
                repeats += g in seen
                seen.add(g)
            rep[w].append(repeats / len(inside))
            dist[w].append(len(set(inside)) / len(inside))
    mean = [float(np.mean(v)) if v else None for v in rep]
    return mean, [float(np.mean(v)) if v else None for v in dist]


def windowed_mean(values: Tensor, start: int, window: int) -> list[float | None]:
    """Mean of values (b, T) over rows and each window of positions [start + w·window, ...)."""
    total = values.shape[1]
    out: list[float | None] = []
    for lo in range(start, total, window):
        part = values[:, lo : lo + window]
        out.append(float(part.mean()) if part.numel() else None)
    return out


def held_out_prompts(
    tokens: Tensor, count: int, length: int, starts: np.ndarray | None = None
) -> Tensor:
    """`count` windows of `length` tokens of the 1-D stream (b, length), evenly spread; with
    `starts` (allowed start indices, e.g. turn starts) each begins at the allowed start
    nearest its even spot."""
    n = tokens.numel()
    if n < length:
        raise UserError(
            f"the held-out text has {n} tokens, fewer than one sequence of {length}; "
            "generate less (--max-new-tokens) or use more data"
        )
    spots = np.linspace(0, n - length, count).astype(np.int64)
    if starts is not None:
        ok = starts[starts <= n - length]
        if len(ok):
            spots = ok[np.searchsorted(ok, spots).clip(0, len(ok) - 1)]
    return torch.stack([tokens[s : s + length] for s in spots.tolist()])


@torch.inference_mode()
def generation_stats(
    model: Any,
    tokenizer: Any,
    tokens: Tensor,
    train_len: int,
    total_len: int | None = None,
    prompts: int = 4,
    prompt_len: int | None = None,
    window: int | None = None,
    n: int = 4,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    starts: np.ndarray | None = None,
    on_start: Callable[[list[int]], None] | None = None,
    on_token: Callable[[Tensor], None] | None = None,
) -> dict[str, Any]:
    """Sample and measure (see the module docstring); defaults: total 16·L, prompt L, window L.
    `on_start(first prompt's ids)` before sampling and `on_token(next (b,))` after each step
    let a caller stream the text.

    Returns {"positions": window starts, "rep_n", "distinct_n", "reference_rep_n",
    "reference_distinct_n", "true_nll": per window, "n", "window", "prompt_len",
    "total_len", "prompts", "temperature", "top_k", "top_p", "seed", "sample": the first
    continuation's text}."""
    from extrapos.probes.dialogue import token_nll

    total_len = total_len or 16 * train_len
    prompt_len = prompt_len or train_len
    window = window or train_len
    if not 1 <= prompt_len < total_len:
        raise UserError(f"prompt_len must be in [1, total_len={total_len}), got {prompt_len}")
    truth = held_out_prompts(tokens, prompts, total_len, starts)
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    if on_start is not None:
        on_start(truth[0, :prompt_len].tolist())
    try:
        sampled = sample_continuations(
            model,
            truth[:, :prompt_len].to(device),
            total_len - prompt_len,
            temperature,
            top_k,
            top_p,
            generator,
            on_token,
        ).cpu()
        nll = torch.stack(token_nll(model, list(truth)))  # (b, total - 1); target t at t - 1
    finally:
        model.train(was_training)
    by_target = torch.cat((torch.full((nll.shape[0], 1), float("nan")), nll), dim=1)
    rep, distinct = ngram_window_stats(sampled, prompt_len, window, n)
    ref_rep, ref_distinct = ngram_window_stats(truth, prompt_len, window, n)
    tok = tokenizer
    return {
        "positions": list(range(prompt_len, total_len, window)),
        "rep_n": rep,
        "distinct_n": distinct,
        "reference_rep_n": ref_rep,
        "reference_distinct_n": ref_distinct,
        "true_nll": windowed_mean(by_target, prompt_len, window),
        "n": n,
        "window": window,
        "prompt_len": prompt_len,
        "total_len": total_len,
        "prompts": prompts,
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "seed": seed,
        "sample": tok.decode(sampled[0, prompt_len:]) if tok is not None else None,
    }
