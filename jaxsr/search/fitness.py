"""Fitness: every candidate's error after the best linear map of its terms, in one call.

A formula f whose root is a sum (``add``/``sub``) is split into its additive terms
t_1..t_k (``population.Terms``, at most ``MAX_TERMS``); any other formula is one term. It
is scored by the weighted mean squared error of ``a + b_1 t_1 + ... + b_k t_k`` against y,
with a and the b's solved by least squares per candidate. The search thus only has to find
the shapes of the terms, not their scales and offset: ``3x - 2xy - x^2`` is found as soon as
``x + xy + x^2`` is (multiple-regression GP; with k = 1 this is the usual linear scaling
``a + b f``). Evaluation and the least-squares solves run in two jit-compiled calls for the
whole population (all problems of a ``fit_many`` together, each candidate on its own
problem's data): one pass of the interpreter for the terms' values, then the solves;
``dispatch`` starts them and returns, ``Pending.result`` waits. Everything is per row, so a
candidate that is NaN or overflows anywhere on its points gets an infinite error in its own
lane only.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxsr.expr import interpreter
from jaxsr.expr.compiler import MAX_CHUNK, ProgramSize, assemble, default_chunk
from jaxsr.refine.api import Datasets
from jaxsr.search.population import Genomes, Structure, Terms, program_size, to_nodes
from jaxsr.shapes import next_power_of_two

MAX_TERMS = 4
# Ridge on the standardised terms' Gram matrix (a correlation matrix), in units of the
# dtype's epsilon: collinear terms (x and 2x) share their weight instead of making the solve
# singular, and the bias it adds to an exact fit stays at rounding level.
RIDGE_EPSILONS = 100


# Points are padded to a multiple of this (the evaluator's point blocks are 32 points wide
# on large batches): 200 points cost 224, not 256.
POINT_MULTIPLE = 32


def padded_points(n: int) -> int:
    """Points a problem of ``n`` points is padded to: a power of two up to
    ``POINT_MULTIPLE``, then a multiple of it (at most 8 distinct sizes up to the
    regressor's 256 search rows, each compiled once)."""
    if n <= POINT_MULTIPLE:
        return next_power_of_two(n, minimum=16)
    return -(-n // POINT_MULTIPLE) * POINT_MULTIPLE


@dataclasses.dataclass(frozen=True)
class Data(Datasets):
    """The problems a search fits, stacked: X (Q, N, D), y (Q, N), weights (Q, N) summing to
    1 per problem (0 on padding), and the weighted variance of each y (Q,); the same
    ``Datasets`` L-BFGS refines on, padded for the evaluator."""

    @staticmethod
    def stack(problems, width: int | None = None) -> Data:
        """From (X (n, d), y (n,), weight (n,) or None) triples of any sizes. Points are
        padded (weight 0) to ``padded_points`` and columns to ``width``, so that searches
        on similar data reuse the compiled evaluator. Weights are normalised and checked,
        and variances computed, as for refinement (``Datasets.validated``)."""
        n = padded_points(max(len(p[1]) for p in problems))
        d = max([np.shape(p[0])[1] for p in problems] + [width or 0])
        Q = len(problems)
        X, y, weight = np.zeros((Q, n, d)), np.zeros((Q, n)), np.zeros((Q, n))
        for q, (Xq, yq, wq) in enumerate(problems):
            m = len(yq)
            X[q, :m, : np.shape(Xq)[1]], y[q, :m] = Xq, yq
            weight[q, :m] = 1.0 if wq is None else wq
        valid = Datasets.validated(X, y, weight)
        return Data(valid.X, valid.y, valid.weight, valid.variance)

    @property
    def n_problems(self) -> int:
        return len(self.y)


@dataclasses.dataclass(frozen=True)
class Scores:
    """Per candidate: normalised error (MSE / variance of y; inf when not finite), and the
    fitted ``a + sum_k b_k t_k``: intercept a (P,), coefficients b (P, MAX_TERMS) in the
    order of the terms (``Terms``; 0 for unused slots and terms that are constant) and the
    number of terms k (P,)."""

    nmse: np.ndarray
    intercept: np.ndarray
    coefficients: np.ndarray
    n_terms: np.ndarray

    @property
    def r2(self) -> np.ndarray:
        return 1.0 - self.nmse

    def take(self, rows) -> Scores:
        return Scores(self.nmse[rows], self.intercept[rows], self.coefficients[rows],
                      self.n_terms[rows])

    @staticmethod
    def concatenate(parts) -> Scores:
        return Scores(*(np.concatenate([getattr(p, f) for p in parts])
                        for f in ("nmse", "intercept", "coefficients", "n_terms")))


def score(genomes: Genomes, problem: np.ndarray, data: Data, dtype=np.float64) -> Scores:
    """Scores every row of ``genomes`` on its problem's data (``problem`` (P,) ints)."""
    return dispatch(genomes, problem, data, dtype).result()


def dispatch(genomes: Genomes, problem: np.ndarray, data: Data, dtype=np.float64,
             structure: Structure | None = None, size: ProgramSize | None = None) -> Pending:
    """Starts ``score``: the host builds the tables and hands them to the compiled calls,
    which run while the caller goes on (JAX dispatches asynchronously); ``result()`` waits
    for them. ``structure``: the rows' ``Structure``, where the caller has it. ``size``: the
    capacities to compile for (they must hold the rows; default ``program_size``)."""
    structure = Structure.given(genomes, structure)
    terms = Terms.of(genomes, structure, MAX_TERMS)
    nodes = to_nodes(genomes, structure)
    # The terms' values are read from the formulas' own evaluation (one pass).
    taps = np.where(terms.used, nodes.root[:, None] + terms.start, -1)
    size = size or program_size(genomes)
    programs = assemble(nodes, size, taps=taps, gradients=False,
                        chunk=step_chunk(genomes.size, size, data.X.shape, dtype))
    # A constant beyond float32's range becomes inf in its own lane (scored inf): not an
    # error worth a warning.
    with jax.enable_x64(np.dtype(dtype) == np.float64), np.errstate(over="ignore"):
        values = _scaled_errors(programs, jnp.asarray(data.X, dtype), jnp.asarray(data.y, dtype),
                                jnp.asarray(data.weight, dtype), jnp.asarray(problem, jnp.int32),
                                jnp.asarray(terms.used))
    return Pending(values, data.variance[problem], terms.count)


# Bytes of one operand of an interpreter step (chunk rows x block points): a step's two
# operands and its output then sit in a core's L1 data cache. Measured on a 2-core x86 CPU
# (32 KB L1d), one forward pass over search candidates, float32: 1,024 candidates on 224
# points (one block) in 2.3 ms with chunks of 8 rows against 4.7 ms with 128; 4,096 on
# 32-point blocks in 15 ms with 64 rows against 17 ms with 128, and no waiting for the
# scoring call in whole search generations (7 ms per generation with 128).
STEP_BYTES = 8192


def step_chunk(n_programs: int, size: ProgramSize, data_shape: tuple, dtype) -> int:
    """Chunk rows for scoring ``n_programs`` programs of ``size`` on datasets of
    ``data_shape`` (Q, N, D): ``STEP_BYTES`` per operand over the interpreter's point blocks
    (``interpreter.forward_block_points``, for the largest chunk), a power of two in [8, the
    default chunk]."""
    n_sets, n_points, n_dims = data_shape
    ops = n_programs * size.ops
    itemsize = np.dtype(dtype).itemsize
    block = interpreter.block_points(n_sets * n_dims + ops + MAX_CHUNK, itemsize, n_points,
                                     interpreter.FORWARD_BLOCK_BYTES)
    fit = max(8, STEP_BYTES // (block * itemsize))
    return int(min(default_chunk(ops), 1 << (fit.bit_length() - 1)))


@dataclasses.dataclass
class Pending:
    """Scores being computed: the compiled calls' outputs (mse, a, b) and what turns them
    into ``Scores``."""

    values: tuple
    variance: np.ndarray
    n_terms: np.ndarray

    def result(self) -> Scores:
        mse, a, b = (np.asarray(v, np.float64) for v in self.values)
        with np.errstate(over="ignore"):
            nmse = mse / self.variance
        return Scores(np.where(np.isfinite(nmse), nmse, np.inf), a, b, self.n_terms)


# Candidates per block of the least-squares step. Its passes over the term values stay in
# the cache for a block, instead of streaming the whole population's values from memory on
# every pass (measured on a 2-core x86 CPU: 4,096 candidates of 4 terms on 224 points in
# 9 ms, against 39 ms in one piece; 64 to 512 rows are within 10% of each other).
SCALING_ROWS = 128


def _scaled_errors(programs, X, y, weight, problem, used):
    f = interpreter.evaluate_taps(programs, X, problem)
    return _blocked_scaling(f, y, weight, problem, used)


# A separate compiled call: inside the evaluator's jit, XLA compiled the same blocks to
# code that took 1.7x as long (measured).
@jax.jit
def _blocked_scaling(f, y, weight, problem, used):
    return _over_row_blocks(term_scaling, (f, y[problem], weight[problem], used), SCALING_ROWS)


def _over_row_blocks(fn, arrays, rows: int):
    """``fn(*arrays)`` computed ``rows`` rows (leading axis) at a time, the last block
    padded with zeros; ``fn`` must treat rows independently."""
    B = arrays[0].shape[0]
    rows = min(rows, B)
    n_blocks = -(-B // rows)
    pad = lambda a: jnp.pad(a, [(0, n_blocks * rows - B)] + [(0, 0)] * (a.ndim - 1))
    split = lambda a: pad(a).reshape(n_blocks, rows, *a.shape[1:])
    out = lax.map(lambda block: fn(*block), tuple(split(a) for a in arrays))
    return jax.tree.map(lambda o: o.reshape(n_blocks * rows, *o.shape[2:])[:B], out)


def term_scaling(f, y, weight, used):
    """Weighted least squares of ``y ~ a + sum_k b_k f_k`` per row, and the weighted MSE (inf
    where a used term is not finite on a weighted point).

    Args:
      f: (B, K, N) term values; y, weight: (B, N), weights summing to 1 per row.
      used: (B, K) which terms exist.

    Returns:
      (mse (B,), a (B,), b (B, K)); a term that is constant on the points explains nothing
      beyond the mean of y and gets b = 0.
    """
    K = f.shape[1]
    points = weight > 0
    finite = jnp.all(jnp.isfinite(f) | ~points[:, None, :] | ~used[:, :, None], axis=(1, 2))
    f = jnp.where(used[:, :, None] & points[:, None, :] & jnp.isfinite(f), f, 0.0)
    # The weighted sums over points are batched dot products (einsum): XLA reads the term
    # values once per product instead of once per pair of terms (on a 2-core x86 CPU, 4,096
    # candidates of 4 terms on 224 points: 9 ms, against 14 ms for the pairwise sums). Full
    # precision: an accelerator's default float32 dot (TF32, bfloat16 passes) would cost the
    # fits their last digits.
    dot = functools.partial(jnp.einsum, precision=lax.Precision.HIGHEST)
    mean_f = dot("bkn,bn->bk", f, weight)
    mean_y = jnp.sum(weight * y, axis=-1)
    dy = y - mean_y[:, None]
    centred = f - mean_f[:, :, None]
    weighted = centred * weight[:, None, :]
    gram = dot("bkn,bln->bkl", weighted, centred)
    rhs = dot("bkn,bn->bk", weighted, dy)
    variance = jnp.diagonal(gram, axis1=1, axis2=2)
    informative = used & (variance > 1e-12 * mean_f * mean_f + 1e-300)
    # The system is solved for the standardised terms, whose Gram matrix is a correlation
    # matrix; uninformative terms sit on the identity so that every system is regular.
    scale = jnp.sqrt(jnp.where(informative, variance, 1.0))
    both = informative[:, :, None] & informative[:, None, :]
    corr = jnp.where(both, gram / (scale[:, :, None] * scale[:, None, :]), 0.0)
    ridge = jnp.where(informative, RIDGE_EPSILONS * jnp.finfo(f.dtype).eps, 1.0)
    corr = corr + ridge[:, :, None] * jnp.eye(K, dtype=f.dtype)
    beta = jnp.linalg.solve(corr, (rhs / scale)[..., None])[..., 0]
    slope = jnp.where(informative, beta, 0.0) / scale
    # The residual itself, not the error's closed form (sum of w dy^2 - slope . rhs), which
    # cancels to noise in float32 exactly where the search needs it: near-exact fits.
    residual = dy - dot("bk,bkn->bn", slope, centred)
    mse = jnp.sum(weight * residual * residual, axis=-1)
    intercept = mean_y - jnp.sum(slope * mean_f, axis=1)
    ok = (finite & jnp.isfinite(mse) & jnp.all(jnp.isfinite(slope), axis=1)
          & jnp.isfinite(intercept))
    return (jnp.where(ok, mse, jnp.inf), jnp.where(ok, intercept, 0.0),
            jnp.where(ok[:, None], slope, 0.0))
