"""The translation suite: train every method on short pairs, translate long inputs, compare.

    extrapos bench --suite translation --data DIR --src en --tgt de [--methods ...] [--seeds ...]

Every (method, seed) trains one `Seq2Seq` with the same budget (`steps` × `max_tokens`), model
shape and data — the train pairs whose source has at most `max_src_tokens` tokens — and is scored
on the test split by `extrapos.probes.translation.evaluate_translation` (corpus, source-length
buckets, concatenation k = 1, 2, 4, 8). Output in `out_dir`:

    results.json   {"version": 1, "suite": "translation", "settings": {...}, "environment": {...},
                    "translation": [{"method", "seed", "bleu", "chrf", "len_ratio", "concat",
                    "buckets", "kept_pairs", "train_pairs", "train_seconds", ...}, ...],
                    "wall_seconds": this process's time (records kept from an earlier
                    results.json took none)}
    runs/METHOD-sSEED/   each run directory (resumable; `extrapos translate eval` reads it)
The CLI then writes the report (`extrapos.report.translation`): report.md, report.html,
translation.csv, translation_bleu_vs_k.png, translation_bleu_vs_bucket.png.

results.json is rewritten (atomically) after every run; a rerun with the same settings keeps
the finished records and trains only what is missing.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from extrapos.core.errors import UserError
from extrapos.core.files import read_json, write_json
from extrapos.data.parallel import load_parallel

#: the default comparison (FIRE runs in the encoder with its signed form)
DEFAULT_METHODS = ["sinusoidal", "learned", "nope", "rope", "alibi", "t5", "kerple_log", "fire"]


@dataclass
class TranslationBenchConfig:
    """What every run of the suite shares; all of it is recorded in results.json."""

    data: str = "../shared/data/multi30k"
    src: str = "en"
    tgt: str = "de"
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    # Sized so that 8 methods x 3 seeds fit in 2 hours on 2 CPU cores (measured on 2026-12-03,
    # 2 threads, idle machine: 0.34 s per step, 43 s for the beam-4 evaluation at k = 1, 2, 4, 8;
    # the default `translate train` shape, 3+3 layers x d 256 x 8k BPE x 4,096 tokens, takes
    # 2.5 s per step, an hour per run at 1,500 steps). Scale with --steps/--d-model/--n-layer.
    steps: int = 600
    max_tokens: int = 2048
    max_src_tokens: int | None = 16
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 128
    lr: float = 1e-3
    warmup_steps: int = 150
    vocab_size: int = 4000
    test_split: str = "test_2016_flickr"
    eval_sentences: int | None = None  # the first N test pairs (None: all)
    concat: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    beam: int = 4
    length_penalty: float = 1.0

    def settings(self) -> dict[str, Any]:
        s = asdict(self)
        s.pop("methods")
        s.pop("seeds")
        return s


def _previous(path: Path, settings: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    if not path.is_file():
        return {}
    old = read_json(path, "bench results")
    if old.get("suite") != "translation" or old.get("settings") != settings:
        return {}
    return {(r["method"], r["seed"]): r for r in old.get("translation", [])}


def run_translation_bench(
    config: TranslationBenchConfig, out_dir: str | Path, progress: bool = True
) -> dict[str, Any]:
    """Train and score every (method, seed); write and return results.json."""
    from extrapos.bench.loggers import Plan
    from extrapos.bench.run import environment
    from extrapos.models.seq2seq import Seq2SeqConfig
    from extrapos.probes.translation import evaluate_translation
    from extrapos.training.translation import (
        TranslationTrainConfig,
        load_seq2seq,
        train_translation,
    )

    out_dir = Path(out_dir)
    for method in config.methods:  # refuse encodings without an encoder form before any work
        Seq2SeqConfig(vocab_size=8, n_head=config.n_head, d_model=config.d_model, encoding=method)
        from extrapos.encodings import build_for_model
        from extrapos.models.gpt import check_bidirectional

        check_bidirectional(
            build_for_model(
                method, {}, d_model=config.d_model, num_heads=config.n_head,
                head_dim=config.d_model // config.n_head, num_layers=config.n_layer, d_ff=None,
            )
        )  # fmt: skip
    data = load_parallel(config.data, config.src, config.tgt)
    test = data.split(config.test_split)
    if config.eval_sentences is not None:
        test = test[: config.eval_sentences]
    sources, refs = [s for s, _ in test], [t for _, t in test]
    settings = config.settings()
    done = _previous(out_dir / "results.json", settings)
    results: dict[str, Any] = {
        "version": 1,
        "suite": "translation",
        "corpus": config.data,
        "settings": settings,
        "environment": environment(),
        "translation": [],
    }
    plan = Plan({"translation": len(config.seeds) * len(config.methods)}, enabled=progress)
    started = time.perf_counter()
    for seed in config.seeds:
        for method in config.methods:
            plan.start("translation", f"translate {method} (seed {seed})")
            if (method, seed) in done:
                results["translation"].append(done[(method, seed)])
                plan.finish(kept=True)
                if progress:
                    print(f"{method} seed {seed}: kept from results.json", file=sys.stderr)
                continue
            run_dir = out_dir / "runs" / f"{method}-s{seed}"
            train_cfg = TranslationTrainConfig(
                steps=config.steps,
                max_tokens=config.max_tokens,
                lr=config.lr,
                warmup_steps=config.warmup_steps,
                seed=seed,
                vocab_size=config.vocab_size,
                max_src_tokens=config.max_src_tokens,
                save_every=max(config.steps // 4, 1),
                eval_every=0,
            )
            model_cfg = {
                "n_layer": config.n_layer,
                "n_head": config.n_head,
                "d_model": config.d_model,
                "encoding": method,
            }
            resume = (run_dir / "checkpoints").is_dir()
            try:
                summary = train_translation(
                    data, model_cfg, train_cfg, run_dir, resume=resume, data_spec=config.data,
                    progress=progress,
                )  # fmt: skip
            except UserError as exc:
                if not resume:
                    raise
                if progress:
                    print(f"{method}: cannot resume ({exc}); training afresh", file=sys.stderr)
                summary = train_translation(
                    data, model_cfg, train_cfg, run_dir, data_spec=config.data, progress=progress
                )
            model, tokenizer = load_seq2seq(run_dir)
            scores = evaluate_translation(
                model, tokenizer, sources, refs, config.concat, config.beam, config.length_penalty,
                progress=progress,
            )  # fmt: skip
            scores.pop("hypotheses")
            record = {"method": method, "seed": seed, "params": {}, **scores, **summary}
            results["translation"].append(record)
            results["wall_seconds"] = round(time.perf_counter() - started, 1)
            write_json(out_dir / "results.json", results)
            plan.finish(kept=False)
            if progress:
                print(
                    f"{method} seed {seed}: BLEU {record['bleu']:.2f} chrF {record['chrf']:.1f} "
                    f"({record['kept_pairs']}/{record['train_pairs']} pairs, "
                    f"{record['train_seconds']:.0f} s)",
                    file=sys.stderr,
                )
    results["wall_seconds"] = round(time.perf_counter() - started, 1)  # this process's
    write_json(out_dir / "results.json", results)
    return results


__all__ = ["DEFAULT_METHODS", "TranslationBenchConfig", "run_translation_bench"]
