"""``refine_constants``: fit the constants of many candidate formulas in one call."""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxsr.expr.programs import ProgramSize, compile_programs
from jaxsr.expr.tree import Expr
from jaxsr.refine import batched, solvers
from jaxsr.refine.objective import Problem

STATUS_OK, STATUS_NON_FINITE, STATUS_NO_CONSTANTS = "ok", "non-finite", "no constants"
# "jaxopt" (the default) and "optax" vmap a library L-BFGS over candidates; "batched" is
# jaxsr's own L-BFGS with the line search flattened into its loop (jaxsr/refine/batched.py).
SOLVERS = ("jaxopt", "optax", "batched")


@dataclasses.dataclass
class RefineResult:
    """Per-candidate results of ``refine_constants`` (arrays of length B, in input order).

    Attributes:
      exprs: the candidates with their refined constants written in.
      constants: the refined constants of each candidate (a list of 1-D arrays).
      loss: weighted mean squared error on the candidate's dataset.
      r2: weighted coefficient of determination there (NaN where the loss is not finite).
      initial_loss: the loss before refinement.
      iterations: L-BFGS steps taken.
      converged: the gradient-norm or exact-fit criterion was met.
      status: "ok", "non-finite" (loss or gradient became non-finite; the best finite point
        seen is returned) or "no constants" (scored, not optimised).
      seconds: wall time of the call.
    """

    exprs: list[Expr]
    constants: list[np.ndarray]
    loss: np.ndarray
    r2: np.ndarray
    initial_loss: np.ndarray
    iterations: np.ndarray
    converged: np.ndarray
    status: np.ndarray
    seconds: float

    def to_frame(self, precision: int | None = 6):
        """The results as a pandas DataFrame, one row per candidate (constants printed with
        ``precision`` significant digits; None for full precision)."""
        import pandas as pd

        return pd.DataFrame({
            "formula": [e.infix(precision=precision) for e in self.exprs],
            "loss": self.loss, "r2": self.r2,
            "initial_loss": self.initial_loss, "iterations": self.iterations,
            "converged": self.converged, "status": self.status})


def refine_constants(
    exprs: Sequence[Expr],
    X,
    y,
    *,
    sample_weight=None,
    dataset_index=None,
    init: str = "model",
    max_iter: int = 50,
    tol: float | None = None,
    solver: str = "jaxopt",
    linesearch: str = "zoom",
    max_linesearch: int = 20,
    dtype=None,
    seed: int = 0,
) -> RefineResult:
    """Refines the float constants of every candidate, all at once, with L-BFGS.

    Args:
      exprs: candidate trees; each one's float constants are its parameters (integers and
        named constants stay fixed).
      X: ``(N, D)`` points shared by all candidates, or ``(P, N, D)`` datasets with
        ``dataset_index`` mapping candidate i to dataset ``dataset_index[i]``.
      y: ``(N,)`` or ``(P, N)`` targets.
      sample_weight: like y; non-negative. A weight of 0 excludes a point (use it to pad
        datasets of different sizes to a common N).
      dataset_index: ``(B,)`` ints; required when X holds several datasets.
      init: "model" starts from each tree's own constants; "random" from N(0, 1) draws.
      max_iter: L-BFGS iterations at most.
      tol: stop a candidate when the gradient norm of its loss divided by the variance of
        y falls below ``tol``; default 1e-10 in float64, 1e-6 in float32.
      solver: "jaxopt" (default), "optax", or "batched" (jaxsr's own L-BFGS: one batched
        evaluation per step, no lock-stepped line search; fastest for large batches).
      linesearch: "zoom" or "backtracking", for jaxopt and optax.
      max_linesearch: line-search steps per iteration at most (for "batched": rejected
        trial steps in a row before a candidate counts as stalled).
      dtype: "float32" (default) or "float64" (runs with x64 enabled).
      seed: seed of the random initialisation.

    Returns:
      A ``RefineResult``. A candidate's loss is never above its initial loss.
    """
    start = time.perf_counter()
    exprs = list(exprs)
    if not exprs:
        raise ValueError("refine_constants needs at least one expression")
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {list(SOLVERS)}")
    if init not in ("model", "random"):
        raise ValueError(f"init must be 'model' or 'random', got {init!r}")
    if linesearch not in ("zoom", "backtracking"):
        raise ValueError(f"linesearch must be 'zoom' or 'backtracking', got {linesearch!r}")
    dtype = np.dtype(dtype or np.float32)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    X, y, weight, dataset_index = _datasets(X, y, sample_weight, dataset_index, len(exprs))
    if tol is None:
        tol = 1e-10 if dtype == np.float64 else 1e-6
    settings = solvers.Settings(solver=solver, max_iter=int(max_iter), tol=float(tol),
                                linesearch=linesearch, max_linesearch=int(max_linesearch),
                                exact_fit=1e-28 if dtype == np.float64 else 1e-12,
                                ftol=1e-13 if dtype == np.float64 else 1e-6)

    with jax.enable_x64(dtype == np.float64):
        outcome, initial, params0, has_constants = _refine_on_devices(
            exprs, X, y, weight, dataset_index, init, seed, dtype, settings)

    variance = _weighted_variance(y, weight)[dataset_index]
    return _result(exprs, outcome, initial, params0, has_constants, variance,
                   time.perf_counter() - start)


def _result(exprs, outcome, initial, params0, has_constants, variance, seconds) -> RefineResult:
    """Assembles per-candidate results from the solver's normalised outcome."""
    # Candidates without constants were never optimised: their loss is the initial one.
    value = np.where(has_constants, outcome.value, initial)
    value = np.where(np.isfinite(value), value, np.where(np.isfinite(initial), initial, np.nan))
    params = np.where(np.isfinite(outcome.value)[:, None], outcome.params, params0)
    status = np.where(~has_constants, STATUS_NO_CONSTANTS,
                      np.where(outcome.non_finite | ~np.isfinite(initial),
                               STATUS_NON_FINITE, STATUS_OK))
    constants = [params[i, : e.n_constants].astype(np.float64) for i, e in enumerate(exprs)]
    return RefineResult(
        exprs=[e.with_constants(c) if e.n_constants else e for e, c in zip(exprs, constants)],
        constants=constants, loss=value * variance, r2=1.0 - value,
        initial_loss=initial * variance, iterations=outcome.iterations,
        converged=outcome.converged & has_constants, status=status, seconds=seconds)


def _refine_on_devices(exprs, X, y, weight, dataset_index, init, seed, dtype, settings):
    """Runs the solver with the candidates split over the local devices (pmap) when there
    are several; returns host arrays (outcome, initial loss, start point, has-constants)."""
    n_shards = jax.local_device_count() if len(exprs) >= jax.local_device_count() else 1
    per_shard = -(-len(exprs) // n_shards)
    padded = list(exprs) + [exprs[-1]] * (per_shard * n_shards - len(exprs))
    index = np.concatenate([dataset_index, np.repeat(dataset_index[-1:], len(padded) - len(exprs))])
    shards = [padded[i * per_shard:(i + 1) * per_shard] for i in range(n_shards)]
    # One size for all shards, so that they stack and share the compiled code.
    sizes = [ProgramSize.fitting(shard) for shard in shards]
    size = ProgramSize(*(max(getattr(z, f) for z in sizes) for f in ("ops", "constants", "depth")))
    programs = [compile_programs(shard, size) for shard in shards]
    params0 = np.concatenate([p.constants for p in programs]).astype(dtype)
    mask = np.concatenate([p.constant_mask for p in programs])
    if init == "random":
        draws = np.random.default_rng(seed).standard_normal(params0.shape)
        params0 = np.where(mask, draws, 0.0).astype(dtype)
    has_constants = mask.any(axis=1)
    inverse_variance = 1.0 / _weighted_variance(y, weight)[index]
    shard = lambda a: a.reshape(n_shards, per_shard, *a.shape[1:])
    problem = Problem(jax.tree.map(lambda *leaves: np.stack(leaves), *programs),
                      jnp.asarray(X, dtype), jnp.asarray(y, dtype), jnp.asarray(weight, dtype),
                      shard(index.astype(np.int32)), shard(inverse_variance.astype(dtype)))
    outcome, initial = _pmapped_refine(settings)(problem, shard(params0), shard(has_constants))
    unshard = lambda a: np.asarray(a).reshape(-1, *a.shape[2:])[: len(exprs)]
    return (jax.tree.map(unshard, outcome), unshard(initial), params0[: len(exprs)],
            has_constants[: len(exprs)])


def _refine(problem: Problem, params0, has_constants, settings: solvers.Settings):
    initial = problem.losses(params0)
    run = batched.run_batched if settings.solver == "batched" else solvers.run
    outcome = run(problem, params0, has_constants, settings)
    return outcome, initial


@functools.lru_cache(maxsize=32)
def _pmapped_refine(settings: solvers.Settings):
    """``_refine`` mapped over a leading device axis (one device: a size-1 axis).

    Built once per settings: pmap caches its compiled code by function identity.
    """
    axes = Problem(programs=0, X=None, y=None, weight=None, dataset_index=0,
                   inverse_variance=0)
    return jax.pmap(functools.partial(_refine, settings=settings), in_axes=(axes, 0, 0))


def _datasets(X, y, sample_weight, dataset_index, n_candidates):
    """Validates and normalises the data to (P, N, D), (P, N), weights (P, N), index (B,)."""
    X = np.asarray(X, np.float64)
    y = np.asarray(y, np.float64)
    if X.ndim == 2 and y.ndim == 1:
        X, y = X[None], y[None]
        if dataset_index is None:
            dataset_index = np.zeros(n_candidates, np.int64)
    if X.ndim != 3 or y.ndim != 2 or X.shape[:2] != y.shape:
        raise ValueError(f"expected X (N, D) with y (N,), or X (P, N, D) with y (P, N); "
                         f"got X {X.shape} and y {y.shape}")
    if dataset_index is None:
        raise ValueError(f"X holds {X.shape[0]} datasets: pass dataset_index (one per candidate)")
    dataset_index = np.asarray(dataset_index)
    if dataset_index.shape != (n_candidates,) or not np.issubdtype(dataset_index.dtype, np.integer):
        raise ValueError(f"dataset_index must be {n_candidates} integers, got {dataset_index.shape}")
    if dataset_index.min() < 0 or dataset_index.max() >= X.shape[0]:
        raise ValueError(f"dataset_index out of range [0, {X.shape[0]})")
    weight = np.ones_like(y) if sample_weight is None else np.asarray(sample_weight, np.float64)
    weight = np.broadcast_to(weight.reshape(y.shape) if weight.size == y.size else weight, y.shape)
    if np.any(~np.isfinite(weight)) or np.any(weight < 0):
        raise ValueError("sample_weight must be finite and non-negative")
    used = weight > 0
    if np.any(~np.isfinite(X[used])) or np.any(~np.isfinite(y[used])):
        raise ValueError("X and y must be finite where sample_weight > 0 (NaN or inf found)")
    if np.any(used.sum(axis=1) < 2):
        raise ValueError("every dataset needs at least 2 points with positive weight")
    X = np.where(used[..., None], X, 0.0)
    y = np.where(used, y, 0.0)
    return X, y, weight / weight.sum(axis=1, keepdims=True), dataset_index


def _weighted_variance(y: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """(P,) weighted variance of each dataset (weights sum to 1); 1 for a constant y."""
    mean = np.sum(weight * y, axis=1, keepdims=True)
    variance = np.sum(weight * (y - mean) ** 2, axis=1)
    return np.where(variance > 0, variance, 1.0)
