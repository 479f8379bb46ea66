"""RoPE application: extrapos's rotation vs HF-style `rotate_half` and a plain copy.

    python benchmarks/rope.py

q of shape (8, 8, 2048, 64) fp32 (B, H, n, d), cos/sin (n, d/2) precomputed; medians of 20
calls, all timed in one run. `copy` (q.clone()) is the bandwidth floor of an out-of-place op.
Forward only, and forward + backward (gradient w.r.t. q).
"""

from __future__ import annotations

import statistics
import time

import torch

from extrapos.encodings.rotary import rotate_half_split


def hf_rotate_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """transformers' apply_rotary_pos_emb for one tensor: x·cos + rotate_half(x)·sin."""
    cos, sin = torch.cat((cos, cos), -1), torch.cat((sin, sin), -1)
    x1, x2 = x.chunk(2, -1)
    return x * cos + torch.cat((-x2, x1), -1) * sin


def median_ms(fn, repeats: int = 20) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    torch.manual_seed(0)
    q = torch.randn(8, 8, 2048, 64)
    angles = torch.arange(2048)[:, None] * 10000 ** (-torch.arange(32) / 32)[None]
    cos, sin = angles.cos(), angles.sin()
    torch.testing.assert_close(rotate_half_split(q, cos, sin), hf_rotate_half(q, cos, sin))
    qg = q.clone().requires_grad_()
    grad = torch.randn_like(q)
    rows = {
        "extrapos": (lambda: rotate_half_split(q, cos, sin),
                     lambda: rotate_half_split(qg, cos, sin).backward(grad)),
        "hf rotate_half": (lambda: hf_rotate_half(q, cos, sin),
                           lambda: hf_rotate_half(qg, cos, sin).backward(grad)),
        "copy (q.clone())": (lambda: q.clone(), lambda: qg.clone().backward(grad)),
    }  # fmt: skip
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, q {tuple(q.shape)} fp32\n"
    )
    print("| op | forward (ms) | fwd+bwd (ms) |")
    print("|---|---|---|")
    results = {name: (median_ms(f), median_ms(fb)) for name, (f, fb) in rows.items()}
    for name, (f, fb) in results.items():
        print(f"| {name} | {f:.1f} | {fb:.1f} |")
    ours, hf = results["extrapos"], results["hf rotate_half"]
    print(
        f"\nrotate_half / extrapos: forward {hf[0] / ours[0]:.2f}x, fwd+bwd {hf[1] / ours[1]:.2f}x"
    )
    print(f"extrapos / copy: forward {ours[0] / results['copy (q.clone())'][0]:.2f}x")


if __name__ == "__main__":
    main()
