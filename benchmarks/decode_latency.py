"""Decoding latency per token vs context length, with the KV cache.

    python benchmarks/decode_latency.py --contexts 256 1024 4096 --methods nope rope alibi t5

The bench's model (4 layers, d 128, 4 heads). For each method and context c: prefill c tokens
into a `KVCache`, then time `--tokens` single-token steps (median); all methods are measured in
the same run, and the table gives the ratio to NoPE at the same context.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from extrapos.models.gpt import GPT, GPTConfig, KVCache


def per_token_ms(model: GPT, context: int, tokens: int) -> float:
    idx = torch.randint(0, 256, (1, context + tokens))
    cache = KVCache(model.config.n_layer)
    times = []
    with torch.inference_mode():
        model(idx[:, :context], cache=cache)
        for t in range(context, context + tokens):
            t0 = time.perf_counter()
            model(idx[:, t : t + 1], cache=cache)
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--contexts", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--methods", nargs="+", default=["nope", "rope", "alibi", "t5"])
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| context | method | ms / token | × NoPE |")
    print("|---|---|---|---|")
    for context in args.contexts:
        results = {}
        for method in args.methods:
            torch.manual_seed(0)
            params = {"max_len": context + args.tokens} if method == "learned" else {}
            model = GPT(GPTConfig(encoding=method, encoding_params=params)).eval()
            results[method] = per_token_ms(model, context, args.tokens)
        base = results.get("nope")
        for method, ms in results.items():
            ratio = f"{ms / base:.2f}" if base else "—"
            print(f"| {context} | {method} | {ms:.2f} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
