"""Distance-bias attention: time and peak memory against bias-free SDPA and a dense mask.

    python benchmarks/attention_bias.py --lengths 1024 4096 16384

Causal attention forward, B=1, H=8, head dim 64, fp32, torch's default threads. For each n:

- `sdpa`: bias-free `scaled_dot_product_attention(is_causal=True)` — the floor;
- `dense-mask`: the bias materialized as an (H, n, n) float mask passed to SDPA (what
  x-transformers and HF do for ALiBi); the mask is built once, outside the timed calls, which
  favours this baseline;
- `chunked`: extrapos's query-chunked path (each chunk gathers its own bias block);
- `flex`: extrapos's FlexAttention path (table read in `score_mod`; compiled once beforehand).

Each (path, n) runs in a fresh subprocess; its peak memory is the rise of the process's resident
high-water mark (VmHWM, reset through /proc/self/clear_refs after the inputs exist and the
path is warm) during the timed calls. Times are medians of --repeats calls. Prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

PATHS = ("sdpa", "dense-mask", "chunked", "flex")


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def measure(path: str, n: int, repeats: int) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    from extrapos.kernels.attention import bias_block, chunked_bias_attention, flex_bias_attention
    from extrapos.encodings import build_encoding

    torch.manual_seed(0)
    h, d = 8, 64
    q, k, v = (torch.randn(1, h, n, d) for _ in range(3))
    table = build_encoding("alibi", num_heads=h).distance_bias(n)
    pos = torch.arange(n)

    mask = bias_block(table, pos, pos, pos, torch.float32)[None] if path == "dense-mask" else None

    def call() -> torch.Tensor:
        if path == "sdpa":
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if path == "dense-mask":  # (1, h, n, n), built above
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        if path == "chunked":
            return chunked_bias_attention(q, k, v, table, pos, pos)
        return flex_bias_attention(q, k, v, table, pos, pos)

    call()  # warm (and compile flex)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark
    before = _rss_kib("VmRSS") - (mask.numel() * 4 // 1024 if mask is not None else 0)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    peak = _rss_kib("VmHWM") - before
    return {"seconds": statistics.median(times), "peak_mib": max(peak, 0) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", nargs=2, metavar=("PATH", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.repeats)))
        return
    print("| n | path | time (s) | × sdpa | peak extra memory (MiB) | × sdpa |")
    print("|---|---|---|---|---|---|")
    for n in args.lengths:
        rows = {}
        for path in args.paths:
            cmd = [sys.executable, __file__, "--one", path, str(n), "--repeats", str(args.repeats)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:  # e.g. killed for memory: the dense mask at 16k
                reason = "killed (out of memory)" if proc.returncode < 0 else "failed"
                print(f"| {n} | {path} | {reason} | — | — | — |", flush=True)
                continue
            rows[path] = json.loads(proc.stdout.strip().splitlines()[-1])
        base = rows.get("sdpa")
        for path, r in rows.items():
            t_ratio = f"{r['seconds'] / base['seconds']:.2f}" if base else "—"
            m_ratio = (
                f"{r['peak_mib'] / base['peak_mib']:.2f}" if base and base["peak_mib"] else "—"
            )
            print(
                f"| {n} | {path} | {r['seconds']:.3f} | {t_ratio} | {r['peak_mib']:.0f} | {m_ratio} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
