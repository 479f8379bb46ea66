"""The bench's language-model stage: train one (method, seed) and evaluate it at every length
under each protocol (`run_method`), and evaluate a trained `rope` model with an inference-time
extension, each length with its own factor (`run_extension`, the `rope+<name>` rows).
`extrapos.bench.run` decides which of these run and keeps their records.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

from extrapos.bench.config import BenchConfig
from extrapos.bench.loggers import LiveRun, Loggers
from extrapos.encodings import encoding_class
from extrapos.probes.extensions import describe_extension, rope_extended
from extrapos.probes.perplexity import evaluate_lengths
from extrapos.training.lm import train

__all__ = ["evaluate", "loss_curve", "run_extension", "run_method"]


def evaluate(
    model: Any,
    lengths: list[int],
    protocols: list[str],
    test_tokens: torch.Tensor,
    progress: bool,
    token_bytes: torch.Tensor | None = None,
    what: str = "",
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
            protocol=protocol,  # type: ignore[arg-type]
            progress=progress,
            token_bytes=token_bytes,
            desc=f"eval {what} ppl" if what else None,
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


def family_of(method: str) -> str:
    """The encoding's module under `extrapos.encodings` (the report's panel key)."""
    return encoding_class(method).__module__.rsplit(".", 1)[-1]


def run_method(
    config: BenchConfig,
    method: str,
    seed: int,
    corpus: Any,
    tokenizer: Any,
    test_tokens: torch.Tensor,
    out_dir: Path,
    progress: bool,
    save_runs: bool,
    loggers: Loggers | None = None,
) -> tuple[dict[str, Any], Any]:
    model_config = config.model_config(method, vocab_size=tokenizer.vocab_size)
    live = loggers.start_run(method, seed) if loggers is not None and loggers.active else None
    try:
        summary, model = _train_and_evaluate(
            config,
            method,
            seed,
            model_config,
            corpus,
            tokenizer,
            test_tokens,
            out_dir,
            progress,
            save_runs,
            live,
        )
    except BaseException:
        if live is not None:
            live.finish()
        raise
    if live is not None:
        live.finish(summary)
    return summary, model


def _train_and_evaluate(
    config: BenchConfig,
    method: str,
    seed: int,
    model_config: Any,
    corpus: Any,
    tokenizer: Any,
    test_tokens: torch.Tensor,
    out_dir: Path,
    progress: bool,
    save_runs: bool,
    live: LiveRun | None,
) -> tuple[dict[str, Any], Any]:
    result = train(
        model_config,
        config.train_config(seed),
        corpus,
        tokenizer,
        run_dir=out_dir / "runs" / f"{method}-seed{seed}" if save_runs else None,
        progress=progress,
        description=f"train {method} (seed {seed})",
        overwrite=True,  # a run here is retrained only when the bench's settings changed
        on_step=live.step if live is not None else None,
    )
    summary = {
        "method": method,
        "family": family_of(method),
        "params": model_config.encoding_params,
        "seed": seed,
        **evaluate(
            result.model,
            config.eval_lens or [],
            config.protocols,
            test_tokens,
            progress,
            tokenizer.token_bytes(),
            what=f"{method} (seed {seed})",
        ),
        "final_train_loss": sum(result.losses[-20:]) / len(result.losses[-20:]),
        "loss_curve": loss_curve(result.losses),
        "train_seconds": round(result.train_seconds, 2),
        "tokens_per_second": round(result.tokens_per_second),
        "num_params": result.model.num_params(),
    }
    _say(summary, progress)
    return summary, result.model


def loss_curve(losses: list[float], points: int = 100) -> list[list[float]]:
    """[step, mean loss] over at most `points` equal bins of the training steps (the step is
    each bin's last), for the report's training-loss plot."""
    if not losses:
        return []
    size = max(1, -(-len(losses) // points))
    return [
        [min(i + size, len(losses)), round(sum(chunk) / len(chunk), 5)]
        for i in range(0, len(losses), size)
        if (chunk := losses[i : i + size])
    ]


def run_extension(
    config: BenchConfig,
    ext: str,
    seed: int,
    model: Any,
    tokenizer: Any,
    test_tokens: torch.Tensor,
    progress: bool,
) -> dict[str, Any]:
    """Evaluate the trained rope model of this seed with scaling `ext`, each length with its
    own factor (eval_len / train_len)."""
    parts: dict[str, Any] = {}
    for length in config.eval_lens or []:
        with rope_extended(model, ext, config.train_len, length):
            part = evaluate(
                model, [length], config.protocols, test_tokens, False, tokenizer.token_bytes()
            )
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
