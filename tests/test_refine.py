"""Batched constant refinement against known answers and scipy BFGS."""

import numpy as np
import pytest

from jaxsr.expr import Expr, parse_prefix
from jaxsr.expr.random_trees import random_expr
from jaxsr.refine import refine_constants
from jaxsr.refine.reference import scipy_refine

X = np.random.default_rng(0).uniform(0.5, 2.0, size=(60, 2))

KNOWN = [  # (formula in x, y, perturbation) with well-identified constants
    "2.5*x + 0.7*y**2",
    "1.3*sin(0.8*x) + 0.4*y",
    "3.0*exp(-0.5*x) - 1.2",
    "x*(4.0 - x - y/(1.0 + x))",
    "0.5*sin(x - y) - 0.9*sin(x)",
    "2.0 - x*y/(1.0 + 0.5*x**2)",
    "1.7*sqrt(x) + 0.3*log(y)",
    "(0.9*x + 0.2)/(y + 1.5)",
]


def _perturbed(truth, rng, scale=0.2):
    c = truth.constants()
    return truth.with_constants(c * (1 + scale * rng.choice([-1, 1], len(c))))


@pytest.mark.parametrize("solver", ["jaxopt", "batched"])
def test_true_constants_come_back_in_float64(solver):
    rng = np.random.default_rng(1)
    truths = [Expr.from_sympy(f, ["x", "y"]) for f in KNOWN]
    guesses = [_perturbed(t, rng) for t in truths]
    Y = np.stack([t.evaluate(X) for t in truths])
    result = refine_constants(guesses, np.stack([X] * len(KNOWN)), Y,
                              dataset_index=np.arange(len(KNOWN)), dtype="float64",
                              max_iter=200, solver=solver)
    for truth, refined, status in zip(truths, result.constants, result.status):
        assert status == "ok"
        np.testing.assert_allclose(refined, truth.constants(), rtol=1e-5, err_msg=str(truth))
    assert np.all(result.r2 > 1 - 1e-10) and result.converged.all()


def _random_problems(n, seed):
    rng = np.random.default_rng(seed)
    exprs, targets = [], []
    while len(exprs) < n:
        truth = random_expr(rng, n_variables=2, n_operators=int(rng.integers(2, 7)),
                            unary=("sin", "exp", "inv", "sqrt", "pow2", "log"),
                            binary=("add", "sub", "mul"), leaf_probs=(0.5, 0.5, 0.0))
        truth = truth.with_constants(rng.uniform(-2, 2, truth.n_constants))
        y = truth.evaluate(X)
        if truth.n_constants and np.all(np.isfinite(y)) and 1e-3 < y.std() < 1e3:
            exprs.append(_perturbed(truth, rng, 0.3))
            targets.append(y + 0.01 * y.std() * rng.standard_normal(len(y)))
    return exprs, np.stack(targets)


@pytest.mark.parametrize("solver", ["jaxopt", "batched"])
def test_final_loss_at_most_scipy_bfgs_on_95_percent(solver):
    exprs, Y = _random_problems(40, seed=2)
    result = refine_constants(exprs, np.stack([X] * len(exprs)), Y,
                              dataset_index=np.arange(len(exprs)), dtype="float64",
                              max_iter=300, solver=solver)
    scipy_losses = np.array([scipy_refine(e, X, y)[1] for e, y in zip(exprs, Y)])
    ok = result.loss <= scipy_losses * (1 + 1e-3) + 1e-15
    assert ok.mean() >= 0.95, list(zip(result.loss[~ok], scipy_losses[~ok]))


def test_never_worse_than_the_initial_constants():
    exprs, Y = _random_problems(40, seed=3)
    result = refine_constants(exprs, np.stack([X] * len(exprs)), Y,
                              dataset_index=np.arange(len(exprs)), max_iter=10, solver="batched")
    finite = np.isfinite(result.initial_loss)
    assert np.all(result.loss[finite] <= result.initial_loss[finite])


@pytest.mark.parametrize("solver", ["jaxopt", "batched"])
def test_nan_candidate_is_flagged_and_neighbours_unaffected(solver):
    exprs, Y = _random_problems(16, seed=4)
    data = dict(X=np.stack([X] * 16), y=Y, dataset_index=np.arange(16), max_iter=20,
                solver=solver)
    clean = refine_constants(exprs, **data)
    poisoned = list(exprs)
    poisoned[5] = parse_prefix("mul + N1000 E-3 log sub x_0 + N1000 E1")  # log(x - 10): NaN
    dirty = refine_constants(poisoned, **data)
    assert dirty.status[5] == "non-finite"
    others = np.r_[0:5, 6:16]
    np.testing.assert_array_equal(dirty.loss[others], clean.loss[others])
    for i in others:
        np.testing.assert_array_equal(dirty.constants[i], clean.constants[i])


@pytest.mark.slow
def test_a_candidate_gets_the_same_result_alone_or_in_a_batch_of_1000():
    exprs, Y = _random_problems(8, seed=6)
    rng = np.random.default_rng(7)
    crowd = [exprs[int(i)] for i in rng.integers(0, 8, 1000)]
    crowd[:8] = exprs
    index = np.r_[np.arange(8), rng.integers(0, 8, 992)]
    batch = refine_constants(crowd, np.stack([X] * 8), Y, dataset_index=index, max_iter=15,
                             solver="batched")
    for i in (0, 3, 7):
        alone = refine_constants([exprs[i]], X, Y[i], max_iter=15, solver="batched")
        np.testing.assert_array_equal(alone.constants[0], batch.constants[i])
        assert alone.loss[0] == batch.loss[i] and alone.iterations[0] == batch.iterations[i]


def test_candidates_without_constants_are_scored_not_optimised():
    y = X[:, 0] ** 2 + 1
    result = refine_constants([parse_prefix("pow2 x_0"), parse_prefix("add pow2 x_0 1")], X, y,
                              solver="batched")
    assert list(result.status) == ["no constants", "no constants"]
    np.testing.assert_allclose(result.loss[0], 1.0, rtol=1e-6)
    assert result.loss[1] < 1e-10 and result.iterations.tolist() == [0, 0]


def test_optax_backend_and_random_init():
    truth = Expr.from_sympy("2.5*x + 0.7*y**2", ["x", "y"])
    y = truth.evaluate(X)
    for solver, init in (("optax", "model"), ("batched", "random")):
        result = refine_constants([_perturbed(truth, np.random.default_rng(5))], X, y,
                                  solver=solver, init=init, dtype="float64", max_iter=100)
        np.testing.assert_allclose(result.constants[0], [2.5, 0.7], rtol=1e-6)


def test_sample_weight_excludes_points():
    truth = Expr.from_sympy("1.5*x", ["x", "y"])
    y = truth.evaluate(X)
    y_bad = y.copy()
    y_bad[:10] = 1e3  # outliers with zero weight must not matter
    weight = np.r_[np.zeros(10), np.ones(len(y) - 10)]
    result = refine_constants([truth.with_constants([1.0])], X, y_bad, sample_weight=weight,
                              dtype="float64", solver="batched")
    np.testing.assert_allclose(result.constants[0], [1.5], rtol=1e-7)


def test_bad_input_is_named():
    e = [parse_prefix("mul + N1000 E0 x_0")]
    with pytest.raises(ValueError, match="NaN or inf"):
        refine_constants(e, X, np.r_[np.nan, X[1:, 0]])
    with pytest.raises(ValueError, match="unknown solver"):
        refine_constants(e, X, X[:, 0], solver="adam")
    with pytest.raises(ValueError, match="dataset_index"):
        refine_constants(e, np.stack([X, X]), np.stack([X[:, 0]] * 2))
    with pytest.raises(ValueError, match="expected X"):
        refine_constants(e, X, X[:5, 0])
    with pytest.raises(ValueError, match="at least 2 points"):
        refine_constants(e, X[:1], X[:1, 0])


_TWO_DEVICE_SCRIPT = """
import json, sys
import numpy as np
sys.path.insert(0, {tests!r})
import jax
from test_refine import X, _random_problems
from jaxsr.refine import refine_constants
assert jax.local_device_count() == 2
exprs, Y = _random_problems(7, seed=8)
result = refine_constants(exprs, np.stack([X] * 7), Y, dataset_index=np.arange(7), max_iter=15,
                          solver="batched")
print(json.dumps({{"loss": result.loss.tolist(),
                  "constants": [c.tolist() for c in result.constants]}}))
"""


def test_two_devices_give_the_same_results_as_one():
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    tests = str(Path(__file__).resolve().parent)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _TWO_DEVICE_SCRIPT.format(tests=tests)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    two = json.loads(out.stdout.strip().splitlines()[-1])
    exprs, Y = _random_problems(7, seed=8)  # odd: the second device gets a padded shard
    one = refine_constants(exprs, np.stack([X] * 7), Y, dataset_index=np.arange(7),
                           max_iter=15, solver="batched")
    np.testing.assert_array_equal(np.array(two["loss"]), one.loss)
    for a, b in zip(two["constants"], one.constants):
        np.testing.assert_array_equal(np.array(a), b)



def test_fused_loss_and_gradients_match_autodiff_and_keep_their_bits_in_point_blocks(
        monkeypatch):
    import jax
    import jax.numpy as jnp

    from jaxsr.expr import compile_programs, interpreter
    from jaxsr.refine.objective import CandidateBatch

    exprs, Y = _random_problems(8, seed=3)
    programs = compile_programs(exprs)
    weight = np.r_[np.zeros(7), np.ones(len(X) - 7)] / (len(X) - 7)  # some points unused
    with jax.enable_x64(True):
        problem = CandidateBatch(programs, jnp.asarray(np.stack([X] * 8)), jnp.asarray(Y),
                                 jnp.asarray(np.stack([weight] * 8)),
                                 jnp.arange(8, dtype=jnp.int32), jnp.asarray(1 / Y.var(axis=1)))
        consts = jnp.asarray(programs.constants)
        # Compiled, as in the solvers (a fresh function traces anew, reading the block budgets).
        fused = lambda: jax.jit(lambda c: problem.losses_and_grads(c))(consts)
        losses, grads = fused()
        np.testing.assert_allclose(losses, problem.losses(consts), rtol=1e-12)
        expected = jax.grad(lambda c: problem.losses(c).sum())(consts)
        np.testing.assert_allclose(grads, expected, rtol=1e-9, atol=1e-12)
        assert np.all(np.asarray(grads)[~programs.constant_mask] == 0)

        for budget in ("FORWARD_BLOCK_BYTES", "SWEEP_BLOCK_BYTES"):  # points now run in blocks
            monkeypatch.setattr(interpreter, budget, 4096)
        assert interpreter.sweep_block_points(programs, interpreter.point_rows(problem.X)) < 16
        blocked = fused()
        np.testing.assert_array_equal(blocked[1], grads)
        # The sums keep their order, but XLA compiles the per-point loss differently for
        # blocks of another width: the last bit of a loss may differ.
        np.testing.assert_allclose(blocked[0], losses, rtol=1e-15, atol=0)


def test_array_form_entry_refines_genome_rows_like_their_trees():
    # The search hands refine_nodes its rows' node arrays: same answers as the trees give.
    from jaxsr.refine.api import Datasets, refine_nodes, solver_settings
    from jaxsr.search.population import Genomes, Structure, to_nodes

    exprs, Y = _random_problems(12, seed=4)
    genomes, kept = Genomes.from_exprs(exprs, 32)
    assert len(kept) == len(exprs)
    nodes = to_nodes(genomes, Structure.of(genomes))
    data = Datasets.validated(np.stack([X] * len(exprs)), Y)
    index = np.arange(len(exprs))
    ours = refine_nodes(nodes, data, index, solver_settings("float64", max_iter=30),
                        dtype="float64")
    theirs = refine_constants(exprs, np.stack([X] * len(exprs)), Y, dataset_index=index,
                              dtype="float64", max_iter=30)
    np.testing.assert_allclose(ours.nmse * data.variance, theirs.loss, rtol=1e-9)
    for i, e in enumerate(exprs):
        np.testing.assert_allclose(ours.params[i, : e.n_constants], theirs.constants[i],
                                   rtol=1e-9)
