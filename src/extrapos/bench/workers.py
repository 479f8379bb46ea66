"""`bench --jobs N`: the bench's independent units of work in N worker processes.

On a small CPU a small model does not use its cores well: the quick bench's model trains at
9.1k tokens/s on one thread and 14.6k on two (2 cores, torch 2.13), so two single-thread
processes training two methods at once do more work per second than one process using both
cores. With `jobs` > 1 the bench runs every language-model run, RoPE-extension row, task model
and passkey fine-tune in a pool of `jobs` processes of `threads` intra-op threads each
(default: the cores divided among the workers), while the parent keeps the bookkeeping: records
are kept, written and shown in the same order as with one job, and a unit that needs a trained
model (extension rows, passkey) is submitted when that model's run has finished and loads it
from the bench's `runs/` folder. Cost probes time a forward, so they run only after the pool
has been shut down, one at a time, with nothing else running.

Numbers: a worker computes with `threads` threads, so results equal a one-job bench run with
that many threads (bitwise on CPU; a different thread count changes the order of float sums,
as any change of thread count does). Workers are started with `spawn` (no fork of a process
whose OpenMP pool is running) with OMP_NUM_THREADS set to their thread count, so the pool
cannot oversubscribe the cores.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from extrapos.core.errors import UserError


def _start_worker(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)  # before torch starts its OpenMP pool
    import torch

    torch.set_num_threads(threads)


def auto_jobs() -> int:
    """`--jobs auto`: 2 on a CPU-only machine with at least 2 threads to share (measured on
    2 cores: the quick bench in 4 min 31 s with 2 jobs vs 5 min 07 s with 1), else 1 (a GPU is
    one device: its bench runs units one after another)."""
    import torch

    if torch.cuda.is_available() or torch.backends.mps.is_available():
        return 1
    return 2 if torch.get_num_threads() >= 2 else 1


def parse_jobs(text: str | int) -> int:
    """`--jobs N` or `--jobs auto`."""
    if str(text) == "auto":
        return auto_jobs()
    try:
        return int(text)  # run_bench refuses a count below 1
    except ValueError:
        raise UserError(f"--jobs takes a number of workers or 'auto', got {text!r}") from None


def worker_threads(jobs: int, threads: int | None = None) -> int:
    """Intra-op threads per worker: `threads`, else this process's threads shared out."""
    if threads is not None:
        if threads < 1:
            raise UserError(f"--threads-per-job must be >= 1, got {threads}")
        return threads
    import torch

    return max(1, torch.get_num_threads() // jobs)


class Workers:
    """A pool of `jobs` processes; units are submitted under a key and collected by key."""

    def __init__(self, jobs: int, threads: int) -> None:
        if jobs < 2:
            raise UserError(f"a worker pool needs --jobs >= 2, got {jobs}")
        self.jobs, self.threads = jobs, threads
        self._pool = ProcessPoolExecutor(
            max_workers=jobs,
            mp_context=get_context("spawn"),
            initializer=_start_worker,
            initargs=(threads,),
        )
        self._futures: dict[tuple[Any, ...], Future[Any]] = {}

    def submit(self, key: tuple[Any, ...], fn: Callable[[], Any]) -> None:
        """Start `fn()` (picklable: a module-level function or a partial of one) in a worker;
        a key already in flight is left as it is."""
        if key not in self._futures:
            self._futures[key] = self._pool.submit(fn)

    @property
    def in_flight(self) -> int:
        """Units submitted and not yet collected."""
        return len(self._futures)

    def result(self, key: tuple[Any, ...]) -> Any:
        """Wait for the unit under `key`; its exception, if any, is raised here."""
        return self._futures.pop(key).result()

    def close(self) -> None:
        """Cancel what has not started, wait for what has (a unit is never left half run)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._futures.clear()


def load_run_model(run_dir: Path) -> Any:
    """The model a bench run saved (what a worker's extension or passkey unit starts from)."""
    from extrapos.training.run_dir import load_model

    if not (Path(run_dir) / "config.json").is_file():
        raise UserError(f"{run_dir} holds no trained model; rerun the bench with a fresh --out")
    return load_model(run_dir)


def train_unit(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """`language_model.run_method` in a worker: its summary (the model stays in its run dir)."""
    from extrapos.bench.language_model import run_method

    summary, _model = run_method(*args, **kwargs)
    return summary


def extension_unit(config: Any, ext: str, seed: int, run_dir: Path, *args: Any) -> dict[str, Any]:
    """`language_model.run_extension` on the rope model saved in `run_dir`."""
    from extrapos.bench.language_model import run_extension

    return run_extension(config, ext, seed, load_run_model(run_dir), *args)


def passkey_unit(run_dir: Path, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """`stages.passkey_probe` on the model saved in `run_dir`."""
    from extrapos.bench.stages import passkey_probe

    return passkey_probe(load_run_model(run_dir), *args, **kwargs)


__all__ = [
    "Workers",
    "auto_jobs",
    "parse_jobs",
    "extension_unit",
    "passkey_unit",
    "train_unit",
    "worker_threads",
]
