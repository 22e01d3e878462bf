"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import os
import platform
import statistics
import time

import jax

from jaxsr.machine import cpu_description


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


def machine() -> dict:
    """Where a benchmark ran: ``machine`` (the architecture), ``cpu``
    (``jaxsr.machine.cpu_description``) and ``cpu_count``."""
    return {"machine": platform.machine(), "cpu": cpu_description(),
            "cpu_count": os.cpu_count()}
