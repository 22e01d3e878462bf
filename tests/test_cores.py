"""The search's core arrangement (jaxsr.search.cores): masks set, restored, and results
that do not depend on it."""

import os
import threading

import numpy as np
import pytest

from jaxsr.search import SearchSettings, cores, evolve

linux_with_cores = pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs thread affinity masks and at least 2 usable cores")


def masks() -> dict[int, frozenset]:
    out = {}
    for tid in map(int, os.listdir("/proc/self/task")):
        try:
            out[tid] = frozenset(os.sched_getaffinity(tid))
        except OSError:
            pass
    return out


@linux_with_cores
def test_separate_cores_splits_threads_and_restores_them():
    idle = threading.Event()
    helper = threading.Thread(target=idle.wait)
    helper.start()
    try:
        before = masks()
        me = threading.get_native_id()
        allowed = sorted(before[me])
        with cores.separate_cores():
            inside = masks()
            assert inside[me] == {allowed[0]}
            assert inside[helper.native_id] == set(allowed[1:])
            with cores.separate_cores():  # nested: nothing changes
                assert masks() == inside
            with cores.shared_cores():
                assert masks()[helper.native_id] == before[helper.native_id]
                assert masks()[me] == before[me]
            assert masks() == inside
        after = masks()
        assert {t: after[t] for t in before if t in after} == {
            t: before[t] for t in before if t in after}
    finally:
        idle.set()
        helper.join()


def test_results_do_not_depend_on_the_core_arrangement():
    rng = np.random.default_rng(3)
    X = rng.uniform(-2, 2, size=(64, 2))
    y = X[:, 0] * np.sin(X[:, 1]) + 0.5 * X[:, 1] ** 2
    run = lambda split: evolve([(X, y)], settings=SearchSettings(
        population_size=64, generations=4, refine_top=4, seed=1, separate_cores=split))
    a, b = run(True), run(False)
    assert [(c.expr, c.nmse) for c in a.fronts[0]] == [(c.expr, c.nmse) for c in b.fronts[0]]
