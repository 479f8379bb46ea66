"""Whole-model inference forward per encoding vs NoPE: time (interleaved, one process) and peak
memory (fresh subprocess each), the issue-16 rows.

    python benchmarks/gpt_forward.py --n 8192 --methods nope alibi t5 kerple_log

GPT with 1 layer, d_model 512, 8 heads (head dim 64), batch 1, eval. Learned tables are given
random values (T5 weights ~ N(0, 1); T5 initializes them to zero, which would be a bias-free
— and linear — table, not what a trained model computes). `--cpu-time` as in train_step.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from extrapos.kernels import dispatch
from extrapos.models.gpt import GPT, GPTConfig


def build(method: str, n_layer: int) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(n_layer=n_layer, n_head=8, d_model=512, encoding=method)
    model = GPT(config).eval()
    if method == "t5":
        with torch.no_grad():
            model.encoding.weight.normal_()
    return model


def peak_mib(method: str, n: int, n_layer: int) -> float | None:
    from extrapos.probes.cost import _reset_peak, _rss_kib

    model = build(method, n_layer)
    idx = torch.randint(0, 256, (1, n))
    with torch.inference_mode():
        model(idx)
        if not _reset_peak():
            return None
        before = _rss_kib("VmRSS")
        model(idx)
        return (_rss_kib("VmHWM") - before) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--n-layer", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=["nope", "alibi", "t5", "kerple_log"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cpu-time", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps({"peak_mib": peak_mib(args.one, args.n, args.n_layer)}))
        return
    clock = time.process_time if args.cpu_time else time.perf_counter
    which = "process CPU time" if args.cpu_time else "wall time"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {which}\n")
    models = {m: build(m, args.n_layer) for m in args.methods}
    idx = torch.randint(0, 256, (1, args.n))
    times: dict[str, list[float]] = {m: [] for m in models}
    paths = {}
    with torch.inference_mode():
        for m, model in models.items():
            dispatch.paths_taken(reset=True)
            model(idx)
            paths[m] = "+".join(dispatch.paths_taken(reset=True)) or "-"
        for _ in range(args.repeats):
            for m, model in models.items():
                t0 = clock()
                model(idx)
                times[m].append(clock() - t0)
    peaks = {}
    for m in models:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            m,
            "--n",
            str(args.n),
            "--n-layer",
            str(args.n_layer),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        peaks[m] = (
            json.loads(proc.stdout.strip().splitlines()[-1])["peak_mib"]
            if proc.returncode == 0
            else None
        )
    base_t = statistics.median(times["nope"]) if "nope" in times else None
    base_m = peaks.get("nope")
    print("| n | method | attention path | time (s) | × NoPE | peak extra MiB | × NoPE |")
    print("|---|---|---|---|---|---|---|")
    for m in models:
        sec = statistics.median(times[m])
        tr = f"{sec / base_t:.2f}" if base_t else "—"
        pk = peaks[m]
        mr = f"{pk / base_m:.2f}" if pk and base_m else "—"
        pks = "—" if pk is None else f"{pk:.0f}"
        print(f"| {args.n} | {m} | {paths[m]} | {sec:.3f} | {tr} | {pks} | {mr} |", flush=True)


if __name__ == "__main__":
    main()
