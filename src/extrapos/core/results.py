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
    records: list[dict[str, Any]]  # flat (length, accuracy, token_accuracy, ...) rows
    final_loss: float
    train_seconds: float


class PasskeyRecord(TypedDict, total=False):
    method: str
    seed: int
    records: list[dict[str, Any]]  # flat (length, depth, accuracy, ...) rows
    finetune_loss: float
    finetune_seconds: float


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


# ----------------------------------------------------------------------------- validation
#
# `check_results` reads a results.json the way the report will, so a hand-edited file fails with
# the field named (`runs[1].ppl_by_protocol.nonoverlap.256: 'abc' is not a number`) instead of
# a traceback deep in the report. Unknown keys stay allowed (the schema grows); the keys the
# report reads must have their types.

_NUMBER_FIELDS = {
    "runs": (
        "train_seconds",
        "tokens_per_second",
        "num_params",
        "final_train_loss",
        "eval_seconds",
    ),
    "task_runs": ("train_seconds", "final_loss"),
    "passkey_runs": ("finetune_loss", "finetune_seconds"),
    "costs": ("length", "forward_seconds", "peak_mib"),
}
#: per stage, fields mapping a length (or size) to a number or null
_BY_LENGTH = {
    "runs": ("ppl", "bits_per_byte", "tokens_scored"),
    "task_runs": ("accuracy", "token_accuracy"),
}


class _Bad(Exception):
    pass


def _is_number(value: Any) -> bool:
    import math

    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _need(ok: bool, where: str, value: Any, wanted: str) -> None:
    if not ok:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise _Bad(f"{where} is {shown}, expected {wanted}")


def _length_key(key: Any, where: str) -> None:
    _need(isinstance(key, str) and key.isdigit() and int(key) >= 1, where, key, "a length >= 1")


def _numbers_by_length(table: Any, where: str) -> None:
    _need(isinstance(table, dict), where, table, "an object {length: number or null}")
    for key, value in table.items():
        _length_key(key, f"{where} key")
        _need(value is None or _is_number(value), f"{where}.{key}", value, "a number or null")


def _check_run(record: dict[str, Any], where: str) -> None:
    if "ppl_by_protocol" in record:
        by_protocol = record["ppl_by_protocol"]
        _need(isinstance(by_protocol, dict), f"{where}.ppl_by_protocol", by_protocol, "an object")
        for protocol, table in by_protocol.items():
            _numbers_by_length(table, f"{where}.ppl_by_protocol.{protocol}")
    if "position_nll" in record:
        curves = record["position_nll"]
        _need(isinstance(curves, dict), f"{where}.position_nll", curves, "an object")
        for key, curve in curves.items():
            _length_key(key, f"{where}.position_nll key")
            _need(isinstance(curve, list), f"{where}.position_nll.{key}", curve, "a list")
            for i, v in enumerate(curve):
                _need(v is None or _is_number(v), f"{where}.position_nll.{key}[{i}]", v,
                      "a number or null")  # fmt: skip
    if "loss_curve" in record:
        curve = record["loss_curve"]
        _need(isinstance(curve, list), f"{where}.loss_curve", curve, "a list of [step, loss]")
        for i, point in enumerate(curve):
            ok = isinstance(point, list) and len(point) == 2 and all(map(_is_number, point))
            _need(ok, f"{where}.loss_curve[{i}]", point, "[step, loss]")
    for name in ("params", "errors"):
        if name in record:
            _need(isinstance(record[name], dict), f"{where}.{name}", record[name], "an object")


#: numeric fields of the flat rows in task_runs[i].records and passkey_runs[i].records
_ROW_NUMBERS = ("length", "depth", "actual_depth", "accuracy", "token_accuracy",
                "digit_accuracy", "chance_accuracy", "n_trials")  # fmt: skip


def _check_rows(record: dict[str, Any], where: str) -> None:
    rows = record.get("records", [])
    _need(isinstance(rows, list), f"{where}.records", rows, "a list")
    for i, row in enumerate(rows):
        here = f"{where}.records[{i}]"
        _need(isinstance(row, dict), here, row, "an object")
        for name in _ROW_NUMBERS:
            if name in row:
                value = row[name]
                _need(value is None or _is_number(value), f"{here}.{name}", value, "a number")


def _check_record(stage: str, record: Any, where: str) -> None:
    _need(isinstance(record, dict), where, record, "an object")
    for key in RECORD_KEYS[stage]:
        if key == "seed":
            value = record.get("seed", 0)
            _need(isinstance(value, int) and not isinstance(value, bool), f"{where}.seed", value,
                  "an integer")  # fmt: skip
        else:
            _need(isinstance(record.get(key), str), f"{where}.{key}", record.get(key), "a name")
    if record.get("kind") == "dialogue":
        return  # the dialogue report reads these (see DialogueRecord)
    for name in _NUMBER_FIELDS.get(stage, ()):
        if name in record:
            value = record[name]
            _need(value is None or _is_number(value), f"{where}.{name}", value, "a number")
    for name in _BY_LENGTH.get(stage, ()):
        if name in record:
            _numbers_by_length(record[name], f"{where}.{name}")
    if stage == "runs":
        _check_run(record, where)
    elif stage in ("task_runs", "passkey_runs"):
        _check_rows(record, where)


def check_results(results: Any, source: str = "results.json") -> None:
    """Refuse a results.json the report cannot read, naming the first bad field with its
    record index and key; `UserError` (one line)."""
    from extrapos.core.errors import UserError

    try:
        _need(isinstance(results, dict), "the file", type(results).__name__, "a JSON object")
        if results.get("suite") in ("translation", "dialogue"):
            stages: tuple[str, ...] = ("runs",) if "runs" in results else ()
        else:
            train_len = results.get("train_len")
            _need(isinstance(train_len, int) and not isinstance(train_len, bool)
                  and train_len >= 1, "train_len", train_len, "a length >= 1")  # fmt: skip
            lens = results.get("eval_lens")
            ok = isinstance(lens, list) and bool(lens)
            _need(ok, "eval_lens", lens, "a non-empty list of lengths")
            for i, length in enumerate(lens):
                _need(isinstance(length, int) and not isinstance(length, bool) and length >= 1,
                      f"eval_lens[{i}]", length, "a length >= 1")  # fmt: skip
            protocols = results.get("protocols", [])
            _need(isinstance(protocols, list) and all(isinstance(p, str) for p in protocols),
                  "protocols", protocols, "a list of names")  # fmt: skip
            stages = tuple(RECORD_KEYS)
        for name in ("settings", "task_settings", "passkey_settings", "environment"):
            if name in results:
                _need(isinstance(results[name], dict), name, results[name], "an object")
        for stage in stages:
            records = results.get(stage, [])
            _need(isinstance(records, list), stage, records, "a list of records")
            if results.get("suite") in ("translation", "dialogue"):
                for i, record in enumerate(records):
                    _need(isinstance(record, dict), f"{stage}[{i}]", record, "an object")
                continue
            for i, record in enumerate(records):
                _check_record(stage, record, f"{stage}[{i}]")
    except _Bad as exc:
        raise UserError(
            f"{source}: {exc}; restore the file or rerun the bench to regenerate it"
        ) from None
