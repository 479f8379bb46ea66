"""The results.json schema: what the bench writes and the report (and other tools) read.

Version 1; extend it, don't break it: new keys may appear, existing keys keep their meaning.
Each stage is a list of flat records identified by `RECORD_KEYS[stage]` (one entry per seed;
summaries are derived by the report).
"""

from __future__ import annotations

from typing import Any, TypedDict

RESULTS_VERSION = 1

# the fields that identify a record of each results.json list
RECORD_KEYS: dict[str, tuple[str, ...]] = {
    "runs": ("method", "seed"),
    "task_runs": ("method", "task", "seed"),
    "passkey_runs": ("method", "seed"),
    "costs": ("method",),
}


class RunRecord(TypedDict, total=False):
    """One trained language model (method, seed), or a RoPE extension row `rope+<name>`."""

    method: str
    seed: int
    params: dict[str, Any]
    ppl: dict[str, dict[str, float | None]]  # protocol -> length -> perplexity
    position_nll: dict[str, list[float | None]]
    train_seconds: float
    tokens_per_second: float
    num_params: int
    losses: list[float]
    extension: str


class TaskRecord(TypedDict, total=False):
    method: str
    task: str
    seed: int
    accuracy: dict[str, float | None]  # size -> exact-match accuracy
    token_accuracy: dict[str, float | None]


class PasskeyRecord(TypedDict, total=False):
    method: str
    seed: int
    results: list[dict[str, Any]]  # flat (length, depth, accuracy, ...) records


class CostRecord(TypedDict, total=False):
    method: str
    length: int
    forward_seconds: float
    peak_mib: float


class DialogueRecord(TypedDict, total=False):
    """One (method, seed) of the dialogue suite (`bench --suite dialogue`, whose results.json
    has `"suite": "dialogue"` and these records in `runs`; see `extrapos.bench.dialogue`)."""

    kind: str  # "dialogue"
    method: str
    seed: int
    params: dict[str, Any]
    history: dict[str, dict[str, float | None]]  # {"k": {"0": nll, ...}, "by_length": {...}}
    history_by_length_k0: dict[str, float | None]  # the same turns' NLL with no history
    recall: dict[str, float]  # distance in tokens -> accuracy
    chance: float
    n_dialogues: int
    generation: dict[str, Any]  # positions, rep_n, distinct_n, true_nll, ... per window
    train_seconds: float
    eval_seconds: float
    generation_seconds: float


class BenchResults(TypedDict, total=False):
    """The whole results.json."""

    version: int
    corpus: str
    corpus_hash: str
    tokenizer: str
    train_len: int
    eval_lens: list[int]
    protocols: list[str]
    settings: dict[str, Any]
    task_settings: dict[str, Any]
    passkey_settings: dict[str, Any]
    environment: dict[str, Any]
    runs: list[RunRecord]
    task_runs: list[TaskRecord]
    passkey_runs: list[PasskeyRecord]
    costs: list[CostRecord]


def record_key(stage: str, record: dict[str, Any]) -> tuple[Any, ...]:
    """The identity of a record within its stage (a missing seed counts as seed 0)."""
    return tuple(record.get(f, 0 if f == "seed" else None) for f in RECORD_KEYS[stage])
