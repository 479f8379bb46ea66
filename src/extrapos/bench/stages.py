"""What the bench measures besides perplexity: synthetic tasks, passkey retrieval, and cost.

Each probe returns one JSON-ready record for one (method, seed) so the bench can keep it across
a killed run; `extrapos.bench.run` decides what runs and `extrapos.report.lm` draws the results.

- `task_probe`: a fresh small GPT with the method's encoding is trained on a synthetic task at
  sizes 1 … `task_train_len` and scored (exact match and token accuracy) at 1×, 2×, 4×, 8× that
  size (Deletang et al. 2023; Ruoss et al. 2023). Same problems for every method.
- `passkey_probe`: a copy of the trained language model is fine-tuned on passkey prompts at the
  train length, then asked for the key at every evaluation length and depth (Mohtashami & Jaggi
  2023). The trained `rope` model's copy is also scored with each inference-time extension.
- `cost_probe`: time and peak-memory rise of one inference forward at the longest evaluation
  length, in a fresh process (see `extrapos.probes.cost` for why a fresh process).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from extrapos.core.errors import UserError
from extrapos.data.tasks import get_task
from extrapos.models.gpt import GPTConfig
from extrapos.probes.extensions import rope_extended
from extrapos.probes.passkey import finetune_passkey, passkey_grid
from extrapos.probes.tasks import evaluate_task, train_on_task

# the task model: small enough that every method × task × seed costs seconds on a CPU
TASK_MODEL = {"n_layer": 2, "n_head": 4, "d_model": 64}
TASK_BATCH_SIZE = 32
TASK_LR = 3e-3
TASK_RECORD_FIELDS = (
    "length",
    "accuracy",
    "token_accuracy",
    "chance_accuracy",
    "chance_token_accuracy",
    "error",
)
PASSKEY_BATCH_SIZE = 8
PASSKEY_LR = 1e-3


def task_probe(
    method: str,
    task_name: str,
    seed: int,
    *,
    train_len: int,
    eval_lens: Sequence[int],
    steps: int,
    samples: int,
    progress: bool = False,
) -> dict[str, Any]:
    """Train `method` on `task_name` at sizes 1 … train_len, score it at `eval_lens`."""
    task = get_task(task_name)
    params: dict[str, Any] = {}
    if method == "learned":  # a table long enough for the longest problem; rows past train unused
        params["max_len"] = max(task.seq_len(n) for n in [train_len, *eval_lens])
    config = GPTConfig(
        vocab_size=task.vocab_size, encoding=method, encoding_params=params, **TASK_MODEL
    )
    result = train_on_task(
        config,
        task,
        train_len,
        steps,
        batch_size=TASK_BATCH_SIZE,
        lr=TASK_LR,
        seed=seed,
        progress=progress,
        description=f"{method} on {task_name} (seed {seed})",
    )
    records = evaluate_task(result.model, task, eval_lens, samples, seed=seed + 1)
    tail = result.losses[-20:]
    return {
        "method": method,
        "task": task_name,
        "seed": seed,
        "records": [{k: r[k] for k in TASK_RECORD_FIELDS if k in r} for r in records],
        "final_loss": sum(tail) / len(tail),
        "train_seconds": round(result.train_seconds, 2),
    }


def passkey_probe(
    model: Any,
    tokenizer: Any,
    method: str,
    seed: int,
    *,
    train_len: int,
    lengths: Sequence[int],
    depths: Sequence[float],
    trials: int,
    steps: int,
    extensions: Sequence[str] = (),
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Fine-tune a copy of `model` on passkeys at `train_len`, score it at every (length,
    depth); for `rope`, also with each extension in `extensions` (factor = length / train_len).

    Returns one record per row: the method's own and one `rope+<ext>` per extension. The
    prompts have no intro sentence, so a byte-level model at a short train length still sees
    filler around the key.
    """
    names = [method, *(f"rope+{ext}" for ext in extensions if method == "rope")]
    tuned = copy.deepcopy(model)
    try:
        info = finetune_passkey(
            tuned,
            tokenizer,
            length=train_len,
            steps=steps,
            batch_size=PASSKEY_BATCH_SIZE,
            lr=PASSKEY_LR,
            seed=seed,
            intro="",
            progress=progress,
        )
    except UserError as exc:  # e.g. a train length too short to hold a passkey prompt
        return [
            {"method": name, "seed": seed, "records": [], "error": f"fine-tune: {exc}"}
            for name in names
        ]
    tail = info["losses"][-10:]
    common = {
        "seed": seed,
        "finetune_loss": sum(tail) / len(tail),
        "finetune_seconds": round(info["train_seconds"], 2),
    }

    def grid(at_lengths: Sequence[int]) -> list[dict[str, Any]]:
        return passkey_grid(
            tuned,
            tokenizer,
            lengths=at_lengths,
            depths=depths,
            n_trials=trials,
            seed=seed + 1,
            intro="",
        )

    rows = [{"method": method, **common, "records": grid(lengths)}]
    if method == "rope":
        for ext in extensions:
            records: list[dict[str, Any]] = []
            for length in lengths:
                with rope_extended(tuned, ext, train_len, length):
                    records += grid([length])
            rows.append({"method": f"rope+{ext}", "extends": "rope", **common, "records": records})
    return rows


def cost_probe(
    method: str, length: int, *, n_layer: int, n_head: int, d_model: int, repeats: int = 1
) -> dict[str, Any]:
    """Seconds and peak resident-memory rise (MiB; None where Linux's VmHWM is not available)
    of one inference forward at `length`, in a fresh interpreter."""
    from extrapos.probes.cost import measure_in_subprocess

    try:
        point = measure_in_subprocess(method, length, repeats, n_layer, n_head, d_model)
    except UserError as exc:
        return {"method": method, "length": length, "error": str(exc)}
    return {
        "method": method,
        "length": length,
        "forward_seconds": point["seconds"],
        "peak_mib": point["peak_mib"],
        "threads": torch.get_num_threads(),
    }


__all__ = ["TASK_MODEL", "cost_probe", "passkey_probe", "task_probe"]
