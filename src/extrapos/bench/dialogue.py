"""The dialogue suite: `extrapos bench --suite dialogue --data DIR` (a DailyDialog folder).

Every method is trained with the same model shape, data, seeds and token budget at a short
length L (default 64 byte tokens: one or two turns; a DailyDialog test dialogue is ~8 L) on
windows that start at turn boundaries, then probed on the deduplicated test dialogues:

1. history use and recall across turns (`extrapos.probes.dialogue`);
2. long generation: continuations of held-out prompts (starting at a turn) to 16·L, rep-n,
   distinct-n and the true continuation's NLL per window of L positions
   (`extrapos.probes.generation`).

One record per (method, seed), of kind `dialogue`, in `results.json` (rewritten atomically after
each); a rerun with the same `--out` and unchanged settings keeps the finished records. Every
random choice (weights, batches, recall prompts, samples) comes from the seed, so rerunning one
method and seed gives the same figures (tests check it). `learned` gets a table of 16·L rows,
of which only the first L are trained.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from extrapos.bench.dialogue_config import DIALOGUE_METHODS, PROBE_FLAGS, DialogueBenchConfig
from extrapos.bench.loggers import Plan
from extrapos.bench.run import environment
from extrapos.core.errors import UserError
from extrapos.core.files import read_json, write_json
from extrapos.data import build_tokenizer, load_corpus
from extrapos.data.dialogue import DialogueCorpus
from extrapos.probes.dialogue import dialogue_eval
from extrapos.probes.generation import generation_stats
from extrapos.training.lm import train

__all__ = ["DIALOGUE_METHODS", "PROBE_FLAGS", "DialogueBenchConfig", "run_dialogue_bench"]

RESULTS_VERSION = 1


def _tokenizer(config: DialogueBenchConfig, corpus: DialogueCorpus) -> Any:
    if config.tokenizer == "bpe":
        return build_tokenizer("bpe", vocab_size=1024, corpus=corpus)
    return build_tokenizer("byte")


def run_dialogue_record(
    config: DialogueBenchConfig,
    method: str,
    seed: int,
    corpus: DialogueCorpus,
    tokenizer: Any,
    run_dir: Path | None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train one (method, seed) and probe it: the `dialogue` record."""
    model_config = config.model_config(method, tokenizer.vocab_size)
    result = train(
        model_config,
        config.train_config(seed),
        corpus,
        tokenizer,
        run_dir=run_dir,
        progress=progress,
        description=f"train {method} (seed {seed})",
        overwrite=True,  # retrained only when the settings changed
    )
    model = result.model
    t0 = time.perf_counter()
    probes = dialogue_eval(
        model, tokenizer, corpus, config.eval_config(), progress=progress, details=True
    )
    t1 = time.perf_counter()
    generation = generation_stats(
        model,
        tokenizer,
        corpus.tokens("test", tokenizer),
        config.train_len,
        total_len=config.gen_factor * config.train_len,
        prompts=config.gen_prompts,
        n=config.ngram,
        temperature=config.gen_temperature,
        seed=seed,
        starts=corpus.layout("test", tokenizer).turn_starts,
    )
    generation["sample"] = (generation.get("sample") or "")[:4000]
    t2 = time.perf_counter()
    losses = result.losses[-20:]
    return {
        "kind": "dialogue",
        "method": method,
        "params": model_config.encoding_params,
        "seed": seed,
        **{k: probes[k] for k in ("history", "recall", "chance", "n_dialogues")},
        "history_by_length_k0": probes["by_length_k0"],
        "history_by_length_tokens": probes["by_length_tokens"],
        "recall_lengths": probes["recall_lengths"],
        "generation": generation,
        "final_train_loss": sum(losses) / len(losses),
        "train_seconds": round(result.train_seconds, 2),
        "eval_seconds": round(t1 - t0, 2),
        "generation_seconds": round(t2 - t1, 2),
        "tokens_per_second": round(result.tokens_per_second),
        "num_params": model.num_params(),
    }


def run_dialogue_bench(
    config: DialogueBenchConfig, out_dir: str | Path, progress: bool = True, save_runs: bool = True
) -> dict[str, Any]:
    """Run the suite into out_dir and return the results (results.json is rewritten after
    every record; `extrapos.report.dialogue.write_dialogue_report` renders the report)."""
    out_dir = Path(out_dir)
    corpus = load_corpus(config.data)
    if not isinstance(corpus, DialogueCorpus):
        raise UserError(
            f"--suite dialogue needs a DailyDialog-format folder (dialogues_train.txt, "
            f"dialogues_validation.txt, dialogues_test.txt); {config.data} is not one"
        )
    tokenizer = _tokenizer(config, corpus)
    results: dict[str, Any] = {
        "version": RESULTS_VERSION,
        "suite": "dialogue",
        "corpus": corpus.name,
        "corpus_hash": corpus.content_hash,
        "duplicates_removed": dict(corpus.removed),
        "tokenizer": tokenizer.name,
        "train_len": config.train_len,
        "settings": config.settings(),
        "environment": environment(),
        "runs": [],
    }
    previous: dict[tuple[str, int], dict[str, Any]] = {}
    path = out_dir / "results.json"
    if path.is_file():
        old = read_json(path, "dialogue bench results")
        if all(old.get(k) == results[k] for k in ("version", "suite", "corpus_hash", "settings")):
            previous = {(r["method"], r["seed"]): r for r in old.get("runs", [])}
    plan = Plan({"dialogue": len(config.seeds) * len(config.methods)}, enabled=progress)
    for seed in config.seeds:
        for method in config.methods:
            plan.start("dialogue", f"dialogue {method} (seed {seed})")
            record = previous.get((method, seed))
            plan_kept = record is not None
            if record is not None:
                if progress:
                    print(f"dialogue {method} seed {seed}: kept from {path}", file=sys.stderr)
            else:
                run_dir = out_dir / "runs" / f"{method}-seed{seed}" if save_runs else None
                record = run_dialogue_record(
                    config, method, seed, corpus, tokenizer, run_dir, progress
                )
                if progress:
                    _say(record)
            results["runs"].append(record)
            write_json(path, results)
            plan.finish(kept=plan_kept)
    return results


def _say(record: dict[str, Any]) -> None:
    k = record["history"]["k"]
    shown = ", ".join(f"k={key}: {v:.3f}" for key, v in k.items() if v is not None)
    recall = ", ".join(f"{d}: {a:.2f}" for d, a in record["recall"].items())
    print(
        f"{record['method']} (seed {record['seed']}): NLL {shown}; recall {recall} "
        f"(chance {record['chance']:.2f}); train {record['train_seconds']:.0f} s, "
        f"eval {record['eval_seconds']:.0f} s, generation {record['generation_seconds']:.0f} s",
        file=sys.stderr,
    )
