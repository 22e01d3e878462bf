"""What a run reports: a CSV row per step, a progress line and TensorBoard scalars per
interval, and validation results in both.

Files in the workdir (written by the first host only):

- ``train.csv``: ``step, loss, lr, grad_norm, samples, points, tokens, seconds`` for every
  step (floats written exactly, so two runs can be compared digit for digit);
- ``validation.csv``: ``step`` and the validation metrics;
- ``tensorboard/``: event files (``tensorboard.py``: tensorboardX, no TensorFlow) with ``train/*``
  interval means, ``train/samples_per_second``, ``train/points_per_second`` and
  ``validation/*``.

A resumed run first drops the rows after its checkpoint's step (the steps it will redo) and
tells TensorBoard to purge them too, so every file describes one uninterrupted run.
"""

from __future__ import annotations

import csv
import math
import sys
import time
from pathlib import Path

from jaxsr.fileio import atomic_write
from jaxsr.train.tensorboard import EventWriter

TRAIN_FIELDS = ("step", "loss", "lr", "grad_norm", "samples", "points", "tokens", "seconds")
TRAIN_CSV, VALIDATION_CSV, TENSORBOARD_DIR = "train.csv", "validation.csv", "tensorboard"


class RunLogger:
    """Writes the logs of a run that starts (or resumes) after ``start_step``."""

    def __init__(self, workdir: str | Path, start_step: int, total_steps: int, *,
                 enabled: bool = True, stream=None):
        self.enabled = enabled
        self.total_steps = total_steps
        self._stream = stream or sys.stdout
        self._workdir = Path(workdir)
        self._interval: list[dict] = []
        self._started = self._interval_start = time.perf_counter()
        self._writer = None
        if enabled:
            for name in (TRAIN_CSV, VALIDATION_CSV):
                _truncate_after(self._workdir / name, start_step)
            self._writer = EventWriter(self._workdir / TENSORBOARD_DIR,
                                       purge_step=start_step + 1)

    def message(self, text: str) -> None:
        if self.enabled:
            print(text, file=self._stream, flush=True)

    def step(self, step: int, metrics: dict) -> None:
        """One step's metrics (host floats): a CSV row, and kept for the interval."""
        self._interval.append(metrics)
        if self.enabled:
            row = {"step": step, **{k: metrics[k] for k in TRAIN_FIELDS[1:]}}
            _append_row(self._workdir / TRAIN_CSV, TRAIN_FIELDS, row)

    def interval(self, step: int) -> None:
        """The progress line and TensorBoard scalars for the steps since the last call."""
        if not self._interval:
            return
        now = time.perf_counter()
        seconds, steps = now - self._interval_start, self._interval
        self._interval, self._interval_start = [], now
        mean = {k: sum(m[k] for m in steps) / len(steps) for k in ("loss", "grad_norm")}
        rates = {"samples_per_second": sum(m["samples"] for m in steps) / seconds,
                 "points_per_second": sum(m["points"] for m in steps) / seconds}
        if not self.enabled:
            return
        self.message(f"step {step}/{self.total_steps} | loss {mean['loss']:.4f} | "
                     f"lr {steps[-1]['lr']:.3g} | grad_norm {mean['grad_norm']:.3f} | "
                     f"{rates['samples_per_second']:,.0f} samples/s | "
                     f"{rates['points_per_second']:,.0f} points/s")
        scalars = {**mean, "lr": steps[-1]["lr"], **rates}
        self._writer.scalars(step, {f"train/{k}": v for k, v in scalars.items()})
        self._writer.flush()

    def elapsed(self) -> float:
        """Seconds since this logger (this process's part of the run) started."""
        return time.perf_counter() - self._started

    def restart_clock(self) -> None:
        """Excludes a pause (validation, checkpoint wait) from the next interval's rates."""
        self._interval_start = time.perf_counter()

    def validation(self, step: int, results: dict) -> None:
        if not self.enabled:
            return
        fields = ("step", *results)
        _append_row(self._workdir / VALIDATION_CSV, fields, {"step": step, **results})
        self._writer.scalars(step, {f"validation/{k}": v for k, v in results.items()})
        self._writer.flush()
        self.message(f"validation at step {step}: " + ", ".join(
            f"{k} {_short(v)}" for k, v in results.items()))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _short(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) and not value.is_integer() else f"{value}"


def _append_row(path: Path, fields, row: dict) -> None:
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields))
        if new:
            writer.writeheader()
        writer.writerow({k: _exact(v) for k, v in row.items()})


def _exact(value):
    """Floats as the shortest text that reads back to the same float (``repr``)."""
    return repr(float(value)) if isinstance(value, float) and math.isfinite(value) else value


def _truncate_after(path: Path, step: int) -> None:
    """Keeps the header and the complete rows with ``step <= step`` (a run killed while
    writing may have left a partial last line)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = lines[:1] + [line for line in lines[1:]
                        if line.endswith("\n") and _row_step(line) <= step]
    atomic_write(path, "".join(kept))  # a kill here must not lose the rows kept


def _row_step(line: str) -> float:
    try:
        return int(line.split(",", 1)[0])
    except ValueError:
        return float("inf")  # not a row: dropped


def read_csv(path: str | Path) -> list[dict]:
    """Rows of a run's CSV with numbers as int/float (for tests and notebooks)."""
    with Path(path).open(newline="") as f:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        return float(text)
