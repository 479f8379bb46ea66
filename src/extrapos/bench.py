"""The main job: train every method short, evaluate it long, write results and a report.

Every method gets the same model shape, data, seed and token budget. After each method the
results file is rewritten atomically, so a killed bench loses at most the method in progress,
and a rerun with the same `--out` and settings keeps the finished methods.

`learned` cannot represent positions past its table; the bench sizes its table to the longest
evaluation length, so rows past `train_len` exist but are never trained: what "extrapolating" a
learned table means. The report says so.
"""

from __future__ import annotations

import datetime as dt
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from extrapos.data import build_tokenizer, load_corpus
from extrapos.encodings import encoding_class
from extrapos.errors import UserError
from extrapos.evaluate import evaluate_lengths
from extrapos.io import read_json, write_json
from extrapos.model import GPTConfig
from extrapos.train import TrainConfig, train

RESULTS_VERSION = 1
DEFAULT_METHODS = ("sinusoidal", "learned", "nope", "rope", "alibi", "t5")


@dataclass
class BenchConfig:
    """What a bench runs. Defaults: the quick comparison (minutes on 2 CPU cores)."""

    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    train_len: int = 128
    eval_lens: list[int] | None = None  # None: 1×, 2×, 4×, 8×, 16× train_len
    steps: int = 300
    batch_size: int = 16
    lr: float = 2e-3
    seed: int = 0
    data: str | None = None  # None: the built-in corpus
    tokenizer: str = "byte"
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    eval_tokens: int = 32768  # targets scored per length (same targets at every length)

    def __post_init__(self) -> None:
        if not self.methods:
            raise UserError("no methods selected; pass --methods with names from `extrapos list`")
        for method in self.methods:
            encoding_class(method)  # unknown -> UserError listing known names
        if len(set(self.methods)) != len(self.methods):
            raise UserError(f"--methods lists a method twice: {self.methods}")
        if self.eval_lens is None:
            self.eval_lens = [self.train_len * f for f in (1, 2, 4, 8, 16)]
        if not self.eval_lens or min(self.eval_lens) < 1:
            raise UserError(f"--eval-lens must be positive lengths, got {self.eval_lens}")
        self.eval_lens = sorted(set(self.eval_lens))
        if self.eval_tokens < max(self.eval_lens):
            raise UserError(
                f"eval_tokens={self.eval_tokens} is below the longest eval length "
                f"{max(self.eval_lens)}; raise it"
            )
        # model and train configs validate the rest
        self.model_config("nope")
        self.train_config()

    def model_config(self, method: str) -> GPTConfig:
        params: dict[str, Any] = {}
        if method == "learned":
            params["max_len"] = max(max(self.eval_lens or [0]), self.train_len)
        return GPTConfig(
            vocab_size=build_tokenizer(self.tokenizer).vocab_size,
            n_layer=self.n_layer,
            n_head=self.n_head,
            d_model=self.d_model,
            encoding=method,
            encoding_params=params,
        )

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            train_len=self.train_len,
            batch_size=self.batch_size,
            steps=self.steps,
            lr=self.lr,
            warmup_steps=max(1, self.steps // 10),
            seed=self.seed,
        )

    def settings(self) -> dict[str, Any]:
        """What must match for a finished run to be reused (everything but the method list)."""
        d = asdict(self)
        d.pop("methods")
        return d


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.machine(),
        "threads": torch.get_num_threads(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv,
    }


def run_bench(
    config: BenchConfig, out_dir: str | Path, progress: bool = True, save_runs: bool = True
) -> dict[str, Any]:
    """Run the comparison into out_dir: results.json, report.md, report.html, plots.

    Finished methods found in out_dir/results.json with the same settings are kept.
    """
    from extrapos.report import write_report

    out_dir = Path(out_dir)
    corpus = load_corpus(config.data)
    tokenizer = build_tokenizer(config.tokenizer)
    test_tokens = corpus.tokens("test", tokenizer)
    results: dict[str, Any] = {
        "version": RESULTS_VERSION,
        "corpus": corpus.name,
        "corpus_hash": corpus.content_hash,
        "tokenizer": tokenizer.name,
        "train_len": config.train_len,
        "eval_lens": config.eval_lens,
        "protocol": "nonoverlap",
        "settings": config.settings(),
        "environment": environment(),
        "runs": [],
    }
    previous = _previous_runs(out_dir / "results.json", results)
    for method in config.methods:
        done = previous.get((method, config.seed))
        if done is not None:
            results["runs"].append(done)
            if progress:
                print(f"{method}: kept from {out_dir / 'results.json'}", file=sys.stderr)
            continue
        results["runs"].append(
            _run_method(
                config, method, corpus, tokenizer, test_tokens, out_dir, progress, save_runs
            )
        )
        write_json(out_dir / "results.json", results)
    write_json(out_dir / "results.json", results)
    write_report(results, out_dir)
    return results


def _previous_runs(path: Path, results: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    if not path.is_file():
        return {}
    old = read_json(path, "bench results")
    same = all(old.get(k) == results[k] for k in ("version", "corpus_hash", "settings"))
    return {(r["method"], r.get("seed", 0)): r for r in old.get("runs", [])} if same else {}


def _run_method(
    config: BenchConfig,
    method: str,
    corpus: Any,
    tokenizer: Any,
    test_tokens: torch.Tensor,
    out_dir: Path,
    progress: bool,
    save_runs: bool,
) -> dict[str, Any]:
    model_config = config.model_config(method)
    result = train(
        model_config,
        config.train_config(),
        corpus,
        tokenizer,
        run_dir=out_dir / "runs" / method if save_runs else None,
        progress=progress,
        description=f"train {method}",
    )
    t0 = time.perf_counter()
    records = evaluate_lengths(
        result.model,
        test_tokens,
        config.eval_lens or [],
        max_tokens=config.eval_tokens,
        progress=progress,
    )
    eval_seconds = time.perf_counter() - t0
    by_len = {str(r["length"]): r for r in records}
    longest = records[-1]
    summary = {
        "method": method,
        "params": model_config.encoding_params,
        "seed": config.seed,
        "ppl": {k: r["ppl"] for k, r in by_len.items()},
        "bits_per_byte": {k: r.get("bits_per_byte") for k, r in by_len.items()},
        "tokens_scored": {k: r.get("tokens") for k, r in by_len.items()},
        "errors": {k: r["error"] for k, r in by_len.items() if r.get("error")},
        "position_nll": {str(longest["length"]): longest.get("position_nll")},
        "final_train_loss": sum(result.losses[-20:]) / len(result.losses[-20:]),
        "train_seconds": round(result.train_seconds, 2),
        "tokens_per_second": round(result.tokens_per_second),
        "eval_seconds": round(eval_seconds, 2),
        "num_params": result.model.num_params(),
    }
    if progress:
        shown = ", ".join(
            f"{k}: {v:.3f}" if v is not None else f"{k}: n/a" for k, v in summary["ppl"].items()
        )
        print(f"{method}: ppl {shown}", file=sys.stderr)
    return summary


__all__ = ["DEFAULT_METHODS", "BenchConfig", "run_bench"]
