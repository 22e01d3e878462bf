"""The search's host work and its compiled calls on different CPU cores.

A generation's numpy work runs on the Python thread while XLA's worker threads score the
previous generation (``engine``). Two things spoil that overlap on a small CPU:

* Linux tends to wake a worker on the core of the thread that woke it, so the two often
  share a core while another one idles;
* XLA splits a compiled call's loops over as many threads as the compiling thread may use.
  The scoring calls are chains of small steps, for which the split costs more than it
  brings: compiled on 2 cores they took 71 ms of CPU time per generation of 4,096, against
  34 ms compiled on one (measured on a 2-core x86 CPU, the same wall time alone).

``separate_cores()`` puts the calling thread on its first allowed core and every other
thread of the process on the rest, for the duration of a search; what is compiled inside
is compiled for one thread. Measured on the same CPU, generations of 4,096 children: 73 ms
on average with the default scheduling, 51 ms inside ``separate_cores`` (compilation
included). ``shared_cores()`` lifts the arrangement for work that the host only waits for:
decoding, which uses several threads, and L-BFGS, whose small steps gain nothing from the
split. With the regressor's settings (1,024 per problem, the best 64 refined every
generation) 60 generations took 6.2 s inside against 6.4-7.7 s outside, and the first
search of a process, which compiles the scoring calls, 0.5-1 s longer (they compile on one
thread).

Every thread's mask is restored at the end. Nothing is done where threads have no
affinity masks (only Linux has them), where the process may use a single core, or when
another search of the process has already set it up (searches run from several threads
share the arrangement of the first).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading

import jax
import jax.numpy as jnp
from jax import lax

_lock = threading.Lock()
_current: _Arrangement | None = None  # the arrangement in force, if any


class _Arrangement:
    """Every thread's mask when the arrangement started; the caller's thread ``me``."""

    def __init__(self, me: int, saved: dict[int, set[int]]):
        self.me, self.saved = me, saved

    def apply(self) -> None:
        cpus = sorted(self.saved[self.me])
        mine, others = {cpus[0]}, set(cpus[1:])
        for tid in _threads():
            _set(tid, mine if tid == self.me else others)

    def restore(self) -> None:
        # Threads started meanwhile get the mask the caller had.
        for tid in _threads():
            _set(tid, self.saved.get(tid, self.saved[self.me]))


@functools.cache
def _start_runtime() -> None:
    """Runs a computation, so that XLA's worker threads exist before the masks are set (a
    worker started by the calling thread afterwards would share its core). A loop over
    branches makes XLA start its compilation workers too."""
    branches = [jnp.sin, jnp.cos]
    loop = lambda x: lax.fori_loop(0, 2, lambda i, c: lax.switch(i % 2, branches, c), x)
    jax.block_until_ready(jax.jit(loop)(jnp.zeros(2)))


def _threads() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return []


def _set(tid: int, cpus) -> None:
    try:
        os.sched_setaffinity(tid, cpus)
    except OSError:  # the thread has ended, or the mask is not allowed
        pass


@contextlib.contextmanager
def separate_cores():
    """The calling thread on its first allowed core, every other thread of the process on
    the remaining ones, until the block ends."""
    global _current
    arrangement = None
    if hasattr(os, "sched_setaffinity"):
        _start_runtime()
        with _lock:
            me = threading.get_native_id()
            saved = {}
            for tid in _threads():
                with contextlib.suppress(OSError):
                    saved[tid] = os.sched_getaffinity(tid)
            if _current is None and me in saved and len(saved[me]) >= 2:
                arrangement = _current = _Arrangement(me, saved)
                arrangement.apply()
    try:
        yield
    finally:
        if arrangement is not None:
            with _lock:
                arrangement.restore()
                _current = None


@contextlib.contextmanager
def shared_cores():
    """Inside ``separate_cores``: every thread back on its own cores for the block, for
    multi-threaded compiled work that the host only waits for (such as decoding)."""
    with _lock:
        arrangement = _current
        if arrangement is not None:
            arrangement.restore()
    try:
        yield
    finally:
        if arrangement is not None:
            with _lock:
                if _current is arrangement:
                    arrangement.apply()
