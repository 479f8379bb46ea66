"""The main job: train every method short, evaluate it long, write results and a report.

Every method gets the same model shape, data, seeds and token budget. Stages:

1. language model (`extrapos.bench.language_model`): each (method, seed) is trained once and
   evaluated at every length under each protocol; inference-time RoPE extensions (PI, NTK,
   dynamic NTK, YaRN, Llama 3, ReRoPE, Self-Extend, log-n) are applied to each trained `rope`
   model as extra rows `rope+<name>`, each length with its own factor (eval / train length);
2. synthetic tasks: a small fresh model per (method, task, seed), trained at short sizes and
   scored at longer ones (`extrapos.bench.stages.task_probe`);
3. passkey: a copy of each trained language model fine-tuned on passkeys at the train length,
   scored at every evaluation length and depth (with the RoPE extensions for `rope`);
4. cost: time and peak memory of one forward at the longest length, in a fresh process.

After every record the results file is rewritten atomically, so a killed bench loses at most
the record in progress, and a rerun with the same `--out` keeps every finished record whose
stage settings are unchanged (changing a task or passkey setting does not retrain the language
models: the passkey stage reloads them from `runs/`).

`learned` cannot represent positions past its table; the bench sizes its table to the longest
evaluation length, so rows past `train_len` exist but are never trained: what "extrapolating" a
learned table means. The report says so.

Presets (flags override their fields):

| preset | methods | seeds | language model | tasks; passkey | for |
|---|---|---|---|---|---|
| quick | the six classics | 1 | 200 steps × 2,048 tokens | selective_copy; 60 steps, 3 depths × 4 keys | a first look, ≤ 5 min on 2 CPU cores |
| standard | every registered encoding | 3 | 300 steps × 2,048 tokens | 3 tasks; 100 steps, 5 depths × 4 keys | the leaderboard |
| literature | the six classics | 1 | 5,000 steps × 2,048 tokens, eval to 32 × L | none | the literature's shapes, ~1.5 h on 2 CPU cores |
| paper | every registered encoding | 3 | 12 layers, d 768, train 512, 20k steps × 16k tokens | 3 tasks × 2k steps; 500 steps, 20 keys | a GPU |
"""

from __future__ import annotations

import datetime as dt
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from extrapos.bench.config import (  # noqa: F401  (re-exported)
    CLASSIC_METHODS,
    PRESETS,
    RESULTS_VERSION,
    BenchConfig,
)
from extrapos.bench.language_model import (  # noqa: F401  (loss_curve re-exported)
    loss_curve,
    run_extension,
    run_method,
)
from extrapos.bench.loggers import Loggers, Plan
from extrapos.core.errors import UserError
from extrapos.core.files import check_dir_target, read_json, run_lock, write_json
from extrapos.core.provenance import provenance
from extrapos.core.results import record_key
from extrapos.data import build_tokenizer, load_corpus
from extrapos.probes.perplexity import common_prefix

if TYPE_CHECKING:
    from extrapos.bench.workers import Workers


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.machine(),
        "threads": torch.get_num_threads(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv,
        **provenance(),
    }


def bench_tokenizer(config: BenchConfig, corpus: Any) -> Any:
    """byte, or a BPE of `config.vocab_size` trained on the corpus's train split (cached per
    corpus hash; each run directory saves the tokenizer it was trained with)."""
    if config.tokenizer == "bpe":
        return build_tokenizer("bpe", vocab_size=config.vocab_size, corpus=corpus)
    return build_tokenizer(config.tokenizer)


def run_bench(
    config: BenchConfig,
    out_dir: str | Path,
    progress: bool = True,
    save_runs: bool = True,
    loggers: Loggers | None = None,
    jobs: int = 1,
    threads_per_job: int | None = None,
) -> dict[str, Any]:
    """Run the comparison into out_dir/results.json (and out_dir/runs/), and return it.

    Stages, each kept from an earlier results.json in out_dir where its settings match:
    language-model runs (and RoPE extension rows), synthetic tasks, passkey, cost. The report
    is the layer above: `extrapos.report.write_report(results, out_dir)` (what `extrapos
    bench` does next). With `progress`, a line per unit of work ("run i/N · … · elapsed · ETA") and a summary table at
    the end; `loggers`: TensorBoard / W&B (`extrapos.bench.loggers`). `jobs` > 1: the units
    run in that many worker processes of `threads_per_job` threads (`extrapos.bench.workers`).
    """
    if jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {jobs}")
    if jobs > 1 and not save_runs:
        raise UserError("--jobs > 1 needs the runs saved: workers load trained models from runs/")
    out_dir = check_dir_target(out_dir, "bench folder (--out)")
    with run_lock(out_dir, "bench folder (--out)"):  # a second bench on out_dir is refused
        workers = None
        if jobs > 1:
            from extrapos.bench.workers import Workers, worker_threads

            workers = Workers(jobs, worker_threads(jobs, threads_per_job))
        try:
            return _run_bench(config, out_dir, progress, save_runs, loggers, workers)
        finally:
            if workers is not None:
                workers.close()


@dataclass
class _Unit:
    """One unit of bench work: `here()` runs it in this process (with progress shown);
    `there`, a picklable call, runs it in a worker (None: always here), whose result goes
    through `shown` here; `after`: the key of the run whose trained model it needs."""

    stage: str
    key: tuple[Any, ...]
    here: Callable[[], Any]
    there: Callable[[], Any] | None = None
    after: tuple[Any, ...] | None = None
    shown: Callable[[Any], Any] = lambda result: result
    rows: set[str] | None = None


def _run_bench(
    config: BenchConfig,
    out_dir: Path,
    progress: bool,
    save_runs: bool,
    loggers: Loggers | None,
    workers: Workers | None,
) -> dict[str, Any]:
    corpus = load_corpus(config.data)
    tokenizer = bench_tokenizer(config, corpus)
    # one trimmed stream for every run, so every length and every row scores the same targets
    all_tokens = corpus.tokens("test", tokenizer)
    test_tokens = all_tokens[
        : common_prefix(all_tokens.numel(), config.eval_lens, config.eval_tokens)
    ]
    results: dict[str, Any] = {
        "version": RESULTS_VERSION,
        "corpus": corpus.name,
        "corpus_hash": corpus.content_hash,
        "tokenizer": tokenizer.name,
        "train_len": config.train_len,
        "eval_lens": config.eval_lens,
        "protocol": config.protocols[0],
        "protocols": config.protocols,
        "preset": config.preset,
        "settings": config.settings(),
        "task_settings": config.task_settings(),
        "passkey_settings": config.passkey_settings(),
        "environment": {
            **environment(),
            **({"jobs": workers.jobs, "threads_per_job": workers.threads} if workers else {}),
        },
        "runs": [],
        "task_runs": [],
        "passkey_runs": [],
        "costs": [],
    }
    previous = _previous_runs(out_dir / "results.json", results)
    used: dict[str, set[tuple[Any, ...]]] = {stage: set() for stage in previous}
    plan = Plan(_units(config), enabled=progress, work=_unit_work(config))
    models: dict[tuple[str, int], Any] = {}  # trained in this process (else loaded)

    def with_earlier() -> dict[str, Any]:
        """`results` plus the finished records of an earlier bench in out_dir (same settings)
        that this one did not select (e.g. a rerun with fewer --methods): never dropped."""
        out = dict(results)
        for stage, by_key in previous.items():
            rest = [r for k, done in by_key.items() if k not in used[stage] for r in _listed(done)]
            out[stage] = results[stage] + rest
        return out

    def kept_record(stage: str, key: tuple[Any, ...], rows: set[str] | None) -> Any:
        """The finished record(s) under `key` from an earlier bench, else None. `rows`: the
        methods a list of records must hold (extra ones are dropped, a missing one: None)."""
        done = previous[stage].get(key)
        if done is not None and rows is not None:
            done = [r for r in done if r["method"] in rows]
            if {r["method"] for r in done} != rows:
                done = None
        return done

    def keep_or_run(
        stage: str, key: tuple[Any, ...], run: Any, rows: set[str] | None = None
    ) -> None:
        """Keep the finished record(s) under `key`, else run()."""
        used[stage].add(key)
        done = kept_record(stage, key, rows)
        unit = "extensions" if stage == "runs" and "+" in str(key[0]) else stage
        plan.start(unit, _unit_label(stage, key))
        kept = done is not None
        if done is None:
            done = run()
        plan.finish(kept=kept)
        if progress and kept:
            shown = " ".join(map(str, key))
            print(f"{stage} {shown}: kept from {out_dir / 'results.json'}", file=sys.stderr)
        results[stage] += _listed(done)
        write_json(out_dir / "results.json", with_earlier())

    def model_of(method: str, seed: int) -> Any:
        if (method, seed) not in models:
            from extrapos.bench.workers import load_run_model

            models[(method, seed)] = load_run_model(run_dir_of(method, seed))
        return models[(method, seed)]

    def run_dir_of(method: str, seed: int) -> Path:
        return out_dir / "runs" / f"{method}-seed{seed}"

    units = _lm_units(config, corpus, tokenizer, test_tokens, out_dir, progress, save_runs,
                      loggers, models, model_of, run_dir_of)  # fmt: skip
    units += _probe_units(config, tokenizer, progress, model_of, run_dir_of)
    consumed: set[tuple[Any, ...]] = set()

    def submit_ahead(start: int) -> None:
        """Keep every worker busy: submit the next ready units in plan order (a unit whose
        model's run has not finished waits), `jobs` + 1 in flight at most."""
        assert workers is not None
        for u in units[start:]:
            if workers.in_flight > workers.jobs:
                break
            ready = u.after is None or ("runs", u.after) in consumed
            todo = u.there is not None and kept_record(u.stage, u.key, u.rows) is None
            if ready and todo:
                workers.submit((u.stage, u.key), u.there)  # a no-op when already submitted

    for i, u in enumerate(units):
        if workers is not None and u.there is None:
            workers.close()  # cost probes time a forward: nothing else may run meanwhile
            workers = None

        def run(u: _Unit = u, pool: Workers | None = workers) -> Any:
            if pool is None or u.there is None:
                return u.here()
            pool.submit((u.stage, u.key), u.there)  # a no-op when submitted ahead
            return u.shown(pool.result((u.stage, u.key)))

        if workers is not None:
            submit_ahead(i)
        keep_or_run(u.stage, u.key, run, u.rows)
        consumed.add((u.stage, u.key))
    results = with_earlier()
    write_json(out_dir / "results.json", results)
    return results


def _listed(done: Any) -> list[Any]:
    return done if isinstance(done, list) else [done]


def _units(config: BenchConfig) -> dict[str, int]:
    """Units of work per stage (see `extrapos.bench.loggers.Plan`)."""
    methods, seeds = config.methods or [], len(config.seeds)
    extension_rows = len(config.extensions) if "rope" in methods else 0
    return {
        "runs": seeds * len(methods),
        "extensions": seeds * extension_rows,
        "task_runs": seeds * len(config.tasks) * len(methods),
        "passkey_runs": seeds * len(methods) if config.passkey_steps else 0,
        "costs": len(methods) if config.memory else 0,
    }


def _unit_work(config: BenchConfig) -> dict[str, float]:
    """Expected work of one unit per stage, in token positions through the model (a training
    step's backward counts as two forwards), for the ETA of stages not yet started. A rough
    guide: attention's growth with length and the probes' Python overheads are ignored."""
    from extrapos.bench.stages import PASSKEY_BATCH_SIZE, TASK_BATCH_SIZE

    lengths = config.eval_lens or [config.train_len]
    evaluate = config.eval_tokens * len(lengths) * max(1, len(config.protocols))
    task_len = 4 * config.task_train_len  # a task problem is a few tokens per size unit
    return {
        "runs": 3.0 * config.total_steps * config.batch_size * config.train_len + evaluate,
        "extensions": float(evaluate),
        "task_runs": 3.0 * config.task_steps * TASK_BATCH_SIZE * task_len
        + config.task_samples * len(config.task_eval_lens or [config.task_train_len]) * task_len,
        "passkey_runs": 3.0 * config.passkey_steps * PASSKEY_BATCH_SIZE * config.train_len
        + config.passkey_trials * len(config.passkey_depths) * sum(lengths),
        "costs": 4.0 * max(lengths),  # a few forwards at the longest length
    }


_STAGE_WORDS = {"runs": "train", "task_runs": "task", "passkey_runs": "passkey", "costs": "cost"}


def _unit_label(stage: str, key: tuple[Any, ...]) -> str:
    method = key[0]
    if stage == "runs" and "+" in str(method):
        return f"eval {method} (seed {key[-1]})"
    if stage == "task_runs":
        return f"task {key[1]}: {method} (seed {key[2]})"
    if stage == "costs":
        return f"cost {method}"
    return f"{_STAGE_WORDS[stage]} {method} (seed {key[-1]})"


def _lm_units(
    config: BenchConfig,
    corpus: Any,
    tokenizer: Any,
    test_tokens: Any,
    out_dir: Path,
    progress: bool,
    save_runs: bool,
    loggers: Loggers | None,
    models: dict[tuple[str, int], Any],
    model_of: Callable[[str, int], Any],
    run_dir_of: Callable[[str, int], Path],
) -> list[_Unit]:
    """Language-model runs, each `rope` run followed by its extension rows."""
    from extrapos.bench.language_model import _say
    from extrapos.bench.workers import extension_unit, train_unit

    def said(summary: dict[str, Any]) -> dict[str, Any]:
        _say(summary, progress)
        return summary

    assert config.methods is not None
    units: list[_Unit] = []
    for seed in config.seeds:
        for method in config.methods:
            train_args = (config, method, seed, corpus, tokenizer, test_tokens, out_dir)

            def here(method: str = method, seed: int = seed, args: tuple = train_args) -> Any:
                summary, models[(method, seed)] = run_method(*args, progress, save_runs, loggers)
                return summary

            units.append(_Unit(
                "runs", (method, seed), here,
                there=partial(train_unit, *train_args, False, save_runs, loggers),
                shown=said,
            ))  # fmt: skip
            if method != "rope":
                continue
            for ext in config.extensions:
                units.append(_Unit(
                    "runs", (f"rope+{ext}", seed),
                    lambda ext=ext, seed=seed: run_extension(
                        config, ext, seed, model_of("rope", seed), tokenizer, test_tokens, progress
                    ),
                    there=partial(extension_unit, config, ext, seed, run_dir_of("rope", seed),
                                  tokenizer, test_tokens, False),
                    after=("rope", seed),
                    shown=said,
                ))  # fmt: skip
    return units


def _probe_units(
    config: BenchConfig,
    tokenizer: Any,
    progress: bool,
    model_of: Callable[[str, int], Any],
    run_dir_of: Callable[[str, int], Path],
) -> list[_Unit]:
    """The task, passkey and cost stages (see `extrapos.bench.stages`)."""
    from extrapos.bench.stages import cost_probe, passkey_probe, task_probe
    from extrapos.bench.workers import passkey_unit

    assert config.methods is not None and config.eval_lens is not None
    units: list[_Unit] = []
    for seed in config.seeds:
        for task in config.tasks:
            for method in config.methods:
                task_call = partial(
                    task_probe,
                    method,
                    task,
                    seed,
                    train_len=config.task_train_len,
                    eval_lens=config.task_eval_lens or [],
                    steps=config.task_steps,
                    samples=config.task_samples,
                )
                units.append(_Unit(
                    "task_runs", (method, task, seed),
                    lambda call=task_call: _said(call(progress=progress), progress),
                    there=task_call,
                    shown=lambda record: _said(record, progress),
                ))  # fmt: skip
    if config.passkey_steps:
        for seed in config.seeds:
            for method in config.methods:
                passkey_args = (tokenizer, method, seed)
                passkey_kwargs = {
                    "train_len": config.train_len,
                    "lengths": config.eval_lens or [],
                    "depths": config.passkey_depths,
                    "trials": config.passkey_trials,
                    "steps": config.passkey_steps,
                    "extensions": config.extensions,
                }
                units.append(_Unit(
                    "passkey_runs", (method, seed),
                    lambda method=method, seed=seed, args=passkey_args, kw=passkey_kwargs: [
                        _said(row, progress)
                        for row in passkey_probe(model_of(method, seed), *args, **kw,
                                                 progress=progress)
                    ],
                    there=partial(passkey_unit, run_dir_of(method, seed), *passkey_args,
                                  **passkey_kwargs),
                    after=(method, seed),
                    shown=lambda rows: [_said(row, progress) for row in rows],
                    rows={method, *(f"rope+{e}" for e in config.extensions if method == "rope")},
                ))  # fmt: skip
    if config.memory:
        for method in config.methods:
            units.append(_Unit(
                "costs", (method,),
                lambda method=method: cost_probe(
                    method, max(config.eval_lens or [1]), n_layer=config.n_layer,
                    n_head=config.n_head, d_model=config.d_model,
                ),
            ))  # fmt: skip
    return units


def _said(record: dict[str, Any], progress: bool) -> dict[str, Any]:
    """Print a task or passkey record's accuracies by length; return it."""
    if progress:
        by_len: dict[int, list[float]] = {}
        for r in record["records"]:
            if r.get("accuracy") is not None:
                by_len.setdefault(r["length"], []).append(r["accuracy"])
        shown = ", ".join(f"{n}: {sum(v) / len(v):.2f}" for n, v in by_len.items())
        what = f"task {record['task']}" if "task" in record else "passkey"
        print(f"{record['method']} (seed {record['seed']}) {what}: acc {shown}", file=sys.stderr)
    return record


# results fields that must be unchanged for a finished record of each stage to be kept
_STAGE_SETTINGS: dict[str, tuple[str, ...]] = {
    "runs": ("settings",),
    "task_runs": ("task_settings",),
    "passkey_runs": ("settings", "passkey_settings"),
    "costs": ("settings",),
}


def _previous_runs(path: Path, results: dict[str, Any]) -> dict[str, dict[tuple[Any, ...], Any]]:
    """Per stage, the finished records of an earlier results.json whose settings still hold,
    by key. Passkey rows of one fine-tune (the method's own and its `rope+<ext>` rows) are
    kept together under the method's key."""

    kept: dict[str, dict[tuple[Any, ...], Any]] = {stage: {} for stage in _STAGE_SETTINGS}
    if not path.is_file():
        return kept
    old = read_json(path, "bench results")
    if any(old.get(k) != results[k] for k in ("version", "corpus_hash")):
        return kept
    for stage, must_match in _STAGE_SETTINGS.items():
        if any(old.get(k) != results[k] for k in must_match):
            continue
        for record in old.get(stage, []):
            key = record_key(stage, record)
            if stage == "passkey_runs":
                owner = (record.get("extends") or key[0], key[1])
                kept[stage].setdefault(owner, []).append(record)
            else:
                kept[stage][key] = record
    return kept


__all__ = ["CLASSIC_METHODS", "PRESETS", "BenchConfig", "run_bench"]
