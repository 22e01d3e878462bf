"""The reference's learning rate, ``AdamInverseSqrtWithWarmup`` (docs/reference.md 4.2)."""

from __future__ import annotations

import numpy as np


def inverse_sqrt_schedule(lr: float, warmup_steps: int, warmup_init_lr: float = 1e-7):
    """``schedule(count)``: the learning rate of update ``count`` (0 for the first update).

    Linear warm-up ``warmup_init_lr + count * (lr - warmup_init_lr) / warmup_steps`` while
    ``count < warmup_steps``, then ``lr * sqrt(warmup_steps / count)``; the two meet at
    ``lr`` when ``count == warmup_steps``. The reference's optimiser starts at
    ``warmup_init_lr`` and recomputes its rate from the update count after each update, so
    its update ``count`` uses exactly this value.

    Host-side (numpy): the trainer passes each step's rate into the compiled step, so the
    compiled code does not depend on the schedule. Accepts an int or an array of counts.
    """
    if warmup_steps < 1:
        raise ValueError(f"warmup_steps must be >= 1, got {warmup_steps}")
    slope = (lr - warmup_init_lr) / warmup_steps
    decay = lr * warmup_steps ** 0.5

    def schedule(count):
        count = np.asarray(count, np.float64)
        rate = np.where(count < warmup_steps, warmup_init_lr + count * slope,
                        decay / np.sqrt(np.maximum(count, 1.0)))
        return rate if rate.ndim else float(rate)

    return schedule
