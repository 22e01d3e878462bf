"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import os
import platform
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


def machine() -> dict:
    """Where a benchmark ran: ``machine`` (the architecture), ``cpu`` (model name, and on
    Linux the family/model numbers and cache sizes, which tell CPU generations apart where
    a virtual machine reports only "AMD EPYC") and ``cpu_count``. Speeds of the same code
    differed 2x between two 2-core virtual machines that both called themselves AMD EPYC."""
    return {"machine": platform.machine(), "cpu": cpu_description(),
            "cpu_count": os.cpu_count()}


def cpu_description() -> str:
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or platform.machine()
    parts = [fields.get("model name", platform.machine())]
    if "cpu family" in fields:
        parts.append(f"family {fields['cpu family']} model {fields.get('model', '?')}")
    caches = _cache_sizes()
    if caches:
        parts.append(caches)
    return ", ".join(parts)


def _cache_sizes() -> str:
    """"L1d 48K L2 1024K L3 32768K" for cpu0 from sysfs (empty where not readable)."""
    root = "/sys/devices/system/cpu/cpu0/cache"

    def read(index: str, name: str) -> str:
        with open(os.path.join(root, index, name)) as f:
            return f.read().strip()

    out = []
    try:
        for index in sorted(n for n in os.listdir(root) if n.startswith("index")):
            kind = read(index, "type")
            if kind != "Instruction":
                out.append(f"L{read(index, 'level')}{'d' if kind == 'Data' else ''} "
                           f"{read(index, 'size')}")
    except OSError:
        return ""
    return " ".join(out)
