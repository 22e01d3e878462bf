"""Shared test helpers."""

import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_NUDGES = np.random.default_rng(20261205).uniform(-3.0, 3.0, 80)


def well_conditioned(expr, X, values, nudge=1e-10, tol=1e-6):
    """Points where ``values`` are finite, moderate and stable under a small nudge.

    Each column of X and each constant is scaled by a slightly different ``1 + O(nudge)``
    (a uniform scale would cancel in ratios). Where the value then moves by more than
    ``tol`` relative, two correct implementations may round to very different numbers
    (sin of a huge argument, near-cancellation), so comparisons skip those points.
    """
    # Multipliers with no simple relation between them: with integer ones (1, -2, 3) the
    # nudges of x_2 * x_1 / c cancelled exactly, and cos of a 1e39 argument passed as stable.
    pattern = 1 + nudge * _NUDGES
    consts = expr.constants()
    # Columns take the first multipliers and constants later ones, so none are shared.
    nudged = expr.with_constants(consts * np.resize(pattern[16:], len(consts)))
    moved = nudged.evaluate(X * pattern[: X.shape[1]])
    with np.errstate(all="ignore"):
        stable = np.abs(moved - values) <= tol * np.abs(values) + 1e-3 * tol
    return np.isfinite(values) & (np.abs(values) < 1e12) & stable
