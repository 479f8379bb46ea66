"""Time and memory of each encoding vs sequence length, measured, with fitted exponents.

For every method and length n, a fresh Python process builds a GPT of the bench's shape and runs
forward passes (inference, no gradients) on n random tokens: the rise of its peak resident memory
(Linux VmHWM, reset through /proc/self/clear_refs after one warm-up pass) over `repeats` passes
is the memory, and their median the time. A fresh process and
glibc's fixed mmap threshold (MALLOC_MMAP_THRESHOLD_) make every large allocation a new mapping,
so memory freed by an earlier measurement cannot hide a later one's peak. The complexity of a method is the
least-squares slope of log(time) and log(memory) against log(n) — ≈ 2 for attention that builds
n × n scores, ≈ 1 for memory that stays per-distance.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from extrapos.core.errors import UserError
from extrapos.models.gpt import GPT, GPTConfig

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _rss_kib(field: str) -> int | None:
    if not _STATUS.exists():
        return None
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def _reset_peak() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def loglog_slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log y against log x (None with fewer than two positive points)."""
    points = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if x > 0 and y > 0]
    if len(points) < 2:
        return None
    mx = sum(p[0] for p in points) / len(points)
    my = sum(p[1] for p in points) / len(points)
    sxx = sum((p[0] - mx) ** 2 for p in points)
    return sum((p[0] - mx) * (p[1] - my) for p in points) / sxx if sxx else None


def measure(model: GPT, n: int, repeats: int = 3) -> dict[str, Any]:
    """Median time (s) of `repeats` forwards at n after one warm-up forward (caches, compiled
    kernels), and the rise of peak resident memory (MiB; None where not measurable) during them.
    Meant for a fresh process with a fixed mmap threshold (see module docstring)."""
    model.encoding.check_positions(n - 1)
    idx = torch.randint(0, model.config.vocab_size, (1, n))
    with torch.inference_mode():
        model(idx)  # warm-up: its compile and cache memory is not the method's working set
        can_reset = _reset_peak()
        before = _rss_kib("VmRSS")
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(idx)
            times.append(time.perf_counter() - t0)
        peak = _rss_kib("VmHWM")
    memory = (peak - before) / 1024 if can_reset and peak is not None and before else None
    return {"n": n, "seconds": statistics.median(times), "peak_mib": memory}


def _build(method: str, n_max: int, n_layer: int, n_head: int, d_model: int) -> GPT:
    params = {"max_len": n_max} if method == "learned" else {}
    torch.manual_seed(0)
    config = GPTConfig(
        n_layer=n_layer, n_head=n_head, d_model=d_model, encoding=method, encoding_params=params
    )
    return GPT(config).eval()


def measure_in_subprocess(
    method: str, n: int, repeats: int, n_layer: int, n_head: int, d_model: int
) -> dict[str, Any]:
    """`measure` in a fresh interpreter (see module docstring)."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    args = [method, n, repeats, n_layer, n_head, d_model]
    cmd = [sys.executable, "-m", "extrapos.probes.cost", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        reason = "killed (out of memory?)" if proc.returncode < 0 else proc.stderr.strip()[-300:]
        raise UserError(f"profiling {method} at n={n} failed: {reason}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def profile(
    methods: list[str],
    lengths: list[int],
    repeats: int = 3,
    n_layer: int = 4,
    n_head: int = 4,
    d_model: int = 128,
    progress: bool = True,
) -> dict[str, Any]:
    """Records per (method, n) and the fitted exponents per method."""
    if not methods or not lengths or min(lengths) < 1:
        raise UserError("profile needs at least one method and positive --lengths")
    records, fits = [], {}
    for method in methods:
        rows = [
            {
                "method": method,
                **measure_in_subprocess(method, n, repeats, n_layer, n_head, d_model),
            }
            for n in sorted(lengths)
        ]
        records += rows
        fits[method] = {
            "time_exponent": loglog_slope([r["n"] for r in rows], [r["seconds"] for r in rows]),
            "memory_exponent": loglog_slope(
                [r["n"] for r in rows], [r["peak_mib"] or 0.0 for r in rows]
            ),
        }
        if progress:
            shown = ", ".join(f"{r['n']}: {r['seconds'] * 1e3:.0f} ms" for r in rows)
            print(f"{method}: {shown}", flush=True)
    return {
        "model": {"n_layer": n_layer, "n_head": n_head, "d_model": d_model},
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "records": records,
        "fits": fits,
    }


def markdown(result: dict[str, Any]) -> str:
    """A table: time (ms) and peak memory (MiB) per length, and the fitted exponents."""
    lengths = sorted({r["n"] for r in result["records"]})
    header = ["method", *[f"n={n}" for n in lengths], "time ~ n^", "memory ~ n^"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, fit in result["fits"].items():
        rows = {r["n"]: r for r in result["records"] if r["method"] == method}
        cells = []
        for n in lengths:
            r = rows[n]
            mem = "?" if r["peak_mib"] is None else f"{r['peak_mib']:.0f} MiB"
            cells.append(f"{r['seconds'] * 1e3:.0f} ms / {mem}")
        slopes = [f"{v:.2f}" if v is not None else "n/a" for v in fit.values()]
        lines.append("| " + " | ".join([method, *cells, *slopes]) + " |")
    return "\n".join(lines)


def plot(result: dict[str, Any]) -> bytes:
    """PNG: time and memory vs n, log-log, one line per method."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=110)
    for method in result["fits"]:
        rows = sorted((r for r in result["records"] if r["method"] == method), key=lambda r: r["n"])
        ns = [r["n"] for r in rows]
        ax_t.plot(ns, [r["seconds"] for r in rows], marker="o", label=method)
        ax_m.plot(ns, [max(r["peak_mib"] or 0, 1e-3) for r in rows], marker="o", label=method)
    for ax, label in ((ax_t, "forward time (s)"), (ax_m, "peak extra memory (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length n")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    ax_m.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


if __name__ == "__main__":  # one measurement, for `measure_in_subprocess`
    import json
    import sys

    method, n, repeats, n_layer, n_head, d_model = sys.argv[1:7]
    model = _build(method, int(n), int(n_layer), int(n_head), int(d_model))
    print(json.dumps(measure(model, int(n), int(repeats))))
