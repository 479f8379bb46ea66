"""Time and memory of each encoding vs sequence length, measured, with fitted exponents.

For every method and length n, a fresh Python process builds a GPT of the bench's shape and runs
forward passes (inference, no gradients) on n random tokens — or, in training mode, training
steps (forward, cross-entropy, backward; gradient buffers kept from the warm-up so the memory is
the step's activations): the rise of its peak resident memory
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


def measure(model: GPT, n: int, repeats: int = 3, train: bool = False) -> dict[str, Any]:
    """Median time (s) of `repeats` forwards (`train`: training steps, forward + backward) at n
    after one warm-up (caches, compiled kernels, gradient buffers), and the rise of peak resident
    memory (MiB; None where not measurable) during them. Meant for a fresh process with a fixed
    mmap threshold (see module docstring)."""
    model.encoding.check_positions(n - 1)
    idx = torch.randint(0, model.config.vocab_size, (1, n + 1))
    from extrapos.kernels import dispatch

    def step() -> None:
        if not train:
            model(idx[:, :n])
            return
        logits = model(idx[:, :n])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx[0, 1:])
        loss.backward()
        model.zero_grad(set_to_none=False)  # keep the buffers: not part of the step's peak

    model.train(train)
    with torch.inference_mode(not train):
        step()  # warm-up: its compile and cache memory is not the method's working set
        dispatch.paths_taken(reset=True)
        can_reset = _reset_peak()
        before = _rss_kib("VmRSS")
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        peak = _rss_kib("VmHWM")
    memory = (peak - before) / 1024 if can_reset and peak is not None and before else None
    paths = dispatch.paths_taken(reset=True)
    return {
        "n": n,
        "mode": "train" if train else "eval",
        "seconds": statistics.median(times),
        "peak_mib": memory,
        # the biased attention paths the timed passes took ("-" for bias-free methods)
        "attention": "+".join(sorted(paths)) or "-",
    }


def _build(method: str, n_max: int, n_layer: int, n_head: int, d_model: int) -> GPT:
    params = {"max_len": n_max} if method == "learned" else {}
    torch.manual_seed(0)
    config = GPTConfig(
        n_layer=n_layer, n_head=n_head, d_model=d_model, encoding=method, encoding_params=params
    )
    return GPT(config).eval()


def child_env(threads: int) -> dict[str, str]:
    """The environment for a worker process extrapos starts while it waits (the cost probe):
    `threads` intra-op threads (OMP_NUM_THREADS, MKL_NUM_THREADS) and OMP_WAIT_POLICY=PASSIVE,
    unless the user set them. OpenMP threads that spin-wait for work hold a core; with two
    processes on two cores that made training up to 10x slower in our measurements (issue 16).
    """
    import os

    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, str(max(1, threads)))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def measure_in_subprocess(
    method: str,
    n: int,
    repeats: int,
    n_layer: int,
    n_head: int,
    d_model: int,
    train: bool = False,
) -> dict[str, Any]:
    """`measure` in a fresh interpreter (see module docstring)."""
    import json
    import subprocess
    import sys

    env = child_env(torch.get_num_threads())
    env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    args = [method, n, repeats, n_layer, n_head, d_model, "train" if train else "eval"]
    cmd = [sys.executable, "-m", "extrapos.probes.cost", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        reason = "killed (out of memory?)" if proc.returncode < 0 else proc.stderr.strip()[-300:]
        mode = "training" if train else "inference"
        raise UserError(f"profiling {method} ({mode}) at n={n} failed: {reason}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fit(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    ns = [r["n"] for r in rows]
    return {
        "time_exponent": loglog_slope(ns, [r["seconds"] for r in rows]),
        "memory_exponent": loglog_slope(ns, [r["peak_mib"] or 0.0 for r in rows]),
    }


def profile(
    methods: list[str],
    lengths: list[int],
    repeats: int = 3,
    n_layer: int = 4,
    n_head: int = 4,
    d_model: int = 128,
    progress: bool = True,
    train_lengths: list[int] | None = None,
) -> dict[str, Any]:
    """Records per (method, mode, n) and the fitted exponents per method: `fits` for inference
    at `lengths`, `train_fits` for training steps at `train_lengths` (none when empty)."""
    train_lengths = list(train_lengths or [])
    if not methods or not lengths or min(lengths + train_lengths) < 1:
        raise UserError("profile needs at least one method and positive --lengths")
    records, fits, train_fits = [], {}, {}
    plan = [(False, sorted(lengths), fits), (True, sorted(train_lengths), train_fits)]
    for method in methods:
        for train, ns, fitted in plan:
            if not ns:
                continue
            rows = [
                {
                    "method": method,
                    **measure_in_subprocess(
                        method, n, repeats, n_layer, n_head, d_model, train=train
                    ),
                }
                for n in ns
            ]
            records += rows
            fitted[method] = _fit(rows)
            if progress:
                shown = ", ".join(f"{r['n']}: {r['seconds'] * 1e3:.0f} ms" for r in rows)
                print(f"{method} ({'train' if train else 'eval'}): {shown}", flush=True)
    from extrapos.kernels import dispatch

    return {
        "model": {"n_layer": n_layer, "n_head": n_head, "d_model": d_model},
        "dispatch": dispatch.describe(max(lengths)),
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "records": records,
        "fits": fits,
        "train_fits": train_fits,
    }


def _mode(record: dict[str, Any]) -> str:
    return record.get("mode", "eval")  # records from before training mode are inference


def _table(result: dict[str, Any], mode: str, fits: dict[str, Any]) -> list[str]:
    records = [r for r in result["records"] if _mode(r) == mode]
    lengths = sorted({r["n"] for r in records})
    header = [
        "method",
        *[f"n={n}" for n in lengths],
        "time ~ n^",
        "memory ~ n^",
        f"attention @ {lengths[-1]}",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, fit in fits.items():
        rows = {r["n"]: r for r in records if r["method"] == method}
        cells = []
        for n in lengths:
            r = rows[n]
            mem = "?" if r["peak_mib"] is None else f"{r['peak_mib']:.0f} MiB"
            cells.append(f"{r['seconds'] * 1e3:.0f} ms / {mem}")
        slopes = [
            f"{fit[k]:.2f}" if fit.get(k) is not None else "n/a"
            for k in ("time_exponent", "memory_exponent")
        ]
        path = rows[lengths[-1]].get("attention", "?")
        lines.append("| " + " | ".join([method, *cells, *slopes, path]) + " |")
    return lines


def markdown(result: dict[str, Any]) -> str:
    """Tables: time (ms) and peak memory (MiB) per length and the fitted exponents, for
    inference forwards and (when measured) training steps, then the attention dispatch."""
    lines = _table(result, "eval", result["fits"])
    if result.get("train_fits"):
        lines += ["", "Training step (forward + backward), batch 1:", ""]
        lines += _table(result, "train", result["train_fits"])
    if result.get("dispatch"):
        lines += ["", *(f"    {line.strip()}" for line in result["dispatch"])]
    return "\n".join(lines)


def plot(result: dict[str, Any]) -> bytes:
    """PNG: time and memory vs n, log-log, one line per method; a second row for training."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [("eval", "inference forward", result["fits"])]
    if result.get("train_fits"):
        modes.append(("train", "training step", result["train_fits"]))
    fig, axes = plt.subplots(len(modes), 2, figsize=(12, 4.5 * len(modes)), dpi=110, squeeze=False)
    for (mode, title, fits), (ax_t, ax_m) in zip(modes, axes, strict=True):
        for method in fits:
            rows = sorted(
                (r for r in result["records"] if r["method"] == method and _mode(r) == mode),
                key=lambda r: r["n"],
            )
            ns = [r["n"] for r in rows]
            ax_t.plot(ns, [r["seconds"] for r in rows], marker="o", label=method)
            ax_m.plot(ns, [max(r["peak_mib"] or 0, 1e-3) for r in rows], marker="o", label=method)
        for ax, label in ((ax_t, f"{title} time (s)"), (ax_m, "peak extra memory (MiB)")):
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
    train = len(sys.argv) > 7 and sys.argv[7] == "train"
    model = _build(method, int(n), int(n_layer), int(n_head), int(d_model))
    print(json.dumps(measure(model, int(n), int(repeats), train=train)))
