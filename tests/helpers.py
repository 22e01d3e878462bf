"""Shared test helpers."""

import numpy as np


def well_conditioned(expr, X, values, nudge=1e-10, tol=1e-6):
    """Points where ``values`` are finite, moderate and stable under a small nudge.

    Each column of X and each constant is scaled by a slightly different ``1 + O(nudge)``
    (a uniform scale would cancel in ratios). Where the value then moves by more than
    ``tol`` relative, two correct implementations may round to very different numbers
    (sin of a huge argument, near-cancellation), so comparisons skip those points.
    """
    pattern = 1 + nudge * np.array([1.0, -2.0, 3.0, -1.5, 2.5] * 8)
    consts = expr.constants()
    nudged = expr.with_constants(consts * pattern[: len(consts)][::-1])
    moved = nudged.evaluate(X * pattern[: X.shape[1]])
    with np.errstate(all="ignore"):
        stable = np.abs(moved - values) <= tol * np.abs(values) + 1e-3 * tol
    return np.isfinite(values) & (np.abs(values) < 1e12) & stable
