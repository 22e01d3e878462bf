"""What CPU this runs on, for the records of benchmarks and experiments.

Speeds of the same code differed 2x between two 2-core virtual machines that both called
themselves "AMD EPYC"; their family numbers and cache sizes tell them apart.
"""

from __future__ import annotations

import os
import platform


def cpu_description() -> str:
    """Model name, and on Linux the family/model numbers and cpu0's cache sizes:
    "AMD EPYC, family 26 model 2, L1d 48K L2 1024K L3 32768K"."""
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
