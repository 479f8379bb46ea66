"""Which attention path a biased call takes, decided by measurements taken where it runs.

`auto` used to send CPU inference from 4,096 keys to FlexAttention by a constant; on a machine of
the same kind, in another compile state, that was the slowest path (issue 16: 4.16× bias-free at
8k, while the chunked path was 1.61×). Now:

- `linear`: tables that are exactly -m_h·k (ALiBi; `linear_bias.linear_slopes`) fold the bias
  into q and k — bias-free SDPA by construction, with one or four extra head-dim columns
  (`linear_bias`). Used on CPU when the call has at least `LINEAR_MIN_QUERIES` queries (below
  that, decoding, copying the cache into the extended buffer costs more than the mask) and more
  than `CPU_KEY_TILE` keys (up to that, the fused kernel computes all pairs of its one key tile
  either way, so the mask costs nothing and the fold's extra column ~1.2×: measured at 512,
  fwd+bwd h 4 d 32: mask path in two query halves 0.85×, fold 1.24× bias-free `is_causal`;
  inference h 8 d 64: 0.88× vs 1.23×), except for inference at t >= `FLEX_CANDIDATE_LEN` where
  the calibration measured the mask path (`chunked`, ALiBi table) `MASK_MARGIN` faster than
  the fold (a tie goes to the fold).
- causal calls of `SPLIT_MIN` < s <= `CPU_KEY_TILE` queries on CPU (bias-free or not) run as two
  query halves (`split_rows`), because the fused kernel skips masked keys only by whole tiles.
- `flex` vs `chunked` for other tables in CPU inference: decided by `calibration()`, a timing of
  both on this machine (n = `CALIBRATION_LEN`, h 8, d 64, a random table, interleaved repeats,
  median; also chunked vs linear on an ALiBi table), run once the first time a call could use
  it (inference at t >= `FLEX_CANDIDATE_LEN`) and cached
  per process and in `$EXTRAPOS_CACHE/attention-dispatch.json` (default ~/.cache/extrapos),
  keyed by torch version, CPU model and thread count. FlexAttention then serves t >=
  `FLEX_CANDIDATE_LEN` only where it measured faster. Calibration costs one FlexAttention
  compile (~10 s cold) plus ~2 s of timing; `EXTRAPOS_ATTENTION_CALIBRATE=0` skips it (never flex
  on CPU) and `EXTRAPOS_CACHE=off` keeps the result in the process only.
- training on CPU: FlexAttention has no CPU backward (torch 2.13), so learned tables take the
  `chunked` path; on CUDA every bias uses flex (not calibrated: no GPU was measured here).

`describe()` returns the decision and its reason for printing (`extrapos profile`, the bench's
cost probe); `paths_taken()` counts the paths actual calls took in this process.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

#: torch's fused CPU attention kernel (2.13, `_scaled_dot_product_flash_attention_for_cpu`) walks
#: the keys in tiles of this many and skips only whole tiles above the diagonal: a causal call
#: of s <= 512 queries computes every one of its s² pairs and masks half of them.
CPU_KEY_TILE = 512
#: causal s == t calls on CPU with SPLIT_MIN < s <= CPU_KEY_TILE run as two query halves, the
#: first `is_causal` on its own keys, the second with a mask over the keys it sees: a quarter of
#: the pairs fewer. Measured fwd+bwd vs one `is_causal` call (b·s = 2048 tokens, h 4, d 32; 2
#: threads / 1 thread): s 384: 0.89 / 0.90, 448: 0.90, 512: 0.87 / 0.83; s 256-320 gained
#: under 5 % (0.96-0.99) and s 640-768 lost (the kernel then skips the upper tile itself).
SPLIT_MIN = 320


def split_rows(s: int, t: int, device: torch.device) -> int | None:
    """Rows of the first query chunk when a causal call should run as two halves (see
    `SPLIT_MIN`), else None: CPU, s == t (no cache offset), SPLIT_MIN < s <= CPU_KEY_TILE."""
    if device.type != "cpu" or s != t or not SPLIT_MIN < s <= CPU_KEY_TILE:
        return None
    return (s + 1) // 2


#: CPU inference with at least this many keys may use FlexAttention, if calibration says so.
FLEX_CANDIDATE_LEN = 2048
#: keys of the calibration problem (h 8, d 64, batch 1, float32).
CALIBRATION_LEN = 4096
#: flex is chosen only when it measured at least this much faster than chunked.
FLEX_MARGIN = 0.9
#: for a linear table the fold is the default; the mask path (`chunked`) is chosen only when it
#: measured at least this much faster. A tie must go to the fold: its cost is bias-free SDPA's
#: at every length, while the mask path's grows faster with n — the 2026-12-03 calibration at
#: 4,096 keys read chunked 0.152 s vs fold 0.156 s, and under the old "faster wins" rule `auto`
#: took chunked at 8k-16k too, where it measured 1.27-1.30x bias-free against the fold's
#: 1.11-1.18x.
MASK_MARGIN = 0.9
CACHE_FILE = "attention-dispatch.json"

_calibration: dict[str, Any] | None = None
_taken: Counter[str] = Counter()


@dataclass(frozen=True)
class Decision:
    """The path a biased attention call takes, and why."""

    path: str
    reason: str


def machine_key() -> str:
    """torch version | CPU model | intra-op threads: what a calibration is valid for."""
    return f"torch {torch.__version__} | {_cpu_model()} | {torch.get_num_threads()} threads"


@functools.cache
def _cpu_model() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return cpu


def _cache_path() -> Path | None:
    root = os.environ.get("EXTRAPOS_CACHE", "")
    if root.lower() == "off":
        return None
    base = Path(root) if root else Path.home() / ".cache" / "extrapos"
    return base / CACHE_FILE


def calibration_enabled() -> bool:
    return os.environ.get("EXTRAPOS_ATTENTION_CALIBRATE", "1") not in ("0", "off", "false")


_PATHS: dict[str, Callable[..., torch.Tensor]] = {}


def register_paths(**paths: Callable[..., torch.Tensor]) -> None:
    """The attention module hands over the paths calibration times (`chunked`, `flex`), so this
    module never imports it back."""
    _PATHS.update(paths)


def flex_available(device: torch.device) -> bool:
    """Whether FlexAttention can run here (it needs torch.compile: a C++ compiler on CPU)."""
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return False
    return device.type in ("cpu", "cuda")


def _time_paths(n: int, repeats: int) -> dict[str, float]:
    """Median seconds at n keys (inference): chunked and flex with a random (8, n) table, and
    chunked (`chunked_alibi`) and the linear fold with an ALiBi table."""
    from extrapos.kernels.linear_bias import linear_bias_attention

    chunked_bias_attention, flex_bias_attention = _PATHS["chunked"], _PATHS["flex"]
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 8, n, 64, generator=gen) for _ in range(3))
    table = torch.randn(8, n, generator=gen)
    slopes = 2.0 ** (-torch.arange(1, 9, dtype=torch.float32))
    alibi = -slopes[:, None] * torch.arange(n, dtype=torch.float32)[None, :]
    pos = torch.arange(n)
    calls = {
        "chunked": lambda: chunked_bias_attention(q, k, v, table, pos, pos),
        "flex": lambda: flex_bias_attention(q, k, v, table, pos, pos),
        "chunked_alibi": lambda: chunked_bias_attention(q, k, v, alibi, pos, pos),
        "linear": lambda: linear_bias_attention(q, k, v, slopes, pos, pos),
    }
    times: dict[str, list[float]] = {name: [] for name in calls}
    with torch.inference_mode():
        for call in calls.values():
            call()  # warm; compiles flex
        for _ in range(repeats):
            for name, call in calls.items():
                t0 = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def calibrate(n: int = CALIBRATION_LEN, repeats: int = 3) -> dict[str, Any]:
    """Time chunked vs flex here and return the record (not cached; see `calibration`)."""
    try:
        seconds = _time_paths(n, repeats)
        error = None
    except Exception as exc:  # inductor's CPU codegen fails on some setups: flex unusable
        seconds, error = {}, f"{type(exc).__name__}: {str(exc).strip()[:200]}"
    flex_ok = "flex" in seconds and seconds["flex"] < FLEX_MARGIN * seconds["chunked"]
    return {
        "linear_from_calibration": _fold_preferred(seconds),
        "key": machine_key(),
        "n": n,
        "repeats": repeats,
        "seconds": seconds,
        "error": error,
        "flex_from": FLEX_CANDIDATE_LEN if flex_ok else None,
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _fold_preferred(seconds: dict[str, float]) -> bool:
    """The fold for linear tables unless the mask path measured `MASK_MARGIN` faster."""
    if "linear" not in seconds or "chunked_alibi" not in seconds:
        return True
    return not seconds["chunked_alibi"] < MASK_MARGIN * seconds["linear"]


def _load_cached(key: str) -> dict[str, Any] | None:
    path = _cache_path()
    if path is None or not path.is_file():
        return None
    try:
        entry = json.loads(path.read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError, AttributeError):
        return None  # a corrupt cache is remeasured and rewritten
    ok = isinstance(entry, dict) and "flex_from" in entry and "linear_from_calibration" in entry
    return entry if ok else None


def _store(record: dict[str, Any]) -> None:
    path = _cache_path()
    if path is None:
        return
    from extrapos.core.files import write_json

    try:
        existing = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        if not isinstance(existing, dict):
            existing = {}
    except (OSError, ValueError):
        existing = {}
    existing[record["key"]] = record
    try:
        write_json(path, existing)
    except Exception:  # an unwritable cache only costs a re-calibration next process
        pass


def calibration(run: bool = True) -> dict[str, Any] | None:
    """This machine's calibration: from the process, else the cache file, else measured now
    (when `run`, calibration is enabled and flex is importable); None when there is none."""
    global _calibration
    key = machine_key()
    if _calibration is not None and _calibration.get("key") == key:
        return _calibration
    cached = _load_cached(key)
    if cached is not None:
        _calibration = cached
        return cached
    if not run or not calibration_enabled():
        return None
    if not flex_available(torch.device("cpu")) or not _PATHS:
        return None
    _calibration = calibrate()
    _store(_calibration)
    return _calibration


def decide(
    *,
    needs_grad: bool,
    s: int,
    t: int,
    device: torch.device,
    linear: bool,
    linear_ok: bool,
    flex_ok: bool,
    run_calibration: bool = True,
) -> Decision:
    """`auto`'s choice for one biased causal call (see module docstring). `linear`: the table is
    exactly linear; `linear_ok`: the fold supports this call (device, dtype, grad/offset);
    `flex_ok`: FlexAttention is importable and has not failed to compile in this process."""
    from extrapos.kernels.linear_bias import LINEAR_MIN_QUERIES

    if linear and linear_ok and s >= LINEAR_MIN_QUERIES:
        if device.type == "cpu" and s == t and t <= CPU_KEY_TILE:
            return Decision(
                "chunked",
                f"linear table, <= {CPU_KEY_TILE} keys: the fused CPU kernel computes the masked "
                "pairs of its one key tile anyway, so the bias as a mask is free (the fold's "
                "extra head-dim column is not)",
            )
        if needs_grad or s != t or t < FLEX_CANDIDATE_LEN or device.type != "cpu":
            return Decision("linear", "linear table: bias folded into q/k, bias-free SDPA")
        record = calibration(run=run_calibration)
        secs = (record or {}).get("seconds") or {}
        measured = (
            f"measured at n={record['n']}: chunked {secs['chunked_alibi']:.3f} s, "
            f"linear {secs['linear']:.3f} s"
            if record is not None and "linear" in secs and "chunked_alibi" in secs
            else ""
        )
        # decided from the stored seconds, so a cache written under an older rule follows this one
        if _fold_preferred(secs):
            reason = "linear table: bias folded into q/k, bias-free SDPA"
            return Decision("linear", f"{reason} ({measured})" if measured else reason)
        return Decision("chunked", f"linear table, the mask path measured faster: {measured}")
    if device.type == "cuda" and flex_ok:
        return Decision("flex", "cuda: FlexAttention (has a backward there; not calibrated)")
    if needs_grad:
        return Decision("chunked", "training: no FlexAttention backward on CPU")
    if s != t:
        return Decision(
            "chunked", "queries against a cache: flex miscompiles Q_LEN != KV_LEN on CPU"
        )
    if not flex_ok or t < FLEX_CANDIDATE_LEN:
        return Decision("chunked", f"inference below {FLEX_CANDIDATE_LEN} keys or no flex")
    record = calibration(run=run_calibration)
    if record is None:
        return Decision("chunked", "flex not calibrated here (EXTRAPOS_ATTENTION_CALIBRATE=0?)")
    secs = record.get("seconds") or {}
    measured = (
        f"measured at n={record['n']}: chunked {secs['chunked']:.3f} s, flex {secs['flex']:.3f} s"
        if secs
        else f"flex failed in calibration ({record.get('error')})"
    )
    if record.get("flex_from") is not None and t >= record["flex_from"]:
        return Decision("flex", measured)
    return Decision("chunked", measured)


def record_taken(path: str) -> None:
    """Count a path an attention call took (see `paths_taken`)."""
    _taken[path] += 1


def paths_taken(reset: bool = False) -> dict[str, int]:
    """Attention paths taken by biased calls in this process since the last reset."""
    out = dict(_taken)
    if reset:
        _taken.clear()
    return out


def describe(t: int = 8192) -> list[str]:
    """Human-readable lines: the machine key, the calibration (if any) and what `auto` does for
    CPU inference with t keys, ALiBi-like and other tables, and for training. Never calibrates."""
    record = calibration(run=False)
    lines = [f"attention dispatch for {machine_key()}"]
    if record is None:
        lines.append(
            "  flex vs chunked: not calibrated yet (first CPU inference with a table at >= "
            f"{FLEX_CANDIDATE_LEN} keys measures it)"
        )
    else:
        secs = record.get("seconds") or {}
        timing = ", ".join(f"{k} {v:.3f} s" for k, v in secs.items()) or record.get("error")
        lines.append(f"  calibration at n={record['n']} ({record['measured_at']}): {timing}")
    cpu = torch.device("cpu")
    for label, linear in (("linear table (alibi)", True), ("other tables", False)):
        d = decide(
            needs_grad=False,
            s=t,
            t=t,
            device=cpu,
            linear=linear,
            linear_ok=True,
            flex_ok=True,
            run_calibration=False,
        )
        lines.append(f"  inference, {label}, n={t}: {d.path} ({d.reason})")
    d = decide(
        needs_grad=True,
        s=t,
        t=t,
        device=cpu,
        linear=False,
        linear_ok=False,
        flex_ok=True,
        run_calibration=False,
    )
    lines.append(f"  training, learned tables: {d.path} ({d.reason})")
    lines.append(
        f"  causal calls of {SPLIT_MIN + 1}-{CPU_KEY_TILE} queries on CPU (any encoding): two "
        f"query halves (the fused kernel skips masked keys only by tiles of {CPU_KEY_TILE})"
    )
    return lines
