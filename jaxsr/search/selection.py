"""Selection: duplicates out, Pareto fronts of error against complexity, tournaments.

Every function works on a whole population whose rows belong to several problems
(``problem`` (P,)): problems never compete with each other.
"""

from __future__ import annotations

import numpy as np

SELECTIONS = ("nsga2", "elitist")


def unique_best(keys: np.ndarray, problem: np.ndarray, nmse: np.ndarray) -> np.ndarray:
    """Rows to keep so that each (problem, skeleton key) appears once: its lowest error
    (ties: the first row)."""
    order = np.lexsort((nmse, keys, problem))
    pairs = np.stack([problem[order], keys[order]], 1)
    first = np.concatenate([[True], np.any(pairs[1:] != pairs[:-1], axis=1)])
    return np.sort(order[first])


def pareto_ranks(nmse: np.ndarray, complexity: np.ndarray, problem: np.ndarray) -> np.ndarray:
    """Non-domination rank of every row within its problem (0: the Pareto front of error
    against complexity; then the front of what is left, and so on). Rows equal on both
    objectives share a rank.

    A row is dominated when another row of its problem is no worse on both objectives and
    better on one, so its rank is one more than the highest rank among the rows that
    dominate it. Integer complexities take few values: the rows are ranked one complexity
    level at a time, all problems together, in vectorised steps.

    * From lower levels, the rows of error <= e dominate a row of error e: a running
      maximum of (rank + 1) over the rows sorted by (problem, error) (``floor``) answers
      for every error at once.
    * Within a level, rows of lower error dominate: the rank of the row with the d-th
      lowest error is ``d + max over d' <= d of (floor - d')``, another running maximum.
    """
    n = len(nmse)
    if n == 0:
        return np.zeros(0, np.int64)
    problem = problem.astype(np.int64)
    error = np.unique(nmse, return_inverse=True)[1].reshape(-1).astype(np.int64)
    # Position of each row in (problem, error) order, and the last position of its ties:
    # a row's floor is read there, so that rows of equal error count as no worse.
    by_error = np.lexsort((error, problem))
    position = np.empty(n, np.int64)
    position[by_error] = np.arange(n)
    group = np.concatenate([[True], (np.diff(problem[by_error]) != 0)
                            | (np.diff(error[by_error]) != 0)])
    last_tie = np.r_[np.flatnonzero(group)[1:], n] - 1
    last = last_tie[np.cumsum(group) - 1][position]
    problem_at = problem[by_error]

    # Rows in (complexity, problem, error) order, so that each level is a slice, and the
    # within-level counts of distinct lower errors (d below) for all levels at once.
    by_level = np.lexsort((error, problem, complexity))
    c, p, e = complexity[by_level], problem[by_level], error[by_level]
    level_start = np.flatnonzero(np.concatenate([[True], np.diff(c) != 0]))
    start = np.concatenate([[True], np.diff(p) != 0])
    start[level_start] = True
    step = np.concatenate([[0], (np.diff(e) != 0).astype(np.int64)])
    step[start] = 0
    segment = np.cumsum(start)
    d = np.cumsum(step)
    d -= d[np.flatnonzero(start)][segment - 1]          # distinct errors below, in level
    last, position = last[by_level], position[by_level]

    rank = np.zeros(n, np.int64)
    reached = np.zeros(n, np.int64)  # rank + 1 of the ranked rows, at their positions
    floor = np.zeros(n, np.int64)    # running maximum of ``reached`` within each problem
    for a, b in zip(level_start, np.r_[level_start[1:], n]):
        level_rank = d[a:b] + _running_max(floor[last[a:b]] - d[a:b], segment[a:b])
        rank[by_level[a:b]] = level_rank
        reached[position[a:b]] = level_rank + 1  # distinct rows: distinct positions
        floor = _running_max(reached, problem_at)
    return rank


def non_dominated(nmse: np.ndarray, complexity: np.ndarray, problem: np.ndarray) -> np.ndarray:
    """(n,) whether each row is on its problem's Pareto front (``pareto_ranks == 0``) in a
    few sorts, without ranking the rest: a row is on the front when its error is the lowest
    of its complexity level and below every lower level's."""
    n = len(nmse)
    if n == 0:
        return np.zeros(0, bool)
    error = np.unique(nmse, return_inverse=True)[1].reshape(-1).astype(np.int64)
    order = np.lexsort((error, complexity, problem))
    p, c, e = problem[order], complexity[order], error[order]
    level_start = np.concatenate([[True], (np.diff(p) != 0) | (np.diff(c) != 0)])
    level = np.cumsum(level_start) - 1
    level_best = e[level_start]                       # lowest error of each level
    # Lowest error of the levels below, within the problem: a running minimum that restarts
    # at each problem (earlier problems are lifted out of reach by an offset).
    problem_of_level = p[level_start]
    segment = np.cumsum(np.concatenate([[True], np.diff(problem_of_level) != 0])) - 1
    span = int(e.max()) + 2
    lifted = level_best + (segment[-1] - segment) * span
    below = np.minimum.accumulate(lifted) - (segment[-1] - segment) * span
    below = np.concatenate([[span], below[:-1]])
    below = np.where(np.concatenate([[True], segment[1:] != segment[:-1]]), span, below)
    on_front = (e == level_best[level]) & (e < below[level])
    out = np.empty(n, bool)
    out[order] = on_front
    return out


def _running_max(values: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """Cumulative maximum restarting at every change of the non-decreasing ``segment``."""
    if not len(segment) or segment[0] == segment[-1]:  # one segment (one problem)
        return np.maximum.accumulate(values) if len(values) else values
    span = values.max(initial=0) - values.min(initial=0) + 1
    offset = (segment - segment[0]) * span
    return np.maximum.accumulate(values + offset) - offset


def front(nmse: np.ndarray, complexity: np.ndarray) -> np.ndarray:
    """Indices of the Pareto front of one problem's rows, simplest first (finite errors)."""
    finite = np.flatnonzero(np.isfinite(nmse))
    ranks = pareto_ranks(nmse[finite], complexity[finite], np.zeros(len(finite), int))
    members = finite[ranks == 0]
    return members[np.argsort(complexity[members], kind="stable")]


def survivors(nmse, complexity, problem, per_problem: int, method: str) -> np.ndarray:
    """``per_problem`` rows of each problem that go on (fewer where a problem has fewer).

    "nsga2": by Pareto rank, then error (the front and its neighbours always survive).
    "elitist": by error alone, ties to lower complexity, plus the Pareto front.
    """
    if method == "nsga2":
        primary = pareto_ranks(nmse, complexity, problem)
    elif method == "elitist":
        primary = np.where(pareto_ranks(nmse, complexity, problem) == 0, 0, 1)
    else:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {method!r}")
    order = np.lexsort((complexity, nmse, primary, problem))
    p = problem[order]
    start = np.searchsorted(p, p, side="left")
    place = np.arange(len(order)) - start
    return np.sort(order[place < per_problem])


def tournament(rng: np.random.Generator, nmse, complexity, block_start, block_size, n: int,
               size: int) -> np.ndarray:
    """``n`` winners per problem block: each the best (lowest error, then complexity) of
    ``size`` rows drawn from its block. ``block_start``/``block_size``: (Q,) per problem."""
    Q = len(block_start)
    draws = (rng.random((Q, n, size)) * block_size[:, None, None]).astype(np.int64)
    rows = block_start[:, None, None] + draws
    key = nmse[rows] + 1e-9 * complexity[rows] * np.maximum(nmse[rows], 1e-300)
    key = np.where(np.isfinite(key), key, np.inf)
    best = np.argmin(key, axis=2)
    return np.take_along_axis(rows, best[..., None], 2)[..., 0].reshape(-1)
