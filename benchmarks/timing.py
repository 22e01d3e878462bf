"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
import time

import jax


def first_and_median(fn, repeats: int) -> tuple[float, float]:
    """(seconds of the first call, compilation included; median of ``repeats`` more calls).

    ``fn``'s result is waited for with ``jax.block_until_ready``.
    """
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)
