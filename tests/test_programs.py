"""The batched JAX interpreter against numpy tree evaluation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import well_conditioned

from jaxsr.expr import interpreter
from jaxsr.expr.compiler import Nodes, ProgramSize, assemble, compile_programs
from jaxsr.expr.interpreter import evaluate_programs, evaluate_taps
from jaxsr.expr.random_trees import random_expr
from jaxsr.expr.tree import Expr, parse_prefix

# One padded size for the whole module, so that most tests share one compiled evaluator.
B, SIZE, N = 64, ProgramSize(ops=8, constants=12, depth=12), 40


def random_batch(seed, n=B, **kw):
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        expr = random_expr(rng, n_variables=3, n_operators=int(rng.integers(0, 10)), **kw)
        if expr.n_constants <= SIZE.constants and _depth(expr) <= SIZE.depth:
            out.append(expr)
    return out


def _depth(expr):
    return 0 if not expr.children else 1 + max(_depth(c) for c in expr.children)


def points(seed, n=N, d=3):
    return np.random.default_rng(seed).uniform(-2, 2, size=(n, d))


def test_matches_numpy_exactly_in_float64():
    exprs = random_batch(0)
    X = points(1)
    with jax.enable_x64(True):
        values = np.asarray(evaluate_programs(compile_programs(exprs, SIZE), jnp.asarray(X)))
    expected = np.stack([e.evaluate(X) for e in exprs])
    np.testing.assert_array_equal(np.isnan(values), np.isnan(expected))
    finite = np.isfinite(expected) & (np.abs(expected) < 1e30)
    np.testing.assert_allclose(values[finite], expected[finite], rtol=1e-10)


def test_matches_numpy_to_float32_precision():
    # Well-conditioned operators and inputs: float32 rounding stays near its resolution.
    exprs = random_batch(2, unary=("abs", "inv", "sqrt", "exp", "sin", "cos", "pow2"),
                         binary=("add", "sub", "mul"), leaf_probs=(0.7, 0.3, 0.0))
    exprs = [e.with_constants(np.clip(e.constants(), -2, 2)) for e in exprs]
    X = points(3).astype(np.float32)
    values = np.asarray(evaluate_programs(compile_programs(exprs, SIZE), X))
    expected = np.stack([e.evaluate(X) for e in exprs])
    # Where a float32-sized nudge of the inputs moves the value by < 1e-5, float32
    # evaluation must agree to about that; elsewhere rounding is amplified by the formula.
    ok = np.stack([well_conditioned(e, X, v, nudge=1e-7, tol=1e-5)
                   for e, v in zip(exprs, expected)])
    assert ok.mean() > 0.5
    scale = np.maximum(np.abs(expected), 1.0)
    assert np.max(np.abs(values - expected)[ok] / scale[ok]) < 2e-5
    assert np.mean(np.isnan(values) == np.isnan(expected)) > 0.99


def test_nan_in_one_program_leaves_the_others_bit_identical():
    exprs = random_batch(4)
    X = points(5).astype(np.float32)
    clean = np.asarray(evaluate_programs(compile_programs(exprs, SIZE), X))
    poisoned = list(exprs)
    poisoned[7] = parse_prefix("log sub x_0 x_0")  # log(0): NaN everywhere
    poisoned[8] = parse_prefix("exp mul + N1000 E3 x_1")  # exp(1000 x): overflow
    dirty = np.asarray(evaluate_programs(compile_programs(poisoned, SIZE), X))
    assert np.isnan(dirty[7]).all() and np.isnan(dirty[8]).any()
    others = np.r_[0:7, 9:B]
    np.testing.assert_array_equal(dirty[others], clean[others])


def test_one_compile_serves_every_mix_of_the_same_padded_size():
    X = points(6).astype(np.float32)
    evaluate_programs(compile_programs(random_batch(7), SIZE), X)
    before = interpreter._evaluate_jit._cache_size()
    for seed in (8, 9, 10):
        evaluate_programs(compile_programs(random_batch(seed), SIZE), X)
    assert interpreter._evaluate_jit._cache_size() == before


def test_gradients_match_finite_differences():
    exprs = random_batch(11, unary=("inv", "exp", "sin", "cos", "sqrt", "log", "pow2", "arctan"),
                         leaf_probs=(0.5, 0.5, 0.0))
    X = np.random.default_rng(12).uniform(0.5, 1.5, size=(N, 3))
    with jax.enable_x64(True):
        progs = compile_programs(exprs, SIZE)
        values = np.asarray(evaluate_programs(progs, jnp.asarray(X)))
        keep = np.all(np.isfinite(values), axis=1) & (np.abs(values).max(axis=1) < 1e3)

        def loss(c):
            v = evaluate_programs(progs, jnp.asarray(X), c)
            return jnp.sum(jnp.where(keep[:, None], jnp.tanh(v), 0.0))

        c0 = progs.constants
        grad = np.asarray(jax.grad(loss)(jnp.asarray(c0)))
        checked = 0
        for i, k in zip(*np.nonzero(progs.constant_mask & keep[:, None])):
            h = 1e-6 * max(1.0, abs(c0[i, k]))
            up, down = c0.copy(), c0.copy()
            up[i, k] += h
            down[i, k] -= h
            numeric = (loss(up) - loss(down)) / (2 * h)
            assert abs(grad[i, k] - numeric) <= 1e-4 * (abs(numeric) + 1e-2), (exprs[i], k)
            checked += 1
    assert checked > 20
    assert np.all(grad[~progs.constant_mask] == 0)


def test_masked_points_never_leak_nan_into_gradients():
    # log(x) is NaN at x <= 0; a loss that masks those points must get a finite gradient.
    progs = compile_programs([parse_prefix("mul + N2000 E-3 log x_0")])
    X = np.array([[-1.0], [0.0], [1.0], [2.0]], np.float32)
    mask = X[:, 0] > 0

    def loss(c):
        return jnp.sum(jnp.where(mask, evaluate_programs(progs, X, c)[0], 0.0))

    grad = jax.grad(loss)(jnp.asarray(progs.constants, jnp.float32))
    np.testing.assert_allclose(grad[0, 0], np.log(2.0), rtol=1e-6)


def test_gradient_with_respect_to_X():
    progs = compile_programs([parse_prefix("mul x_0 sin x_1"), parse_prefix("pow2 x_1")])
    X = jnp.array([[1.0, 0.5], [2.0, -1.0]])
    grad = jax.grad(lambda x: evaluate_programs(progs, x).sum())(X)
    expected = jnp.stack([jnp.sin(X[:, 1]), X[:, 0] * jnp.cos(X[:, 1]) + 2 * X[:, 1]], axis=1)
    np.testing.assert_allclose(grad, expected, rtol=1e-6)


def test_each_program_on_its_own_dataset():
    exprs = random_batch(13)
    sets = np.stack([points(s) for s in range(4)]).astype(np.float32)
    index = np.arange(B) % 4
    progs = compile_programs(exprs, SIZE)
    by_index = np.asarray(evaluate_programs(progs, sets, dataset_index=index))
    one_each = np.asarray(evaluate_programs(progs, sets[index]))
    np.testing.assert_array_equal(by_index, one_each)
    for i in (0, 5, 10):
        alone = np.asarray(evaluate_programs(compile_programs([exprs[i]]), sets[index[i]]))
        np.testing.assert_array_equal(alone[0], by_index[i])


def test_leaves_only_programs():
    exprs = [Expr.var(2), Expr.const(-1.5), parse_prefix("pi"), parse_prefix("add x_0 3")]
    X = points(14).astype(np.float32)
    values = np.asarray(evaluate_programs(compile_programs(exprs), X))
    np.testing.assert_allclose(values[0], X[:, 2])
    np.testing.assert_allclose(values[1], -1.5)
    np.testing.assert_allclose(values[2], np.pi, rtol=1e-7)
    np.testing.assert_allclose(values[3], X[:, 0] + 3, rtol=1e-6)


def test_clear_errors():
    progs = compile_programs([parse_prefix("add x_0 x_2")])
    with pytest.raises(ValueError, match="x_2 but X has 2 columns"):
        evaluate_programs(progs, np.zeros((5, 2)))
    with pytest.raises(ValueError, match="shape"):
        evaluate_programs(progs, np.zeros(5))
    with pytest.raises(ValueError, match="consts must have shape"):
        evaluate_programs(progs, np.zeros((5, 3)), consts=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="dataset_index"):
        evaluate_programs(progs, np.zeros((3, 5, 3)))
    with pytest.raises(ValueError, match="does not fit"):
        compile_programs([parse_prefix("add + N1000 E0 + N2000 E0")],
                         ProgramSize(ops=4, constants=1, depth=4))
    with pytest.raises(ValueError, match="at least one"):
        compile_programs([])


def test_gradient_with_respect_to_X_sums_every_read_of_a_row():
    # x_0 read twice in one program, x_1 as a whole program and twice more in another.
    progs = compile_programs([parse_prefix(p) for p in ("mul x_0 x_0", "x_1", "add x_1 sin x_1")])
    X = jnp.array([[1.5, 0.5], [-2.0, 1.0], [0.25, -3.0]])
    grad = jax.grad(lambda x: evaluate_programs(progs, x).sum())(X)
    expected = jnp.stack([2 * X[:, 0], 2 + jnp.cos(X[:, 1])], axis=1)
    np.testing.assert_allclose(grad, expected, rtol=1e-6)


def test_pairwise_sum_of_block_sums_keeps_the_bits():
    # Sums over points run in power-of-two blocks whose size depends on the batch.
    x = np.random.default_rng(3).standard_normal((50, 37)).astype(np.float32)
    x *= 10.0 ** np.random.default_rng(4).uniform(-3, 3, x.shape).astype(np.float32)
    whole = np.asarray(interpreter.pairwise_sum(jnp.asarray(x)))
    for size in (1, 8, 16, 32):
        blocks = np.pad(x, ((0, 0), (0, -(-37 // size) * size - 37))).reshape(50, -1, size)
        sums = interpreter.pairwise_sum(jnp.asarray(blocks))
        np.testing.assert_array_equal(interpreter.pairwise_sum(sums), whole)


def test_point_blocks_give_the_same_values_and_gradients(monkeypatch):
    # A tiny block budget forces the blocked forward and the rematerialising backward.
    exprs = random_batch(15, unary=("exp", "sin", "sqrt", "log", "inv"), leaf_probs=(0.5, 0.5, 0.0))
    progs = compile_programs(exprs, SIZE)
    X = points(16, n=37).astype(np.float32)
    keep = np.all(np.isfinite(np.stack([e.evaluate(X) for e in exprs])), axis=1)

    def value_and_grad():
        jax.clear_caches()
        loss = lambda c, x: jnp.sum(jnp.where(keep[:, None], jnp.tanh(evaluate_programs(progs, x, c)), 0))
        values = evaluate_programs(progs, X)
        grads = jax.grad(loss, argnums=(0, 1))(jnp.asarray(progs.constants, jnp.float32), X)
        return np.asarray(values), *(np.asarray(g) for g in grads)

    whole = value_and_grad()
    for budget in ("FORWARD_BLOCK_BYTES", "SWEEP_BLOCK_BYTES"):
        monkeypatch.setattr(interpreter, budget, 4096)
    x_rows = jnp.zeros((3, 37))
    assert interpreter.forward_block_points(progs, x_rows) < 37 / 3
    assert interpreter.sweep_block_points(progs, x_rows) < 37 / 3
    blocked = value_and_grad()
    np.testing.assert_array_equal(blocked[0], whole[0])
    np.testing.assert_allclose(blocked[1], whole[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(blocked[2], whole[2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("block_bytes", [None, 4096])  # 4096: points run in blocks
def test_taps_read_subtree_values_from_the_same_pass(block_bytes, monkeypatch):
    from jaxsr.search.population import Genomes, Structure, to_nodes

    if block_bytes:
        for budget in ("FORWARD_BLOCK_BYTES", "SWEEP_BLOCK_BYTES"):
            monkeypatch.setattr(interpreter, budget, block_bytes)

    exprs = [Expr.from_sympy(f, ["x", "y"]) for f in ("sin(x)*y + exp(y)", "x - 2.5*y")]
    genomes, _ = Genomes.from_exprs(exprs, 16)
    structure = Structure.of(genomes)
    nodes = to_nodes(genomes, structure)
    # Per program: its root, its first operand, and -1 (the number 0).
    taps = np.stack([nodes.root, nodes.root + 1, np.full(2, -1)], 1)
    programs = assemble(nodes, ProgramSize(16, 16, 16), taps=taps)
    n = 30 if block_bytes is None else 37  # another shape: a fresh compilation
    X = np.random.default_rng(0).uniform(0.5, 2.0, (1, n, 2))
    values = np.asarray(evaluate_taps(programs, X, np.zeros(2, np.int32)))
    assert values.shape == (2, 3, n)
    for i, e in enumerate(exprs):
        np.testing.assert_allclose(values[i, 0], e.evaluate(X[0]), rtol=1e-6)
        np.testing.assert_allclose(values[i, 1], e.children[0].evaluate(X[0]), rtol=1e-6)
        assert np.all(values[i, 2] == 0)


def test_programs_assembled_without_gradient_tables_evaluate_but_refuse_a_gradient():
    from jaxsr.search.population import Genomes, Structure, to_nodes

    exprs = [Expr.from_sympy(f, ["x", "y"]) for f in ("sin(x)*y + 1.5", "x - 2.5*y")]
    genomes, _ = Genomes.from_exprs(exprs, 16)
    nodes = to_nodes(genomes, Structure.of(genomes))
    full = assemble(nodes, ProgramSize(16, 16, 16), taps=nodes.root[:, None])
    lean = assemble(nodes, ProgramSize(16, 16, 16), taps=nodes.root[:, None], gradients=False)
    assert lean.parent is None and lean.const_position is None
    X = np.random.default_rng(0).uniform(0.5, 2.0, (1, 20, 2))
    index = np.zeros(2, np.int32)
    np.testing.assert_array_equal(np.asarray(evaluate_taps(lean, X, index)),
                                  np.asarray(evaluate_taps(full, X, index)))
    loss = lambda c: jnp.sum(evaluate_programs(lean, X[0], c))
    with pytest.raises(ValueError, match="without the reverse sweep"):
        jax.grad(loss)(jnp.asarray(lean.constants, jnp.float32))


def test_taking_programs_from_nodes_compiles_like_their_trees():
    exprs = random_batch(7, n=20)
    picks = np.array([5, -1, 0, 19, 5, 3, -1, 11])  # repeats, fillers, any order
    taken = Nodes.of_exprs(exprs).take(picks)
    chosen = [exprs[i] if i >= 0 else parse_prefix("x_0") for i in picks]
    assert ProgramSize.of_nodes(taken) == ProgramSize.fitting(chosen)
    X = points(2)
    ours = np.asarray(evaluate_programs(assemble(taken, SIZE), X))
    theirs = np.asarray(evaluate_programs(compile_programs(chosen, SIZE), X))
    np.testing.assert_array_equal(ours, theirs)


def test_size_check_names_the_program_that_does_not_fit():
    c, x = Expr.const, Expr.var
    exprs = [x(0), Expr.op("add", Expr.op("mul", c(2.5), x(0)),
                           Expr.op("sin", Expr.op("add", x(1), c(1.5))))]
    nodes = Nodes.of_exprs(exprs)
    ProgramSize(ops=4, constants=2, depth=4).check(nodes)
    with pytest.raises(ValueError, match="expression 1 \\(2 constants, depth 3\\)"):
        ProgramSize(ops=4, constants=1, depth=4).check(nodes)
    with pytest.raises(ValueError, match="2 expressions hold 4 operator nodes"):
        ProgramSize(ops=1, constants=2, depth=4).check(nodes)
