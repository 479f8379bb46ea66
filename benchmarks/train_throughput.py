"""Training throughput of the real loop (`extrapos.training.lm.train`): fp32 vs bf16 autocast, eager vs
torch.compile.

    python benchmarks/train_throughput.py                      # the bench's model, 2 rounds
    python benchmarks/train_throughput.py --encodings rope alibi --steps 40 --rounds 3

Model and data are the bench's (4 layers, d_model 128, 4 heads, byte tokenizer, built-in corpus),
sequence length 128, batch 16 (2,048 tokens per step). Each configuration trains `--steps` steps
from the same seed through `train()` — sampling, forward, backward, clipping, AdamW, logging, no
checkpoints and no validation — and the first `--warmup` steps (compilation, allocator warm-up)
are dropped; the median of the remaining step times gives tokens/s. Configurations run
round-robin `--rounds` times so that drift in machine speed affects all alike; the table shows the
median over rounds. Unlike benchmarks/train_step.py (which times a bare step per encoding
relative to NoPE), this measures what `extrapos train` achieves per precision and compile mode.
Run it on a quiet machine; it prints a Markdown table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics

import torch

from extrapos.training.config import TrainConfig
from extrapos.data import build_tokenizer, load_corpus
from extrapos.models.gpt import GPTConfig
from extrapos.training.lm import train


def measure(
    encoding: str, precision: str, compile: bool, steps: int, warmup: int, args: argparse.Namespace
) -> float:
    """Median seconds per training step after `warmup` steps."""
    params = {"max_len": args.seq_len} if encoding == "learned" else {}
    model_config = GPTConfig(
        n_layer=args.n_layer,
        n_head=args.n_head,
        d_model=args.d_model,
        encoding=encoding,
        encoding_params=params,
    )
    train_config = TrainConfig(
        train_len=args.seq_len,
        batch_size=args.batch_size,
        steps=steps,
        precision=precision,
        compile=compile,
        device=args.device,
    )
    result = train(model_config, train_config, args.corpus, args.tokenizer, progress=False)
    return statistics.median(result.step_seconds[warmup:])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--encodings", nargs="+", default=["rope", "alibi"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument(
        "--compile", nargs="+", default=["off", "on"], choices=["off", "on"], help="modes to run"
    )
    parser.add_argument("--steps", type=int, default=30, help="steps per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="first steps not timed")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    if args.steps <= args.warmup:
        parser.error("--steps must exceed --warmup")
    args.corpus = load_corpus("builtin")
    args.tokenizer = build_tokenizer("byte")
    args.corpus.token_array("train", args.tokenizer)  # tokenize (or read the cache) once

    configs = [
        (e, p, c == "on") for e in args.encodings for p in args.precisions for c in args.compile
    ]
    times: dict[tuple[str, str, bool], list[float]] = {c: [] for c in configs}
    for _ in range(args.rounds):
        for config in configs:
            times[config].append(measure(*config, args.steps, args.warmup, args))

    tokens = args.seq_len * args.batch_size
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
        f"device {args.device}; model {args.n_layer}x{args.d_model}, {args.n_head} heads; "
        f"seq {args.seq_len} x batch {args.batch_size}; median of {args.rounds} rounds x "
        f"{args.steps - args.warmup} timed steps\n"
    )
    print("| encoding | precision | compile | median step (ms) | tokens/s | × fp32 eager |")
    print("|---|---|---|---|---|---|")
    for encoding, precision, compile in configs:
        median = statistics.median(times[(encoding, precision, compile)])
        base_key = (encoding, "fp32", False)
        base = statistics.median(times[base_key]) if base_key in times else None
        speedup = f"{base / median:.2f}" if base else "—"
        print(
            f"| {encoding} | {precision} | {'on' if compile else 'off'} | {median * 1e3:.1f} | "
            f"{tokens / median:,.0f} | {speedup} |"
        )


if __name__ == "__main__":
    main()
