"""A run's log: `log.csv` (one row per optimizer step) and, optionally, TensorBoard scalars."""

from __future__ import annotations

import contextlib
import csv
from pathlib import Path
from typing import Any

from extrapos.core.errors import UserError
from extrapos.core.files import check_target

LOG = "log.csv"
LOG_COLUMNS = (
    "step",
    "tokens",
    "lr",
    "loss",
    "grad_norm",
    "valid_loss",
    "valid_ppl",
    "tokens_per_s",
    "elapsed_s",
)
TENSORBOARD_TAGS = (
    ("loss", "train/loss"),
    ("lr", "train/lr"),
    ("grad_norm", "train/grad_norm"),
    ("tokens_per_s", "train/tokens_per_s"),
    ("valid_loss", "valid/loss"),
    ("valid_ppl", "valid/ppl"),
)


class RunLog:
    """log.csv (and TensorBoard scalars) of the main rank; on resume, rows past the resumed
    step (written after the checkpoint, before the kill) are dropped. `run_dir` None: no log."""

    def __init__(self, run_dir: Path | None, start_step: int, tensorboard: bool) -> None:
        self._file = self._writer = self._tb = None
        if run_dir is None:
            return
        path = self._path = check_target(run_dir / LOG, "run log")
        kept: list[dict[str, str]] = []
        try:
            if start_step > 0 and path.is_file():
                with open(path, newline="", encoding="utf-8") as f:
                    kept = [r for r in csv.DictReader(f) if _step_of(r) <= start_step]
            run_dir.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "w", newline="", encoding="utf-8")  # noqa: SIM115 (closed in close())
            self._writer = csv.DictWriter(self._file, fieldnames=LOG_COLUMNS, extrasaction="ignore")
            self._writer.writeheader()
            self._writer.writerows(kept)
            self._file.flush()
        except (OSError, UnicodeError, csv.Error) as exc:
            raise UserError(
                f"could not write the run log {path}: {getattr(exc, 'strerror', None) or exc}; "
                "free space, fix the permissions or pick another --out"
            ) from exc
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise UserError(
                    "--tensorboard needs the tensorboard package; pip install 'extrapos[tb]' "
                    "(log.csv is written either way)"
                ) from exc
            self._tb = SummaryWriter(str(run_dir / "tb"), purge_step=start_step + 1)

    def write(self, row: dict[str, Any]) -> None:
        if self._writer is None:
            return
        try:
            self._writer.writerow({k: _fmt(row.get(k)) for k in LOG_COLUMNS})
            self._file.flush()
        except OSError as exc:
            raise UserError(
                f"could not write the run log {self._path}: {exc.strerror or exc}; free space or "
                "pick another --out (the checkpoints already written are intact)"
            ) from exc
        if self._tb is not None:
            for key, tag in TENSORBOARD_TAGS:
                if row.get(key) is not None:
                    self._tb.add_scalar(tag, row[key], row["step"])

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):  # a full disk: the write already reported it
                self._file.close()
        if self._tb is not None:
            self._tb.close()


def _step_of(row: dict[str, str]) -> int:
    try:
        return int(row.get("step") or 0)
    except ValueError:
        return 1 << 62  # a hand-edited row: dropped


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
