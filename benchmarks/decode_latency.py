"""Decoding latency per token vs context length, with the KV cache.

    python benchmarks/decode_latency.py --contexts 256 1024 4096 --methods nope rope alibi t5

The bench's model (4 layers, d 128, 4 heads). For each method and context c: prefill c tokens
into a `KVCache`, then time `--tokens` single-token steps (median). The methods take turns in
blocks of `--block` consecutive tokens (default 8), so that drift in machine speed affects all
alike while each is timed as one decoding model is used, its weights and cache warm: the first
step of each block, which pays for the switch from the other models, is not timed.
`--block 1` is strict round-robin with every step timed (each step then runs after the other
models' steps evicted its cache: per-token times ~2x a lone model's at 1k context, measured,
and methods that touch more memory per step look dearer). The table gives the ratio to NoPE
at the same context. `--cpu-time` uses the process CPU clock (single-threaded, on a shared
machine: see benchmarks/train_step.py).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from extrapos.models.gpt import GPT, GPTConfig, KVCache

clock = time.perf_counter


def per_token_ms(
    models: dict[str, GPT], context: int, tokens: int, block: int = 8
) -> dict[str, float]:
    """Median ms per decoded token of each model at `context`: the models take turns in blocks
    of `block` steps, the first step of a block untimed when block > 1 (see module docstring);
    `tokens` timed steps each."""
    timed_per_block = block - 1 if block > 1 else 1
    blocks = -(-tokens // timed_per_block)
    total = blocks * block
    idx = torch.randint(0, 256, (1, context + total))
    caches = {name: KVCache(model.config.n_layer) for name, model in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for name, model in models.items():
            model(idx[:, :context], cache=caches[name])
        for first in range(context, context + total, block):
            for name, model in models.items():
                for t in range(first, first + block):
                    t0 = clock()
                    model(idx[:, t : t + 1], cache=caches[name])
                    if block == 1 or t > first:
                        times[name].append(clock() - t0)
    return {name: statistics.median(ts[:tokens]) * 1e3 for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--contexts", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--methods", nargs="+", default=["nope", "rope", "alibi", "t5"])
    parser.add_argument("--tokens", type=int, default=32, help="timed steps per method")
    parser.add_argument(
        "--block", type=int, default=8, help="consecutive steps per turn (1: round-robin)"
    )
    parser.add_argument("--cpu-time", action="store_true", help="process CPU time, not wall")
    args = parser.parse_args()
    if args.block < 1:
        parser.error("--block must be >= 1")
    global clock
    clock = time.process_time if args.cpu_time else time.perf_counter
    which = "process CPU time" if args.cpu_time else "wall time"
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {which}, "
        f"blocks of {args.block} steps\n"
    )
    print("| context | method | ms / token | × NoPE |")
    print("|---|---|---|---|")
    for context in args.contexts:
        models = {}
        for method in args.methods:
            torch.manual_seed(0)
            params = (
                {"max_len": context + 2 * args.tokens + args.block} if method == "learned" else {}
            )
            models[method] = GPT(GPTConfig(encoding=method, encoding_params=params)).eval()
        results = per_token_ms(models, context, args.tokens, args.block)
        base = results.get("nope")
        for method, ms in results.items():
            ratio = f"{ms / base:.2f}" if base else "—"
            print(f"| {context} | {method} | {ms:.2f} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
