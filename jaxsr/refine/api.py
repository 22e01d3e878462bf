"""``refine_constants``: fit the constants of many candidate formulas in one call."""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxsr import parallel
from jaxsr.expr.compiler import Nodes, ProgramSize, assemble
from jaxsr.expr.tree import Expr
from jaxsr.refine import batched, solvers
from jaxsr.refine.objective import CandidateBatch
from jaxsr.shapes import next_power_of_two

STATUS_OK, STATUS_NON_FINITE, STATUS_NO_CONSTANTS = "ok", "non-finite", "no constants"
# "batched" (the default) is jaxsr's own L-BFGS with the line search flattened into its loop
# and the batch shrinking as candidates finish (jaxsr/refine/batched.py); "jaxopt" and
# "optax" vmap a library L-BFGS over all candidates in lock-step (jaxsr/refine/solvers.py).
# benchmarks/refine.py measures the three side by side: see the README for why "batched"
# is the default although jaxopt is the usual choice for batched L-BFGS in JAX.
SOLVERS = ("batched", "jaxopt", "optax")


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
    solver: str = "batched",
    linesearch: str = "zoom",
    max_linesearch: int = 20,
    dtype=None,
    seed: int = 0,
    min_size: ProgramSize | None = None,
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
      solver: "batched" (default: jaxsr's own L-BFGS, one batched evaluation per step for
        all candidates, finished candidates leave the batch), "jaxopt" (``jaxopt.LBFGS``
        vmapped over candidates) or "optax" (``optax.lbfgs`` vmapped). The library solvers
        run their line searches in lock-step and are 10-50x slower on large batches.
      linesearch: "zoom" or "backtracking", for jaxopt and optax.
      max_linesearch: line-search steps per iteration at most (for "batched": rejected
        trial steps in a row before a candidate counts as stalled).
      dtype: "float32" (default) or "float64" (runs with x64 enabled).
      seed: seed of the random initialisation.
      min_size: program capacities to use at least; a caller that knows a bound on its
        candidates (the search's maximum length) passes it so that every call reuses one
        compiled solver instead of compiling one per size bucket.

    Returns:
      A ``RefineResult``. A candidate's loss is never above its initial loss.
    """
    start = time.perf_counter()
    exprs = list(exprs)
    if not exprs:
        raise ValueError("refine_constants needs at least one expression")
    if init not in ("model", "random"):
        raise ValueError(f"init must be 'model' or 'random', got {init!r}")
    dtype = np.dtype(dtype or np.float32)
    settings = solver_settings(dtype, max_iter=max_iter, tol=tol, solver=solver,
                               linesearch=linesearch, max_linesearch=max_linesearch)
    datasets = Datasets.validated(X, y, sample_weight)
    dataset_index = datasets.index(dataset_index, len(exprs))
    nodes = Nodes.of_exprs(exprs)
    params0 = None
    if init == "random":
        # Drawn at the solver's padded width: a seed's start points do not depend on how
        # many constants the longest candidate has within its bucket.
        width = _solver_size(nodes, min_size).constants
        draws = np.random.default_rng(seed).standard_normal((nodes.n_programs, width))
        params0 = np.where(np.arange(width) < nodes.n_constants[:, None], draws, 0.0)
    refined = refine_nodes(nodes, datasets, dataset_index, settings, dtype=dtype,
                           params0=params0, min_size=min_size)
    variance = datasets.variance[dataset_index]
    constants = [refined.params[i, : e.n_constants] for i, e in enumerate(exprs)]
    return RefineResult(
        exprs=[e.with_constants(c) if e.n_constants else e for e, c in zip(exprs, constants)],
        constants=constants, loss=refined.nmse * variance, r2=1.0 - refined.nmse,
        initial_loss=refined.initial_nmse * variance, iterations=refined.iterations,
        converged=refined.converged, status=refined.status,
        seconds=time.perf_counter() - start)


def solver_settings(dtype, max_iter: int = 50, tol: float | None = None,
                    solver: str = "batched", linesearch: str = "zoom",
                    max_linesearch: int = 20) -> solvers.Settings:
    """The solver's settings, validated (arguments as for ``refine_constants``); ``tol`` and
    the exact-fit and stall thresholds default to levels ``dtype`` resolves."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {list(SOLVERS)}")
    if linesearch not in ("zoom", "backtracking"):
        raise ValueError(f"linesearch must be 'zoom' or 'backtracking', got {linesearch!r}")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    wide = dtype == np.float64
    if tol is None:
        tol = 1e-10 if wide else 1e-6
    return solvers.Settings(solver=solver, max_iter=int(max_iter), tol=float(tol),
                            linesearch=linesearch, max_linesearch=int(max_linesearch),
                            exact_fit=1e-28 if wide else 1e-12, ftol=1e-13 if wide else 1e-6)


@dataclasses.dataclass(frozen=True)
class Datasets:
    """Datasets candidates are refined on, validated: X (P, N, D), y (P, N), weight (P, N)
    summing to 1 per dataset (0 excludes a point; X and y are 0 there), and the weighted
    variance of each y (P,), 1 for a constant y."""

    X: np.ndarray
    y: np.ndarray
    weight: np.ndarray
    variance: np.ndarray

    @staticmethod
    def validated(X, y, sample_weight=None) -> Datasets:
        """From X (N, D) with y (N,), or X (P, N, D) with y (P, N); one-line errors name
        what is wrong."""
        X = np.asarray(X, np.float64)
        y = np.asarray(y, np.float64)
        if X.ndim == 2 and y.ndim == 1:
            X, y = X[None], y[None]
        if X.ndim != 3 or y.ndim != 2 or X.shape[:2] != y.shape:
            raise ValueError(f"expected X (N, D) with y (N,), or X (P, N, D) with y (P, N); "
                             f"got X {X.shape} and y {y.shape}")
        weight = (np.ones_like(y) if sample_weight is None
                  else np.asarray(sample_weight, np.float64))
        weight = np.broadcast_to(weight.reshape(y.shape) if weight.size == y.size else weight,
                                 y.shape)
        if np.any(~np.isfinite(weight)) or np.any(weight < 0):
            raise ValueError("sample_weight must be finite and non-negative")
        used = weight > 0
        if np.any(~np.isfinite(X[used])) or np.any(~np.isfinite(y[used])):
            raise ValueError("X and y must be finite where sample_weight > 0 (NaN or inf found)")
        if np.any(used.sum(axis=1) < 2):
            raise ValueError("every dataset needs at least 2 points with positive weight")
        weight = weight / weight.sum(axis=1, keepdims=True)
        y = np.where(used, y, 0.0)
        mean = np.sum(weight * y, axis=1, keepdims=True)
        variance = np.sum(weight * (y - mean) ** 2, axis=1)
        return Datasets(np.where(used[..., None], X, 0.0), y, weight,
                        np.where(variance > 0, variance, 1.0))

    def index(self, dataset_index, n_candidates: int) -> np.ndarray:
        """``dataset_index`` checked against the datasets (None: all on the only one)."""
        if dataset_index is None:
            if len(self.y) > 1:
                raise ValueError(f"X holds {len(self.y)} datasets: pass dataset_index "
                                 f"(one per candidate)")
            return np.zeros(n_candidates, np.int64)
        dataset_index = np.asarray(dataset_index)
        if (dataset_index.shape != (n_candidates,)
                or not np.issubdtype(dataset_index.dtype, np.integer)):
            raise ValueError(f"dataset_index must be {n_candidates} integers, "
                             f"got {dataset_index.shape}")
        if dataset_index.min() < 0 or dataset_index.max() >= len(self.y):
            raise ValueError(f"dataset_index out of range [0, {len(self.y)})")
        return dataset_index


@dataclasses.dataclass
class Refined:
    """What ``refine_nodes`` found, per candidate (arrays of length B).

    Attributes:
      params: (B, K) float64 refined constants in each program's constant order (the
        start point where no finite loss was reached).
      nmse, initial_nmse: loss after and before (weighted MSE / variance of y; the start's
        where no finite loss was reached, NaN if none was finite).
      iterations, converged, status: as in ``RefineResult``.
    """

    params: np.ndarray
    nmse: np.ndarray
    initial_nmse: np.ndarray
    iterations: np.ndarray
    converged: np.ndarray
    status: np.ndarray


def refine_nodes(nodes: Nodes, datasets: Datasets, dataset_index: np.ndarray,
                 settings: solvers.Settings, *, dtype=np.float32, params0=None,
                 min_size: ProgramSize | None = None) -> Refined:
    """``refine_constants`` for candidates already in array form: the interpreter's flat
    node arrays (``compiler.Nodes``, as the search builds them from its populations), with
    no trees on the way in or out.

    ``params0`` (B, >= K) is the start point; default the programs' own constants.
    ``settings`` comes from ``solver_settings``.
    """
    dtype = np.dtype(dtype)
    size = _solver_size(nodes, min_size)
    K = size.constants
    start = nodes.constants if params0 is None else np.asarray(params0, np.float64)
    params0 = np.zeros((nodes.n_programs, K))
    width = min(K, start.shape[1])
    params0[:, :width] = start[:, :width]
    has_constants = nodes.n_constants > 0
    with jax.enable_x64(dtype == np.float64):
        data = _Data(jnp.asarray(datasets.X, dtype), jnp.asarray(datasets.y, dtype),
                     jnp.asarray(datasets.weight, dtype), dataset_index,
                     1.0 / datasets.variance[dataset_index])
        if settings.solver == "batched":
            run = functools.partial(_refine_in_rounds, min_size=min_size)
        else:
            run = _refine_lockstep
        outcome, initial = run(nodes, data, params0.astype(dtype), has_constants, size,
                               settings)
    # Candidates without constants were never optimised: their loss is the initial one.
    value = np.where(has_constants, outcome.value, initial)
    value = np.where(np.isfinite(value), value, np.where(np.isfinite(initial), initial, np.nan))
    params = np.where(np.isfinite(outcome.value)[:, None],
                      np.asarray(outcome.params, np.float64), params0)
    status = np.where(~has_constants, STATUS_NO_CONSTANTS,
                      np.where(outcome.non_finite | ~np.isfinite(initial),
                               STATUS_NON_FINITE, STATUS_OK))
    return Refined(params, value, np.asarray(initial, np.float64), outcome.iterations,
                   outcome.converged & has_constants, status)


@dataclasses.dataclass(frozen=True)
class _Data:
    """The datasets on the device, and per candidate its dataset and 1 / variance of y."""

    X: jax.Array
    y: jax.Array
    weight: jax.Array
    dataset_index: np.ndarray
    inverse_variance: np.ndarray


class _Shards:
    """Some candidates padded and split over the local devices, as a ``CandidateBatch``
    with a leading device axis.

    Padding lanes hold filler programs (``Nodes.take``'s -1: no operators, no constants)
    and are never active.
    """

    def __init__(self, nodes: Nodes, lanes, data: _Data, size: ProgramSize,
                 per_shard: int | None, dtype):
        """``size``: the capacities, of which ``ops`` is a minimum: it grows to what the
        fullest shard needs (bucketed)."""
        self.split = parallel.Split.of(len(lanes), per_device=per_shard)
        padded = np.full(self.split.total, -1)
        padded[: len(lanes)] = lanes
        per = self.split.per_device
        shards = [nodes.take(padded[i * per:(i + 1) * per]) for i in range(self.split.devices)]
        ops = max([size.ops] + [_bucketed(ProgramSize.of_nodes(s)).ops for s in shards])
        size = dataclasses.replace(size, ops=ops)
        programs = [assemble(s, size) for s in shards]
        self.problem = CandidateBatch(
            jax.tree.map(lambda *leaves: np.stack(leaves), *programs), data.X, data.y,
            data.weight, self.pad_and_shard(data.dataset_index[lanes].astype(np.int32), 0),
            self.pad_and_shard(data.inverse_variance[lanes].astype(dtype), 1))

    def pad_and_shard(self, a, fill=0):
        """(lanes, ...) -> (devices, per_shard, ...), padding lanes set to ``fill``."""
        return self.split.shard(np.asarray(a), fill)

    def unshard(self, tree):
        """Back to (lanes, ...) on the host, padding dropped."""
        return self.split.unshard(jax.device_get(tree))


def _refine_lockstep(nodes, data, params0, has_constants, size, settings):
    """jaxopt / optax: every candidate in one vmapped solver loop per device."""
    shards = _Shards(nodes, np.arange(nodes.n_programs), data, size, None, params0.dtype)
    outcome, initial = _pmapped_lockstep(settings)(
        shards.problem, shards.pad_and_shard(params0), shards.pad_and_shard(has_constants))
    return shards.unshard(outcome), shards.unshard(initial)


def _lockstep(problem: CandidateBatch, params0, has_constants, settings: solvers.Settings):
    return solvers.run(problem, params0, has_constants, settings), problem.losses(params0)


# The batched solver shrinks its batch as candidates finish: every round holds a power of
# two of lanes per device (at least MIN_LANES; padding lanes are idle), runs until at most
# 1/SHRINK of them remain active, and the next round compiles only those. A round thus
# costs about as much as the work of its lanes, and the handful of slow candidates that
# every large batch has no longer make every step pay for the whole batch. Power-of-two
# sizes bound the compiled variants (one per size, shared by all later calls).
SHRINK, MIN_LANES = 4, 64


def _refine_in_rounds(nodes, data, params0, has_constants, size, settings, min_size=None):
    """The batched solver, in rounds over ever smaller batches of the active candidates."""
    n_devices = parallel.device_count()
    state = batched.initial_state(params0, has_constants, settings.history, settings.max_iter)
    # The budget travels in the state: one compiled round serves every max_iter.
    round_settings = dataclasses.replace(settings, max_iter=0)
    # Each round's operator capacity follows its own lanes (at least min_size's).
    round_size = dataclasses.replace(size, ops=min_size.ops if min_size else 4)
    lanes = np.arange(nodes.n_programs)
    while len(lanes):
        per_shard = next_power_of_two(-(-len(lanes) // n_devices), MIN_LANES)
        shards = _Shards(nodes, lanes, data, round_size, per_shard, params0.dtype)
        start = {k: shards.pad_and_shard(v[lanes], v[0]) for k, v in state.items()}
        start["active"] = shards.pad_and_shard(state["active"][lanes], False)
        max_active = per_shard // SHRINK if per_shard > MIN_LANES else 0
        result = shards.unshard(_pmapped_round(round_settings)(
            shards.problem, start, np.full(n_devices, max_active, np.int32)))
        for k, v in result.items():
            state[k][lanes] = v
        lanes = lanes[result["active"]]
    return batched.outcome(state), state["initial"]


def _solver_size(nodes: Nodes, min_size: ProgramSize | None) -> ProgramSize:
    """The capacities the solver's batch of ``nodes`` gets: bucketed, at least
    ``min_size``."""
    return _at_least(_bucketed(ProgramSize.of_nodes(nodes)), min_size)


def _bucketed(size: ProgramSize) -> ProgramSize:
    """Each field rounded up to a power of two (at least 4): calls with similar candidates
    then share compiled code. Only buffer sizes grow; the work follows the actual nodes."""
    return ProgramSize(*(next_power_of_two(n, 4) for n in (size.ops, size.constants, size.depth)))


def _at_least(size: ProgramSize, bound: ProgramSize | None) -> ProgramSize:
    """Each field of ``size`` raised to ``bound``'s (no change without a bound)."""
    if bound is None:
        return size
    return ProgramSize(max(size.ops, bound.ops), max(size.constants, bound.constants),
                       max(size.depth, bound.depth))


@functools.lru_cache(maxsize=32)
def _pmapped_lockstep(settings: solvers.Settings):
    """``_lockstep`` mapped over a leading device axis (one device: a size-1 axis).

    Built once per settings: pmap caches its compiled code by function identity.
    """
    return parallel.pmap(functools.partial(_lockstep, settings=settings),
                         in_axes=(_AXES, 0, 0))


@functools.lru_cache(maxsize=32)
def _pmapped_round(settings: solvers.Settings):
    return parallel.pmap(functools.partial(batched.run_round, settings=settings),
                         in_axes=(_AXES, 0, 0))


# Programs and per-candidate arrays are split over devices; the datasets are replicated.
_AXES = CandidateBatch(programs=0, X=None, y=None, weight=None, dataset_index=0,
                       inverse_variance=0)
