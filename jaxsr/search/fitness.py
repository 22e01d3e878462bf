"""Fitness: every candidate's error after the best affine map a + b f(x), in one call.

A formula f is scored by the weighted mean squared error of ``a + b f(x)`` against y, with
a and b solved in closed form per candidate (linear scaling): the search then only has to
find the shape of a formula, not its scale and offset. Evaluation and the least-squares
solve run in one jit-compiled call for the whole population (all problems of a
``fit_many`` together, each candidate on its own problem's data). Everything is per row,
so a candidate that is NaN or overflows anywhere on its points gets an infinite error in
its own lane only.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxsr.expr.programs import assemble, evaluate_programs, pairwise_sum
from jaxsr.search.population import Genomes, Structure, program_size, to_nodes


@dataclasses.dataclass(frozen=True)
class Data:
    """The problems a search fits, stacked: X (Q, N, D), y (Q, N), weights (Q, N) summing to
    1 per problem (0 on padding), and the weighted variance of each y (Q,)."""

    X: np.ndarray
    y: np.ndarray
    weight: np.ndarray
    variance: np.ndarray

    @staticmethod
    def stack(problems, width: int | None = None) -> Data:
        """From (X (n, d), y (n,), weight (n,) or None) triples of any sizes. Points are
        padded (weight 0) to a power of two and columns to ``width``, so that searches on
        similar data reuse the compiled evaluator."""
        n = max(16, 1 << (max(len(p[1]) for p in problems) - 1).bit_length())
        d = max([np.shape(p[0])[1] for p in problems] + [width or 0])
        Q = len(problems)
        X, y, weight = np.zeros((Q, n, d)), np.zeros((Q, n)), np.zeros((Q, n))
        for q, (Xq, yq, wq) in enumerate(problems):
            m = len(yq)
            X[q, :m, : np.shape(Xq)[1]], y[q, :m] = Xq, yq
            weight[q, :m] = 1.0 if wq is None else wq
        weight /= weight.sum(axis=1, keepdims=True)
        mean = (weight * y).sum(axis=1, keepdims=True)
        variance = (weight * (y - mean) ** 2).sum(axis=1)
        return Data(X, y, weight, np.where(variance > 0, variance, 1.0))

    @property
    def n_problems(self) -> int:
        return len(self.y)


@dataclasses.dataclass(frozen=True)
class Scores:
    """Per candidate: normalised error (MSE / variance of y; inf when not finite),
    intercept a and slope b of the fitted ``a + b f``."""

    nmse: np.ndarray
    intercept: np.ndarray
    slope: np.ndarray

    @property
    def r2(self) -> np.ndarray:
        return 1.0 - self.nmse

    def take(self, rows) -> Scores:
        return Scores(self.nmse[rows], self.intercept[rows], self.slope[rows])

    @staticmethod
    def concatenate(parts) -> Scores:
        return Scores(*(np.concatenate([getattr(p, f) for p in parts])
                        for f in ("nmse", "intercept", "slope")))


def score(genomes: Genomes, problem: np.ndarray, data: Data, dtype=np.float64) -> Scores:
    """Scores every row of ``genomes`` on its problem's data (``problem`` (P,) ints)."""
    structure = Structure.of(genomes)
    programs = assemble(to_nodes(genomes, structure), program_size(genomes))
    # A constant beyond float32's range becomes inf in its own lane (scored inf): not an
    # error worth a warning.
    with jax.enable_x64(np.dtype(dtype) == np.float64), np.errstate(over="ignore"):
        mse, a, b = _scaled_errors(programs, jnp.asarray(data.X, dtype), jnp.asarray(data.y, dtype),
                                   jnp.asarray(data.weight, dtype), jnp.asarray(problem, jnp.int32))
        mse, a, b = (np.asarray(v, np.float64) for v in (mse, a, b))
    nmse = mse / data.variance[problem]
    return Scores(np.where(np.isfinite(nmse), nmse, np.inf), a, b)


@functools.partial(jax.jit, donate_argnums=())
def _scaled_errors(programs, X, y, weight, index):
    f = evaluate_programs(programs, X, dataset_index=index)
    return linear_scaling(f, y[index], weight[index])


def linear_scaling(f, y, weight):
    """Least-squares a, b of ``y ~ a + b f`` per row and the weighted MSE (inf where f is not
    finite on a weighted point). Rows of f, y, weight: (B, N); weights sum to 1 per row."""
    used = weight > 0
    finite = jnp.all(jnp.isfinite(f) | ~used, axis=1)
    f = jnp.where(used & jnp.isfinite(f), f, 0.0)
    total = lambda v: pairwise_sum(weight * v)
    mean_f, mean_y = total(f), total(y)
    df = f - mean_f[:, None]
    var_f, cov = total(df * df), total(df * (y - mean_y[:, None]))
    # A constant f (variance at rounding level) explains nothing beyond the mean of y.
    informative = var_f > 1e-12 * mean_f * mean_f + 1e-300
    slope = jnp.where(informative, cov / jnp.where(informative, var_f, 1.0), 0.0)
    intercept = mean_y - slope * mean_f
    residual = y - intercept[:, None] - slope[:, None] * f
    mse = total(residual * residual)
    ok = finite & jnp.isfinite(mse) & jnp.isfinite(slope) & jnp.isfinite(intercept)
    return jnp.where(ok, mse, jnp.inf), jnp.where(ok, intercept, 0.0), jnp.where(ok, slope, 0.0)
