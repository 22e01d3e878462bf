"""Holding a whole process to T CPU cores, so that methods compared "at T threads" get the same CPU.

Why the whole process: XLA sizes its CPU thread pool when jax starts and cannot resize it, BLAS
libraries read their thread count when they load, and some peers start worker processes. Setting
the CPU affinity of every thread of the process (the ones that exist, so pools already started
are held too) limits all of them at once; threads and child processes started later inherit it.
The usual thread-count variables are set as well, so that libraries loaded later size their pools
to T instead of oversubscribing T cores.

Standard library only: ``peers.py`` calls ``pin_from_argv`` before numpy or jax is imported.
Linux only (``os.sched_setaffinity``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os

# Read by OpenMP, OpenBLAS, MKL, Accelerate and numexpr when they load, and by joblib's workers.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
# The pinning ``pin_from_argv`` made before the heavy imports, if it ran.
EARLY: Pinning | None = None


@dataclasses.dataclass(frozen=True)
class Pinning:
    """What ``pin`` changed, to record it and to undo it."""

    cores: tuple[int, ...]
    threads_pinned: int                         # threads that existed (pools started before)
    previous_masks: dict[int, frozenset[int]]   # thread id -> its affinity before
    previous_environment: dict[str, str | None]

    def record(self) -> dict:
        return {"cores": list(self.cores), "threads_pinned": self.threads_pinned,
                "pinned_before_imports": EARLY is not None,
                "variables": {name: str(len(self.cores)) for name in THREAD_VARIABLES}}


def _thread_ids() -> list[int]:
    return sorted(int(tid) for tid in os.listdir("/proc/self/task"))


def pin(threads: int) -> Pinning:
    """Restricts every thread of this process to the first ``threads`` cores it may use."""
    allowed = sorted(os.sched_getaffinity(0))
    if not 1 <= threads <= len(allowed):
        raise ValueError(f"--threads {threads}: this process may use {len(allowed)} core(s) "
                         f"({allowed})")
    cores = tuple(allowed[:threads])
    previous = {}
    for tid in _thread_ids():
        try:
            previous[tid] = frozenset(os.sched_getaffinity(tid))
            os.sched_setaffinity(tid, cores)
        except (ProcessLookupError, PermissionError):
            continue  # the thread ended between listing and pinning
    environment = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    os.environ.update({name: str(threads) for name in THREAD_VARIABLES})
    return Pinning(cores, len(previous), previous, environment)


def release(pinning: Pinning) -> None:
    """Gives the threads that still exist their former affinity, and the variables their
    former values (threads started while pinned keep the pinned set)."""
    for tid, mask in pinning.previous_masks.items():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.sched_setaffinity(tid, mask)
    for name, value in pinning.previous_environment.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@contextlib.contextmanager
def pinned(threads: int):
    """``pin(threads)`` for the duration of the block (so that an in-process caller, such as a
    test, gets its cores back)."""
    pinning = pin(threads)
    try:
        yield pinning
    finally:
        release(pinning)


def pin_from_argv(argv: list[str]) -> Pinning | None:
    """Pins to ``--threads T`` (default 1) as read from a command line, before the heavy imports;
    a bad value is left for the real parser to report."""
    reader = argparse.ArgumentParser(add_help=False)
    reader.add_argument("--threads", default="1")
    reader.add_argument("--merge", nargs="*")
    known, _ = reader.parse_known_args(argv)
    global EARLY
    if known.merge is not None:  # merging fits nothing
        return None
    try:
        EARLY = pin(int(known.threads))
    except ValueError:
        return None
    return EARLY
