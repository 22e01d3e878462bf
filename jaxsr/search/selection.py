"""Selection: duplicates out, Pareto fronts of error against complexity, tournaments.

Every function works on a whole population whose rows belong to several problems
(``problem`` (P,)): problems never compete with each other.
"""

from __future__ import annotations

import numpy as np

SELECTIONS = ("nsga2", "elitist")
UNRANKED = np.iinfo(np.int64).max


def unique_best(keys: np.ndarray, problem: np.ndarray, nmse: np.ndarray) -> np.ndarray:
    """Rows to keep so that each (problem, skeleton key) appears once: its lowest error
    (ties: the first row)."""
    order = np.lexsort((nmse, keys, problem))
    pairs = np.stack([problem[order], keys[order]], 1)
    first = np.concatenate([[True], np.any(pairs[1:] != pairs[:-1], axis=1)])
    return np.sort(order[first])


def pareto_ranks(nmse: np.ndarray, complexity: np.ndarray, problem: np.ndarray,
                 enough: int | None = None) -> np.ndarray:
    """Non-domination rank of every row within its problem (0: the Pareto front of error
    against complexity; then the front of what is left, and so on).

    A row is dominated when another row of its problem is no worse on both objectives and
    better on one. With integer complexities a front is found in one vectorised pass:
    sorted by (problem, complexity, error), a row is on it when it is the best at its
    complexity and its error is below every error at lower complexity.

    Args:
      enough: stop once every problem has at least this many ranked rows; the rest get
        rank ``UNRANKED`` (selection never needs them).
    """
    n = len(nmse)
    rank = np.full(n, UNRANKED, np.int64)
    if n == 0:
        return rank
    # Errors as dense integer ranks, offset so that every earlier problem's values exceed
    # every later problem's: one running minimum over the whole sorted array then never
    # carries a value across a problem boundary.
    levels = np.unique(nmse, return_inverse=True)[1].reshape(-1).astype(np.int64)
    n_problems = int(problem.max()) + 1
    key = levels + (n_problems - 1 - problem.astype(np.int64)) * (n + 1)
    left = np.lexsort((nmse, complexity, problem))
    counted = np.zeros(n_problems, np.int64)
    r = 0
    while len(left):
        p, c, k = problem[left], complexity[left], key[left]
        new_problem = np.concatenate([[True], p[1:] != p[:-1]])
        first_at_c = new_problem | np.concatenate([[True], c[1:] != c[:-1]])
        before = np.minimum.accumulate(np.concatenate([[UNRANKED], k[:-1]]))
        # A problem's simplest remaining row is always on its front (even at infinite
        # error), so every pass removes at least one row per problem and the loop ends.
        on_front = first_at_c & ((k < before) | new_problem)
        rank[left[on_front]] = r
        counted += np.bincount(p[on_front], minlength=n_problems)
        left = left[~on_front]
        r += 1
        if enough is not None and np.all(counted >= enough):
            break
    return rank


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
        primary = pareto_ranks(nmse, complexity, problem, enough=per_problem)
    elif method == "elitist":
        primary = np.where(pareto_ranks(nmse, complexity, problem, enough=1) == 0, 0, 1)
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
