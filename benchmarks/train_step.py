"""Training-step time of each encoding relative to NoPE, measured in one run.

    python benchmarks/train_step.py --seq-len 128 512 --repeats 20

Same model for every encoding (the bench's: 4 layers, d_model 128, 4 heads), batch of
--tokens tokens per step, forward + backward + AdamW step. Encodings are timed interleaved
(round-robin) so drift in machine speed affects all alike; the median step time is reported with
its ratio to NoPE's. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from extrapos.encodings import list_encodings
from extrapos.models.gpt import GPT, GPTConfig
from extrapos.training.lm import TrainConfig, make_optimizer


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seq-len", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--tokens", type=int, default=2048, help="tokens per step")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--methods", nargs="+", default=list_encodings())
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| seq len | method | median step (ms) | tokens/s | × NoPE |")
    print("|---|---|---|---|---|")
    for seq_len in args.seq_len:
        batch = max(1, args.tokens // seq_len)
        steps = {}
        for method in args.methods:
            torch.manual_seed(0)
            params = {"max_len": seq_len} if method == "learned" else {}
            model = GPT(GPTConfig(encoding=method, encoding_params=params))
            optimizer = make_optimizer(model, TrainConfig())
            x = torch.randint(0, 256, (batch, seq_len + 1))

            def step(model=model, optimizer=optimizer, x=x) -> None:
                loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

            for _ in range(3):
                step()
            steps[method] = step
        times: dict[str, list[float]] = {m: [] for m in args.methods}
        for _ in range(args.repeats):
            for method, step in steps.items():
                t0 = time.perf_counter()
                step()
                times[method].append(time.perf_counter() - t0)
        base = statistics.median(times["nope"]) if "nope" in times else None
        for method in args.methods:
            median = statistics.median(times[method])
            ratio = f"{median / base:.2f}" if base else "—"
            print(
                f"| {seq_len} | {method} | {median * 1e3:.1f} | {batch * seq_len / median:,.0f} | {ratio} |"
            )


if __name__ == "__main__":
    main()
