"""What a bench shows while it runs and where else it logs: the top-level plan line, the
summary table at the end, and optional TensorBoard / Weights & Biases logging.

The plan counts every unit of work (language-model runs, RoPE extension rows, task models,
passkey fine-tunes, cost probes) and prints, as each starts, one line over the per-step bars:

    run 3/12 · train rope (seed 0) · elapsed 1m02s · ETA 3m05s

The ETA is, for each stage, the mean time of that stage's units finished in this process
(units kept from an earlier results.json take no time and do not count) times the units left.
A stage with none finished yet is estimated from its expected work (token positions processed,
a backward pass counted as two forwards; `bench.run._unit_work`) at the seconds per unit of work
measured so far, so a bench whose first unit is its slowest (training six models, then cheap
cost probes) no longer over-estimates until a unit of each later stage has finished. Without
work estimates a stage borrows the mean of all finished units.

TensorBoard and W&B get, per language-model run, its training loss (and learning rate, gradient
norm, throughput) **live at every step**, through the training loop's `on_step` callback, and
its perplexity by evaluation length (x axis: the length) when the run has been evaluated. A run
that fails mid-way still closes its TensorBoard folder / W&B run with what it logged.
W&B runs offline (`WANDB_MODE=offline`, files under the bench's output folder) unless the
environment sets another mode, so it needs no network.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from extrapos.core.errors import UserError
from extrapos.training.log import TENSORBOARD_TAGS


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class Plan:
    """Units of work by stage; `start(stage, label)` prints the top-level line."""

    def __init__(
        self,
        units: dict[str, int],
        enabled: bool = True,
        work: dict[str, float] | None = None,
    ) -> None:
        self.units = dict(units)
        self.work = {stage: w for stage, w in (work or {}).items() if w > 0}
        self.total = sum(units.values())
        self.enabled = enabled
        self.index = 0
        self.t0 = time.perf_counter()
        self._done: dict[str, list[float]] = {stage: [] for stage in units}
        self._left = dict(units)
        self._current: tuple[str, float] | None = None

    def eta(self) -> float | None:
        finished = [s for durations in self._done.values() for s in durations]
        if not finished:
            return None
        overall = sum(finished) / len(finished)
        done_work = sum(self.work.get(stage, 0.0) * len(d) for stage, d in self._done.items())
        weighted = all(self._done[stage] == [] or stage in self.work for stage in self._done)
        per_work = sum(finished) / done_work if weighted and done_work > 0 else None

        def per_unit(stage: str) -> float:
            if self._done.get(stage):
                return sum(self._done[stage]) / len(self._done[stage])
            if per_work is not None and stage in self.work:
                return per_work * self.work[stage]
            return overall

        return sum(left * per_unit(stage) for stage, left in self._left.items() if left)

    def line(self, stage: str, label: str) -> str:
        eta = self.eta()
        shown = "?" if eta is None else _clock(eta)
        elapsed = _clock(time.perf_counter() - self.t0)
        return f"run {self.index}/{self.total} · {label} · elapsed {elapsed} · ETA {shown}"

    def start(self, stage: str, label: str) -> None:
        self.index += 1
        self._left[stage] = max(0, self._left.get(stage, 1) - 1)
        self._current = (stage, time.perf_counter())
        if self.enabled:
            from tqdm.auto import tqdm

            tqdm.write(self.line(stage, label), file=sys.stderr)

    def finish(self, kept: bool) -> None:
        if self._current is None:
            return
        stage, t = self._current
        if not kept:
            self._done.setdefault(stage, []).append(time.perf_counter() - t)
        self._current = None


class Loggers:
    """TensorBoard (one event folder per run under `tensorboard`) and/or W&B (`wandb` project,
    one W&B run per bench run). Missing packages are a one-line `UserError` up front."""

    def __init__(
        self,
        tensorboard: str | Path | None = None,
        wandb_project: str | None = None,
        out_dir: str | Path = ".",
        settings: dict[str, Any] | None = None,
    ) -> None:
        self.tb_dir = Path(tensorboard) if tensorboard else None
        self.wandb_project = wandb_project
        self.out_dir = Path(out_dir)
        self.settings = settings or {}
        self._summary_writer: Any = None
        self._wandb: Any = None
        if self.tb_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError(
                    "--tensorboard needs the tensorboard package: pip install 'extrapos[tb]'"
                ) from None
            self._summary_writer = SummaryWriter
        if wandb_project is not None:
            try:
                import wandb
            except ImportError:
                raise UserError(
                    "--wandb needs the wandb package: pip install 'extrapos[wandb]' (it logs "
                    "offline, no account or network needed)"
                ) from None
            self._wandb = wandb

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled by its settings (a `bench --jobs` worker reopens the packages itself)."""
        return (Loggers, (self.tb_dir, self.wandb_project, self.out_dir, self.settings))

    def start_run(self, method: str, seed: int) -> LiveRun:
        """Open the run's TensorBoard writer / W&B run; feed `LiveRun.step` each training step."""
        name = f"{method}-seed{seed}"
        writer = run = None
        if self._summary_writer is not None:
            writer = self._summary_writer(str(self.tb_dir / name))
        if self._wandb is not None:
            os.environ.setdefault("WANDB_MODE", "offline")
            run = self._wandb.init(
                project=self.wandb_project,
                name=name,
                dir=str(self.out_dir),
                config={**self.settings, "method": method, "seed": seed},
                reinit=True,
            )
        return LiveRun(writer, run)

    @property
    def active(self) -> bool:
        return self._summary_writer is not None or self._wandb is not None


class LiveRun:
    """One bench run's TensorBoard writer and/or W&B run while it trains and is evaluated; the
    per-step scalars are `train --tensorboard`'s (`training.log.TENSORBOARD_TAGS`)."""

    def __init__(self, writer: Any, run: Any) -> None:
        self._writer, self._run = writer, run

    def step(self, row: dict[str, Any]) -> None:
        """A training step's log row (`training.log.LOG_COLUMNS`), logged as it happens."""
        values = {tag: row[key] for key, tag in TENSORBOARD_TAGS if row.get(key) is not None}
        if self._writer is not None:
            for tag, value in values.items():
                self._writer.add_scalar(tag, value, row["step"])
            self._writer.flush()
        if self._run is not None:
            self._run.log(values, step=row["step"])

    def finish(self, summary: dict[str, Any] | None = None) -> None:
        """Log the perplexity by length (when the run was evaluated) and close."""
        ppl = {int(k): v for k, v in (summary or {}).get("ppl", {}).items() if v is not None}
        if self._writer is not None:
            for length, value in sorted(ppl.items()):
                self._writer.add_scalar("eval/ppl_by_length", value, length)
            self._writer.close()
        if self._run is not None:
            self._run.summary.update({f"ppl/{length}": value for length, value in ppl.items()})
            self._run.finish()
