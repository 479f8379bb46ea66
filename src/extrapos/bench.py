"""The main job: train every method short, evaluate it long, write results and a report.

Every method gets the same model shape, data, seeds and token budget. Each (method, seed) is
trained once and evaluated at every length under each protocol; inference-time RoPE extensions
(PI, NTK, dynamic NTK, YaRN, Llama 3, ReRoPE, Self-Extend, log-n) are applied to each trained
`rope` model as extra rows `rope+<name>`, each length with its own factor (eval / train length). After every run the results file is
rewritten atomically, so a killed bench loses at most the run in progress, and a rerun with the
same `--out` and settings keeps every finished run.

`learned` cannot represent positions past its table; the bench sizes its table to the longest
evaluation length, so rows past `train_len` exist but are never trained: what "extrapolating" a
learned table means. The report says so.

Presets (flags override their fields):

| preset | methods | seeds | budget | for |
|---|---|---|---|---|
| quick | the six classics | 1 | 250 steps × 2,048 tokens | a first look, ≤ 5 min on 2 CPU cores |
| standard | every registered encoding | 3 | 400 steps × 2,048 tokens | the leaderboard, ~1.5 h on 2 cores (estimated) |
| paper | every registered encoding | 3 | 12 layers, d 768, train 512, 20k steps × 16k tokens | a GPU |
"""

from __future__ import annotations

import datetime as dt
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from extrapos.data import build_tokenizer, load_corpus
from extrapos.encodings import encoding_class, list_encodings
from extrapos.errors import UserError
from extrapos.evaluate import PROTOCOLS, common_prefix, evaluate_lengths
from extrapos.extend import EXTENSIONS, describe_extension, rope_extended
from extrapos.io import read_json, write_json
from extrapos.model import GPTConfig
from extrapos.train import TrainConfig, train

RESULTS_VERSION = 1
CLASSIC_METHODS = ("sinusoidal", "learned", "nope", "rope", "alibi", "t5")

PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "methods": list(CLASSIC_METHODS),
        "seeds": [0],
        "steps": 250,
        "eval_tokens": 16384,
        "extensions": ["linear", "ntk", "dynamic", "yarn"],
    },
    "standard": {"methods": None, "seeds": [0, 1, 2], "steps": 400, "eval_tokens": 32768},
    "paper": {
        "methods": None,
        "seeds": [0, 1, 2],
        "steps": 20000,
        "train_len": 512,
        "batch_size": 32,
        "lr": 6e-4,
        "n_layer": 12,
        "n_head": 12,
        "d_model": 768,
        "eval_tokens": 262144,
    },
}


@dataclass
class BenchConfig:
    """What a bench runs. The defaults are the `quick` preset."""

    preset: str = "quick"
    methods: list[str] | None = None  # None: every registered encoding
    seeds: list[int] = field(default_factory=lambda: [0])
    train_len: int = 128
    eval_lens: list[int] | None = None  # None: 1×, 2×, 4×, 8×, 16× train_len
    protocols: list[str] = field(default_factory=lambda: list(PROTOCOLS))
    extensions: list[str] = field(default_factory=lambda: list(EXTENSIONS))
    steps: int = 250
    batch_size: int = 16
    lr: float = 2e-3
    data: str | None = None  # None: the built-in corpus
    tokenizer: str = "byte"
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    eval_tokens: int = 16384  # targets scored per length (the same targets at every length)

    @classmethod
    def from_preset(cls, preset: str = "quick", **overrides: Any) -> BenchConfig:
        """The preset's settings with `overrides` (None values ignored) on top."""
        if preset not in PRESETS:
            raise UserError(f"unknown preset '{preset}'; known: {', '.join(PRESETS)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise UserError(f"unknown bench setting(s) {', '.join(unknown)}")
        settings = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
        return cls(preset=preset, **settings)

    def __post_init__(self) -> None:
        if self.methods is None:
            self.methods = list_encodings()
        if not self.methods:
            raise UserError("no methods selected; pass --methods with names from `extrapos list`")
        for method in self.methods:
            encoding_class(method)  # unknown -> UserError listing the known names
        for name, values in (("methods", self.methods), ("seeds", self.seeds)):
            if len(set(values)) != len(values):
                raise UserError(f"--{name} lists an entry twice: {values}")
        if not self.seeds:
            raise UserError("--seeds needs at least one seed")
        for protocol in self.protocols:
            if protocol not in PROTOCOLS:
                raise UserError(f"unknown protocol '{protocol}'; known: {', '.join(PROTOCOLS)}")
        if not self.protocols:
            raise UserError("--protocols needs at least one protocol")
        for ext in self.extensions:
            if ext not in EXTENSIONS:
                raise UserError(f"unknown RoPE extension '{ext}'; known: {', '.join(EXTENSIONS)}")
        if self.eval_lens is None:
            self.eval_lens = [self.train_len * f for f in (1, 2, 4, 8, 16)]
        if not self.eval_lens or min(self.eval_lens) < 1:
            raise UserError(f"--eval-lens must be positive lengths, got {self.eval_lens}")
        self.eval_lens = sorted(set(self.eval_lens))
        if self.eval_tokens < max(self.eval_lens):
            raise UserError(
                f"eval_tokens={self.eval_tokens} is below the longest eval length "
                f"{max(self.eval_lens)}; raise --eval-tokens"
            )
        # the model and train configs validate the rest
        self.model_config("nope")
        self.train_config(self.seeds[0])

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

    def train_config(self, seed: int) -> TrainConfig:
        return TrainConfig(
            train_len=self.train_len,
            batch_size=self.batch_size,
            steps=self.steps,
            lr=self.lr,
            warmup_steps=max(1, self.steps // 10),
            seed=seed,
        )

    def settings(self) -> dict[str, Any]:
        """What must match for a finished run to be reused: all but the methods, seeds and
        extensions (which only select runs)."""
        d = asdict(self)
        for key in ("methods", "seeds", "extensions", "preset"):
            d.pop(key)
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
    """Run the comparison into out_dir: results.json, report.md, report.html, CSV and plots.

    Finished runs found in out_dir/results.json with the same settings are kept.
    """
    from extrapos.report import write_report

    out_dir = Path(out_dir)
    corpus = load_corpus(config.data)
    tokenizer = build_tokenizer(config.tokenizer)
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
        "environment": environment(),
        "runs": [],
    }
    previous = _previous_runs(out_dir / "results.json", results)

    def keep_or_run(key: tuple[str, int], run: Any) -> None:
        done = previous.get(key)
        if done is None:
            done = run()
        elif progress:
            print(
                f"{key[0]} (seed {key[1]}): kept from {out_dir / 'results.json'}", file=sys.stderr
            )
        results["runs"].append(done)
        write_json(out_dir / "results.json", results)

    assert config.methods is not None
    for seed in config.seeds:
        for method in config.methods:
            model_box: dict[str, Any] = {}

            def run_method(method: str = method, seed: int = seed, box: dict = model_box) -> Any:
                summary, box["model"] = _run_method(
                    config,
                    method,
                    seed,
                    corpus,
                    tokenizer,
                    test_tokens,
                    out_dir,
                    progress,
                    save_runs,
                )
                return summary

            keep_or_run((method, seed), run_method)
            if method != "rope":
                continue
            for ext in config.extensions:
                keep_or_run(
                    (f"rope+{ext}", seed),
                    lambda ext=ext, seed=seed, box=model_box: _run_extension(
                        config, ext, seed, box, test_tokens, out_dir, progress
                    ),
                )
    write_report(results, out_dir)
    return results


def _previous_runs(path: Path, results: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    if not path.is_file():
        return {}
    old = read_json(path, "bench results")
    same = all(old.get(k) == results[k] for k in ("version", "corpus_hash", "settings"))
    return {(r["method"], r.get("seed", 0)): r for r in old.get("runs", [])} if same else {}


def _evaluate(
    model: Any,
    lengths: list[int],
    protocols: list[str],
    test_tokens: torch.Tensor,
    progress: bool,
) -> dict[str, Any]:
    """ppl (first protocol), ppl per protocol, bits per byte, tokens scored, errors, the
    per-position loss at the longest length, and the time it took. `test_tokens` is already
    trimmed to the scored budget (see `run_bench`)."""
    t0 = time.perf_counter()
    by_protocol: dict[str, dict[str, Any]] = {}
    for protocol in protocols:
        records = evaluate_lengths(
            model,
            test_tokens,
            lengths,
            protocol=protocol,
            progress=progress,  # type: ignore[arg-type]
        )
        by_protocol[protocol] = {str(r["length"]): r for r in records}
    first = by_protocol[protocols[0]]
    longest = first[str(max(lengths))]
    return {
        "ppl": {k: r["ppl"] for k, r in first.items()},
        "ppl_by_protocol": {
            p: {k: r["ppl"] for k, r in recs.items()} for p, recs in by_protocol.items()
        },
        "bits_per_byte": {k: r.get("bits_per_byte") for k, r in first.items()},
        "tokens_scored": {k: r.get("tokens") for k, r in first.items()},
        "errors": {k: r["error"] for k, r in first.items() if r.get("error")},
        "position_nll": {str(longest["length"]): longest.get("position_nll")},
        "eval_seconds": round(time.perf_counter() - t0, 2),
    }


def _run_method(
    config: BenchConfig,
    method: str,
    seed: int,
    corpus: Any,
    tokenizer: Any,
    test_tokens: torch.Tensor,
    out_dir: Path,
    progress: bool,
    save_runs: bool,
) -> tuple[dict[str, Any], Any]:
    model_config = config.model_config(method)
    result = train(
        model_config,
        config.train_config(seed),
        corpus,
        tokenizer,
        run_dir=out_dir / "runs" / f"{method}-seed{seed}" if save_runs else None,
        progress=progress,
        description=f"train {method} (seed {seed})",
        overwrite=True,  # a run here is retrained only when the bench's settings changed
    )
    summary = {
        "method": method,
        "params": model_config.encoding_params,
        "seed": seed,
        **_evaluate(result.model, config.eval_lens or [], config.protocols, test_tokens, progress),
        "final_train_loss": sum(result.losses[-20:]) / len(result.losses[-20:]),
        "train_seconds": round(result.train_seconds, 2),
        "tokens_per_second": round(result.tokens_per_second),
        "num_params": result.model.num_params(),
    }
    _say(summary, progress)
    return summary, result.model


def _run_extension(
    config: BenchConfig,
    ext: str,
    seed: int,
    box: dict[str, Any],
    test_tokens: torch.Tensor,
    out_dir: Path,
    progress: bool,
) -> dict[str, Any]:
    """Evaluate the trained rope model of this seed with scaling `ext`, each length with its
    own factor (eval_len / train_len)."""
    model = box.get("model")
    if model is None:  # the rope run was kept from an earlier bench: load its checkpoint
        from extrapos.checkpoint import load_model

        model = load_model(out_dir / "runs" / f"rope-seed{seed}")
        box["model"] = model
    parts: dict[str, Any] = {}
    for length in config.eval_lens or []:
        with rope_extended(model, ext, config.train_len, length):
            part = _evaluate(model, [length], config.protocols, test_tokens, progress=False)
        parts[length] = (part, describe_extension(ext, config.train_len, length))
    merged: dict[str, Any] = {"ppl_by_protocol": {p: {} for p in config.protocols}}
    for key in ("ppl", "bits_per_byte", "tokens_scored", "errors", "position_nll"):
        merged[key] = {}
    for length, (part, _scaling) in parts.items():
        for key in ("ppl", "bits_per_byte", "tokens_scored", "errors"):
            merged[key].update(part[key])
        for p in config.protocols:
            merged["ppl_by_protocol"][p].update(part["ppl_by_protocol"][p])
        if length == max(parts):
            merged["position_nll"] = part["position_nll"]
    summary = {
        "method": f"rope+{ext}",
        "params": {"at_longest_length": parts[max(parts)][1]},
        "seed": seed,
        "extends": "rope",
        **merged,
        "eval_seconds": round(sum(p["eval_seconds"] for p, _ in parts.values()), 2),
        "train_seconds": 0.0,
        "tokens_per_second": 0,
        "num_params": model.num_params(),
    }
    _say(summary, progress)
    return summary


def _say(summary: dict[str, Any], progress: bool) -> None:
    if progress:
        shown = ", ".join(
            f"{k}: {v:.3f}" if v is not None else f"{k}: n/a" for k, v in summary["ppl"].items()
        )
        print(f"{summary['method']} (seed {summary['seed']}): ppl {shown}", file=sys.stderr)


__all__ = ["CLASSIC_METHODS", "PRESETS", "BenchConfig", "run_bench"]
