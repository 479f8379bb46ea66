"""Passkey retrieval: can the model find a number hidden at a chosen depth of a long context?

Mohtashami & Jaggi 2023, "Landmark Attention: Random-Access Infinite Context Length for
Transformers" (appendix): a prompt of repeated filler sentences with one key sentence inside,

    <intro> <filler …> The pass key is 71432. Remember it. 71432 is the pass key. <filler …>
    What is the pass key? The pass key is| 71432

The model reads the prompt and must continue with " 71432". Scoring is teacher-forced: one
forward pass over prompt + answer[:-1]; a trial succeeds when the argmax at every answer
position is the answer token — exactly when greedy decoding would produce the answer, at the
cost of one forward pass. `digit_accuracy` is the fraction of answer tokens right.

Conventions:
- `length`: the model reads at most `length` tokens, the answer included (prompt + answer − 1
  ≤ length), so a model with a position table of `length` can be tested at `length`. Filler
  comes in whole sentences, so the sequence is at most one filler sentence shorter.
- `depth` ∈ [0, 1]: where the key sentence sits in the filler (the haystack), as a fraction of
  the filler tokens before it: 0 = right after the intro, 1 = right before the question. It is
  placed at the sentence boundary nearest to depth · (filler tokens).
- The pieces are tokenized separately and concatenated (token ids, any tokenizer with
  `encode(text) -> 1-D ids` and `decode`), so a BPE boundary never merges key and filler.

Works with our GPT and any object with forward(idx (b, T)) -> logits (b, T, V) (or an output
with `.logits`) and a `.tokenizer`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from extrapos.core.errors import UserError

INTRO = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize "
    "it. I will quiz you about the important information there."
)
FILLER: tuple[str, ...] = (
    "The grass is green.",
    "The sky is blue.",
    "The sun is yellow.",
    "Here we go.",
    "There and back again.",
)
KEY_SENTENCE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"


@dataclass
class PasskeyExample:
    """One prompt. ids (n,) int64 = prompt ++ answer; the model reads ids[:-1]."""

    ids: Tensor
    prompt_len: int
    answer_len: int
    key: str
    depth: float  # requested
    key_start: int  # token index where the key sentence starts
    key_len: int  # tokens of the key sentence
    filler_start: int  # token index of the first filler token (= len(intro))
    filler_len: int  # filler tokens in total (before + after the key)

    @property
    def seq_len(self) -> int:
        """Tokens the model reads: prompt + answer − 1."""
        return self.prompt_len + self.answer_len - 1

    @property
    def actual_depth(self) -> float:
        """Filler tokens before the key / all filler tokens (0 when there is no filler)."""
        before = self.key_start - self.filler_start
        return before / self.filler_len if self.filler_len else 0.0


def _encode(tokenizer: Any, text: str) -> Tensor:
    return torch.as_tensor(tokenizer.encode(text), dtype=torch.long).reshape(-1)


def sentences_from_text(text: str, max_sentences: int = 10_000) -> list[str]:
    """Split text (e.g. from a corpus) into sentence-like pieces to use as filler."""
    pieces = [p.strip() for p in re.split(r"(?<=[.!?])\s+|\n\s*\n", text)]
    return [p for p in pieces if p][:max_sentences]


def make_passkey_example(
    tokenizer: Any,
    length: int,
    depth: float,
    key: str,
    filler: Sequence[str] = FILLER,
    intro: str = INTRO,
) -> PasskeyExample:
    """A passkey prompt of at most `length` tokens (answer included) with the key sentence at
    `depth` of the filler; see the module docstring. `intro=""` drops the intro (~30 BPE
    tokens, 144 bytes), useful for short byte-level tests."""
    if not 0.0 <= depth <= 1.0:
        raise UserError(f"passkey depth must be in [0, 1], got {depth}")
    if not filler:
        raise UserError("passkey filler is empty; give at least one filler sentence")
    intro_ids = _encode(tokenizer, intro)
    key_ids = _encode(tokenizer, " " + KEY_SENTENCE.format(key=key))
    question = _encode(tokenizer, " " + QUESTION)
    answer = _encode(tokenizer, " " + key)
    fixed = len(intro_ids) + len(key_ids) + len(question) + len(answer) - 1
    budget = length - fixed
    if budget < 0:
        raise UserError(
            f"passkey length {length} is shorter than the prompt without filler ({fixed} "
            f"tokens); use a length >= {fixed}"
        )
    sentences = [_encode(tokenizer, " " + s) for s in filler]
    if min(len(s) for s in sentences) == 0:
        raise UserError("a passkey filler sentence encodes to no tokens; remove empty sentences")
    chosen: list[Tensor] = []
    total = 0
    while True:
        nxt = sentences[len(chosen) % len(sentences)]
        if total + len(nxt) > budget:
            break
        chosen.append(nxt)
        total += len(nxt)
    bounds = np.cumsum([0] + [len(s) for s in chosen])  # filler tokens before each boundary
    k = int(np.abs(bounds - depth * total).argmin())
    parts = [intro_ids, *chosen[:k], key_ids, *chosen[k:], question, answer]
    ids = torch.cat(parts)
    prompt_len = len(ids) - len(answer)
    return PasskeyExample(
        ids=ids,
        prompt_len=prompt_len,
        answer_len=len(answer),
        key=key,
        depth=float(depth),
        key_start=len(intro_ids) + int(bounds[k]),
        key_len=len(key_ids),
        filler_start=len(intro_ids),
        filler_len=total,
    )


def random_key(rng: np.random.Generator, digits: int = 5) -> str:
    """A random `digits`-digit decimal key without a leading zero."""
    return str(int(rng.integers(10 ** (digits - 1), 10**digits)))


def _collate(examples: Sequence[PasskeyExample]) -> tuple[Tensor, Tensor, Tensor]:
    """inputs (b, T), targets (b, T), answer mask (b, T); shorter rows right-padded with 0
    (causal attention: padding after a row's end never affects its scored positions)."""
    width = max(e.seq_len for e in examples)
    inputs = torch.zeros(len(examples), width, dtype=torch.long)
    targets = torch.zeros_like(inputs)
    mask = torch.zeros(len(examples), width, dtype=torch.bool)
    for r, e in enumerate(examples):
        inputs[r, : e.seq_len] = e.ids[:-1]
        targets[r, : e.seq_len] = e.ids[1:]
        mask[r, e.prompt_len - 1 : e.seq_len] = True
    return inputs, targets, mask


def _device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def _logits(model: Any, inputs: Tensor) -> Tensor:
    out = model(inputs)
    return getattr(out, "logits", out)


@torch.inference_mode()
def score_examples(
    model: Any, examples: Sequence[PasskeyExample], batch_size: int = 8
) -> list[tuple[bool, float]]:
    """(success, fraction of answer tokens right) per example, teacher-forced argmax."""
    device = _device(model)
    out = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        inputs, targets, mask = _collate(chunk)
        pred = _logits(model, inputs.to(device)).argmax(-1).cpu()
        right = (pred == targets) & mask
        for r, e in enumerate(chunk):
            n_right = int(right[r].sum())
            out.append((n_right == e.answer_len, n_right / e.answer_len))
    return out


def passkey_grid(
    model: Any,
    tokenizer: Any = None,
    lengths: Sequence[int] = (256, 512, 1024),
    depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    n_trials: int = 10,
    seed: int = 0,
    *,
    key_digits: int = 5,
    filler: Sequence[str] = FILLER,
    intro: str = INTRO,
    batch_size: int = 8,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Passkey accuracy of `model` at every (length, depth), `n_trials` random keys each.

    `tokenizer` defaults to `model.tokenizer`. Returns flat records {"length", "depth",
    "accuracy", "digit_accuracy", "n_trials", "seq_len" (tokens read, the longest trial),
    "actual_depth" (mean)}; a length the model cannot represent, or too short for the prompt,
    gives accuracy None and the reason in "error". Keys depend only on (seed, length, depth index, trial).
    """
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise UserError("passkey needs a tokenizer: pass one or use a model with .tokenizer")
    if n_trials < 1:
        raise UserError(f"n_trials must be >= 1, got {n_trials}")
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    records = []
    cells = [(n, j, d) for n in lengths for j, d in enumerate(depths)]
    for length, j, depth in tqdm(cells, disable=not progress, leave=False, desc="passkey"):
        rng = np.random.default_rng([seed, length, j])
        record: dict[str, Any] = {"length": int(length), "depth": float(depth)}
        try:
            examples = [
                make_passkey_example(
                    tokenizer, length, depth, random_key(rng, key_digits), filler, intro
                )
                for _ in range(n_trials)
            ]
            scores = score_examples(model, examples, batch_size)
        except UserError as exc:
            records.append({**record, "accuracy": None, "digit_accuracy": None, "error": str(exc)})
            continue
        records.append(
            {
                **record,
                "accuracy": sum(ok for ok, _ in scores) / n_trials,
                "digit_accuracy": sum(frac for _, frac in scores) / n_trials,
                "n_trials": n_trials,
                "seq_len": max(e.seq_len for e in examples),
                "actual_depth": sum(e.actual_depth for e in examples) / n_trials,
            }
        )
    if hasattr(model, "train"):
        model.train(was_training)
    return records


def finetune_passkey(
    model: nn.Module,
    tokenizer: Any = None,
    length: int = 256,
    steps: int = 200,
    *,
    batch_size: int = 8,
    lr: float = 1e-3,
    warmup_steps: int | None = None,
    weight_decay: float = 0.0,
    grad_clip: float = 1.0,
    seed: int = 0,
    key_digits: int = 5,
    filler: Sequence[str] = FILLER,
    intro: str = INTRO,
    progress: bool = False,
) -> dict[str, Any]:
    """Fine-tune `model` in place on passkey prompts of `length` tokens, depth ~ U[0, 1] and
    random keys, with the loss only on the answer tokens (the key's digits).

    A model trained only on text rarely retrieves a 5-digit key at small scale; a few hundred
    steps of this teach the format so that passkey accuracy at longer lengths measures the
    encoding's reach (as in Mohtashami & Jaggi 2023, who fine-tune before testing). Returns
    {"losses": per step, "train_seconds"}; the model is left in eval mode.
    """
    from extrapos.training.config import TrainConfig
    from extrapos.training.loop import fit_steps

    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise UserError("finetune_passkey needs a tokenizer: pass one or set model.tokenizer")
    config = TrainConfig(
        train_len=length,
        batch_size=batch_size,
        steps=steps,
        lr=lr,
        warmup_steps=max(1, steps // 10) if warmup_steps is None else warmup_steps,
        weight_decay=weight_decay,
        grad_clip=grad_clip,
        seed=seed,
    )
    device = _device(model)
    rng = np.random.default_rng(seed)

    def loss_at(step: int) -> torch.Tensor:
        examples = [
            make_passkey_example(
                tokenizer, length, float(rng.random()), random_key(rng, key_digits), filler, intro
            )
            for _ in range(batch_size)
        ]
        inputs, targets, mask = (t.to(device) for t in _collate(examples))
        return F.cross_entropy(_logits(model, inputs)[mask], targets[mask])

    losses, seconds = fit_steps(model, config, loss_at, "passkey fine-tune", progress)
    return {"losses": losses, "train_seconds": seconds}
