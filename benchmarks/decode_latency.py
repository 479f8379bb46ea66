"""Decoding latency per token vs context length, with the KV cache.

    python benchmarks/decode_latency.py --contexts 256 1024 4096 --methods nope rope alibi t5

The bench's model (4 layers, d 128, 4 heads). For each method and context c: prefill c tokens
into a `KVCache`, then time `--tokens` single-token steps (median), the methods stepped
round-robin in the same run; the table gives the ratio to NoPE at the same context. `--cpu-time` uses the
process CPU clock (single-threaded, on a shared machine: see benchmarks/train_step.py).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from extrapos.models.gpt import GPT, GPTConfig, KVCache

clock = time.perf_counter


def per_token_ms(models: dict[str, GPT], context: int, tokens: int) -> dict[str, float]:
    """Median ms per decoded token of each model at `context`, the models stepped round-robin
    (one token each in turn) so that drift in machine speed affects all alike."""
    idx = torch.randint(0, 256, (1, context + tokens))
    caches = {name: KVCache(model.config.n_layer) for name, model in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for name, model in models.items():
            model(idx[:, :context], cache=caches[name])
        for t in range(context, context + tokens):
            for name, model in models.items():
                t0 = clock()
                model(idx[:, t : t + 1], cache=caches[name])
                times[name].append(clock() - t0)
    return {name: statistics.median(ts) * 1e3 for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--contexts", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--methods", nargs="+", default=["nope", "rope", "alibi", "t5"])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--cpu-time", action="store_true", help="process CPU time, not wall")
    args = parser.parse_args()
    global clock
    clock = time.process_time if args.cpu_time else time.perf_counter
    which = "process CPU time" if args.cpu_time else "wall time"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {which}\n")
    print("| context | method | ms / token | × NoPE |")
    print("|---|---|---|---|")
    for context in args.contexts:
        models = {}
        for method in args.methods:
            torch.manual_seed(0)
            params = {"max_len": context + args.tokens} if method == "learned" else {}
            models[method] = GPT(GPTConfig(encoding=method, encoding_params=params)).eval()
        results = per_token_ms(models, context, args.tokens)
        base = results.get("nope")
        for method, ms in results.items():
            ratio = f"{ms / base:.2f}" if base else "—"
            print(f"| {context} | {method} | {ms:.2f} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
