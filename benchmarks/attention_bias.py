"""Distance-bias attention: time and peak memory against bias-free SDPA and a dense mask.

    python benchmarks/attention_bias.py --lengths 1024 4096 8192 16384 --table alibi
    python benchmarks/attention_bias.py --lengths 4096 8192 --table random

Causal attention forward, B=1, H=8, head dim 64, fp32. For each n, the paths:

- `sdpa`: bias-free `scaled_dot_product_attention(is_causal=True)` — the floor;
- `dense-mask`: the bias materialized as an (H, n, n) float mask passed to SDPA (what
  x-transformers and HF do for ALiBi); built once, outside the timed calls, which favours it;
  skipped above --dense-max (8 GiB at 16k);
- `chunked`: extrapos's query-chunked path (each chunk's bias block a strided view);
- `flex`: extrapos's FlexAttention path (table read in `score_mod`; compiled once beforehand);
- `linear`: the ALiBi fold into q and k (`extrapos.kernels.linear_bias`; --table alibi only);
- `auto`: `attention()` with the default dispatch, and the path it took.

Times: all paths of one n run in this one process, interleaved (round-robin) --repeats times,
median; ratios are to `sdpa` of the same round. `--cpu-time` uses the process CPU clock
(meaningful single-threaded on a shared machine). Peak memory: each (path, n) once more in a
fresh subprocess, the rise of its resident high-water mark (VmHWM, reset through
/proc/self/clear_refs after the inputs exist and the path is warm). Prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

PATHS = ("sdpa", "dense-mask", "chunked", "flex", "linear", "auto")


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def problem(n: int, table_kind: str):  # noqa: ANN201
    import torch

    from extrapos.encodings import build_encoding

    torch.manual_seed(0)
    h, d = 8, 64
    q, k, v = (torch.randn(1, h, n, d) for _ in range(3))
    if table_kind == "alibi":
        table = build_encoding("alibi", num_heads=h).distance_bias(n)
    else:  # a learned-looking table (T5/KERPLE-like values, every distance its own)
        table = -torch.rand(h, n).cumsum(-1) / 64
    return q, k, v, table, torch.arange(n)


def calls(n: int, table_kind: str, paths: list[str]) -> dict:  # noqa: ANN201
    import torch.nn.functional as F

    from extrapos.kernels.attention import attention, chunked_bias_attention, flex_bias_attention
    from extrapos.kernels.blocks import bias_block
    from extrapos.kernels.linear_bias import linear_bias_attention, linear_slopes

    q, k, v, table, pos = problem(n, table_kind)
    out = {}
    for path in paths:
        if path == "sdpa":
            out[path] = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif path == "dense-mask":
            mask = bias_block(table, pos, pos, pos, table.dtype)[None]
            out[path] = lambda mask=mask: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        elif path == "chunked":
            out[path] = lambda: chunked_bias_attention(q, k, v, table, pos, pos)
        elif path == "flex":
            out[path] = lambda: flex_bias_attention(q, k, v, table, pos, pos)
        elif path == "linear":
            slopes = linear_slopes(table)
            if slopes is not None:
                out[path] = lambda s=slopes: linear_bias_attention(q, k, v, s, pos, pos)
        elif path == "auto":
            out[path] = lambda: attention(q, k, v, bias_table=table)
    return out


def memory(path: str, n: int, table_kind: str) -> float:
    """Peak resident-memory rise (MiB) of one call of `path`, after a warm call."""
    import torch

    with torch.inference_mode():
        call = calls(n, table_kind, [path])[path]
        call()
        Path("/proc/self/clear_refs").write_text("5")
        before = _rss_kib("VmRSS")
        call()
        return max(_rss_kib("VmHWM") - before, 0) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    parser.add_argument("--table", choices=("alibi", "random"), default="alibi")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dense-max", type=int, default=8192, help="skip dense-mask above n")
    parser.add_argument("--cpu-time", action="store_true", help="process CPU time, not wall")
    parser.add_argument("--no-memory", action="store_true", help="times only")
    parser.add_argument("--one", nargs=2, metavar=("PATH", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps({"peak_mib": memory(args.one[0], int(args.one[1]), args.table)}))
        return
    import torch

    from extrapos.kernels import dispatch

    clock = time.process_time if args.cpu_time else time.perf_counter
    which = "process CPU time" if args.cpu_time else "wall time"
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {which}, table {args.table}\n"
    )
    print("| n | path | time (s) | × sdpa | peak extra memory (MiB) | × sdpa |")
    print("|---|---|---|---|---|---|")
    for n in args.lengths:
        paths = [p for p in args.paths if not (p == "dense-mask" and n > args.dense_max)]
        fns = calls(n, args.table, paths)
        times: dict[str, list[float]] = {p: [] for p in fns}
        taken = {}
        with torch.inference_mode():
            for path, fn in fns.items():  # warm (compiles flex; calibrates `auto` once)
                dispatch.paths_taken(reset=True)
                fn()
                taken[path] = "+".join(dispatch.paths_taken(reset=True)) or path
            for _ in range(args.repeats):
                for path, fn in fns.items():
                    t0 = clock()
                    fn()
                    times[path].append(clock() - t0)
        peaks = {}
        for path in fns if not args.no_memory else ():
            cmd = [sys.executable, __file__, "--one", path, str(n), "--table", args.table]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            ok = proc.returncode == 0
            peaks[path] = (
                json.loads(proc.stdout.strip().splitlines()[-1])["peak_mib"] if ok else None
            )
        base = statistics.median(times["sdpa"]) if "sdpa" in times else None
        for path in fns:
            sec = statistics.median(times[path])
            label = f"auto → {taken[path]}" if path == "auto" else path
            ratio = f"{sec / base:.2f}" if base else "—"
            peak = peaks.get(path)
            mem = "—" if peak is None else f"{peak:.0f}"
            m_ratio = (
                f"{peak / peaks['sdpa']:.2f}" if peak is not None and peaks.get("sdpa") else "—"
            )
            print(f"| {n} | {label} | {sec:.3f} | {ratio} | {mem} | {m_ratio} |", flush=True)


if __name__ == "__main__":
    main()
