"""Training-step time of each encoding relative to NoPE, measured in one run.

    python benchmarks/train_step.py --seq-len 128 512 --repeats 20

Same model for every encoding (the bench's: 4 layers, d_model 128, 4 heads), batch of
--tokens tokens per step, forward + backward + AdamW step. Encodings are timed interleaved
(round-robin) so drift in machine speed affects all alike; the median step time is reported with
its ratio to NoPE's. Prints a Markdown table.

`--cpu-time` times with the process's CPU clock instead of the wall clock: on a machine shared
with other jobs, single-threaded (OMP_NUM_THREADS=1) CPU time is not inflated by waiting for a
core, so ratios stay meaningful; wall time there is only an upper bound.
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
    parser.add_argument("--cpu-time", action="store_true", help="process CPU time, not wall")
    args = parser.parse_args()
    clock = time.process_time if args.cpu_time else time.perf_counter
    which = "process CPU time" if args.cpu_time else "wall time"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {which}\n")
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
                t0 = clock()
                step()
                times[method].append(clock() - t0)
        base = statistics.median(times["nope"]) if "nope" in times else None
        for method in args.methods:
            median = statistics.median(times[method])
            ratio = f"{median / base:.2f}" if base else "—"
            print(
                f"| {seq_len} | {method} | {median * 1e3:.1f} | {batch * seq_len / median:,.0f} | {ratio} |"
            )


if __name__ == "__main__":
    main()
