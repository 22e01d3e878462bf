"""The evolutionary search (jaxsr.search): array form, variation, scoring, selection, loop."""

import dataclasses
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from jaxsr.expr import Expr, compile_programs, evaluate_programs, interpreter
from jaxsr.expr.compiler import assemble, default_chunk
from jaxsr.expr.random_trees import random_expr
from jaxsr.search import SearchSettings, evolve
from jaxsr.search import engine, fitness, selection, variation
from jaxsr.search.population import (
    FreeSum,
    Genomes,
    Structure,
    Terms,
    program_size,
    to_nodes,
)

SMALL = dict(population_size=256, max_length=24, seed=0)


def _population(n=200, seed=0, n_variables=3, max_ops=8):
    rng = np.random.default_rng(seed)
    exprs = [random_expr(rng, n_variables, int(rng.integers(0, max_ops))) for _ in range(n)]
    genomes, kept = Genomes.from_exprs(exprs, 32)
    return genomes, [exprs[k] for k in kept]


def _is_valid(genomes: Genomes) -> bool:
    """Every row is exactly one complete prefix tree of its length."""
    structure = Structure.of(genomes)
    return bool(np.all(structure.end[:, 0] == genomes.length))


# ---------------------------------------------------------------------------- array form


def test_trees_round_trip_through_arrays():
    genomes, exprs = _population()
    assert genomes.size == len(exprs)
    assert all(genomes.to_expr(i) == e for i, e in enumerate(exprs))
    assert _is_valid(genomes)


def test_array_programs_evaluate_like_compiled_trees():
    genomes, exprs = _population()
    X = np.random.default_rng(1).normal(size=(40, 3))
    structure = Structure.of(genomes)
    ours = np.asarray(evaluate_programs(assemble(to_nodes(genomes, structure),
                                                 program_size(genomes)), X))
    theirs = np.asarray(evaluate_programs(compile_programs(exprs), X))
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6, equal_nan=True)


def test_skeleton_keys_ignore_constants_only():
    line = lambda op, a, b: Expr.op(op, Expr.op("mul", Expr.const(a), Expr.var(0)),
                                    Expr.const(b))
    a, b = line("add", 1.5, 2.0), line("add", -3.0, 7.0)
    c = line("sub", 1.5, 2.0)  # sub instead of add: another skeleton
    # Fixed leaves (integers, named constants) are part of the skeleton.
    fixed = [Expr.op("mul", Expr(name), Expr.var(0)) for name in ("pi", "e", "2", "-2", "pi")]
    genomes, _ = Genomes.from_exprs([a, b, c, *fixed], 16)
    keys = genomes.skeleton_keys()
    assert keys[0] == keys[1] and keys[0] != keys[2]
    assert len(set(keys[3:7])) == 4 and keys[7] == keys[3] and keys[3] not in keys[:3]


# ---------------------------------------------------------------------------- variation


@pytest.mark.parametrize("operator", variation.OPERATORS)
def test_every_variation_gives_valid_trees(operator):
    genomes, _ = _population(256, seed=2)
    mates, _ = _population(256, seed=3)
    rng = np.random.default_rng(0)
    alphabet = variation.Alphabet.of(("add", "mul", "sub", "div", "sin", "exp"))
    n = min(genomes.size, mates.size)
    genomes, mates = genomes.take(np.arange(n)), mates.take(np.arange(n))
    make = {
        "crossover": lambda: variation.crossover(rng, genomes, mates),
        "subtree": lambda: variation.subtree_mutation(rng, genomes, mates),
        "point": lambda: variation.point_mutation(rng, genomes, alphabet, np.full(n, 3)),
        "constants": lambda: variation.jitter_constants(rng, genomes),
        "insert_unary": lambda: variation.insert_unary(rng, genomes, alphabet),
        "remove_unary": lambda: variation.remove_unary(rng, genomes),
        "hoist": lambda: variation.hoist(rng, genomes),
    }[operator]
    children, ok = make()
    assert ok.any()
    kept = children.take(np.flatnonzero(ok))
    assert _is_valid(kept)
    assert np.all(kept.length <= genomes.max_length)
    before = genomes.take(np.flatnonzero(ok))
    changed = np.zeros(kept.size, bool)
    for field in ("kind", "arg", "value"):
        changed |= np.any(getattr(kept, field) != getattr(before, field), axis=1)
    assert changed.mean() > 0.3  # operators change most rows they touch
    if operator == "point":  # another operator or variable is always drawn here
        assert changed.all()
    if operator in variation.SHAPE_PRESERVING:  # the search reuses the parents' structure
        for field in ("end", "height", "arity"):
            np.testing.assert_array_equal(getattr(Structure.of(kept), field),
                                          getattr(Structure.of(before), field))


def _small_search():
    # The shapes of the ``planted`` searches (100 points, 2 variables): compiled code is shared.
    X = np.random.default_rng(0).uniform(0.5, 2.0, size=(100, 2))
    settings = SearchSettings(generations=1, **SMALL)
    search = engine._Search(settings, fitness.Data.stack([(X, X[:, 0] * X[:, 1], None)]),
                            np.array([2]), np.random.default_rng(0), engine._Clock(settings),
                            None)
    return search, search.initial([[]], [(X, X[:, 0] * X[:, 1], None)])


def test_children_come_with_their_structure():
    search, population = _small_search()
    child, structure, _ = search.offspring_genomes(population)
    for field in ("end", "height", "arity"):
        np.testing.assert_array_equal(getattr(structure, field),
                                      getattr(Structure.of(child), field))


@pytest.mark.parametrize("operator", variation.OPERATORS)
def test_no_child_is_a_copy_of_its_parent(operator):
    # A variation that changes nothing (jitter without constants, a result too long, a
    # subtree swapped for an equal one) hands the row to point mutation, which draws
    # another operator or variable.
    search, population = _small_search()
    op = np.full(population.genomes.size, variation.OPERATORS.index(operator))
    rows = np.arange(op.size)
    child, _ = search.vary(population, rows, rows[::-1], op)
    assert not child.same_rows(population.genomes).any()


def test_crossover_splices_the_chosen_subtrees():
    x, y = Expr.var(0), Expr.var(1)
    parent, _ = Genomes.from_exprs([Expr.op("add", Expr.op("sin", x), y)], 16)
    mate, _ = Genomes.from_exprs([Expr.op("exp", y)], 16)
    # Replace sin(x) (prefix slice [1, 3) of "add sin x y") by the mate's whole tree [0, 2).
    child, ok = variation.splice(parent, np.array([1]), np.array([3]), mate, np.array([0]),
                                 np.array([2]))
    assert ok[0] and child.to_expr(0) == Expr.op("add", Expr.op("exp", y), y)


def test_subtrees_are_the_slices_that_hold_a_variable():
    names = ["x", "y"]
    numbers = Expr.op("mul", Expr.const(3.0), Expr.op("add", Expr.const(2.0), Expr.const(5.0)))
    first = Expr.op("add", Expr.from_sympy("sin(x*y)", names), numbers)
    genomes, _ = Genomes.from_exprs([first, Expr.from_sympy("cos(x*y)", names)], 16)
    found = variation.subtrees(genomes, 3, 5)
    assert _is_valid(found)
    shown = {str(found.to_expr(i)) for i in range(found.size)}
    # x*y appears twice but has one skeleton; 3*(2 + 5) holds no variable; the whole first
    # formula is too long
    assert shown == {"x_0*x_1", "sin(x_0*x_1)", "cos(x_0*x_1)"}
    assert found.size == 3


def test_folding_constants_keeps_values():
    exprs = [Expr.op("add", Expr.var(0), Expr.op("mul", Expr.const(2.0), Expr.const(3.0))),
             Expr.op("sin", Expr.op("exp", Expr.const(0.5))),
             Expr.op("mul", Expr.var(0), Expr("pi"))]
    genomes, _ = Genomes.from_exprs(exprs, 16)
    folded, structure = variation.fold_constants(genomes)
    assert list(folded.length) == [3, 2, 3]  # the third has nothing to fold
    fresh = Structure.of(folded)  # only the folded rows' structure was recomputed
    for field in ("end", "height", "arity"):
        np.testing.assert_array_equal(getattr(structure, field), getattr(fresh, field))
    X = np.linspace(-1, 1, 7)[:, None]
    for i, e in enumerate(exprs):
        np.testing.assert_allclose(folded.to_expr(i).evaluate(X), e.evaluate(X), rtol=1e-12)


# ---------------------------------------------------------------------------- fitness


def test_points_are_padded_to_a_multiple_of_the_block_and_weigh_nothing():
    sizes = [fitness.padded_points(n) for n in (1, 16, 17, 32, 33, 200, 256, 257)]
    assert sizes == [16, 16, 32, 32, 64, 224, 256, 288]
    X, y = np.ones((200, 2)), np.arange(200.0)
    data = fitness.Data.stack([(X, y, None), (X[:50], y[:50], None)])
    assert data.y.shape == (2, 224)
    assert np.all(data.weight[0, 200:] == 0) and np.all(data.weight[1, 50:] == 0)
    np.testing.assert_allclose(data.weight.sum(axis=1), 1.0)
    np.testing.assert_allclose(data.variance, [np.var(y), np.var(y[:50])])


def test_linear_scaling_is_least_squares():
    rng = np.random.default_rng(0)
    X = rng.uniform(0.5, 2.0, size=(64, 2))
    y = 3.0 + 0.5 * np.sin(X[:, 0]) * X[:, 1] + 0.01 * rng.normal(size=64)
    genomes, _ = Genomes.from_exprs([Expr.from_sympy("sin(x)*y", ["x", "y"])], 16)
    data = fitness.Data.stack([(X, y, None)])
    s = fitness.score(genomes, np.zeros(1, int), data, "float64")
    slope, intercept = np.polyfit(np.sin(X[:, 0]) * X[:, 1], y, 1)
    assert s.coefficients[0, 0] == pytest.approx(slope, rel=1e-9)
    assert np.all(s.coefficients[0, 1:] == 0)  # one term: the rest unused
    assert s.intercept[0] == pytest.approx(intercept, rel=1e-9)
    residual = y - intercept - slope * np.sin(X[:, 0]) * X[:, 1]
    assert s.nmse[0] == pytest.approx(np.mean(residual**2) / np.var(y), rel=1e-8)


def test_terms_split_sums_in_prefix_order():
    exprs = [Expr.from_sympy(f, ["x", "y"]) for f in
             ("3*x - 2*x*y - x**2", "sin(x)*y", "x + y + x*y + y**2 + sin(x) + cos(y)")]
    genomes, _ = Genomes.from_exprs(exprs, 32)
    terms = Terms.of(genomes, Structure.of(genomes), max_terms=4)
    assert list(terms.count) == [3, 1, 4]
    X = np.random.default_rng(0).uniform(0.5, 2.0, (20, 2))
    for i, e in enumerate(exprs):
        # The terms, with the signs of the dissolved add/sub, add up to the formula.
        parts = terms.exprs(genomes, i)
        signs = [1.0] * len(parts)
        if i == 0:
            signs = [1.0, -1.0, -1.0]
        total = sum(s * t.evaluate(X) for s, t in zip(signs, parts))
        np.testing.assert_allclose(total, e.evaluate(X), rtol=1e-12)
        # Outside the terms there are no constants: theirs, in order, are the formula's.
        own = np.concatenate([t.constants() for t in parts] + [np.zeros(0)])
        np.testing.assert_array_equal(own, e.constants())


def test_free_sum_is_the_scaled_sum_of_the_terms_and_splits_back():
    exprs = [Expr.from_sympy(f, ["x", "y"]) for f in
             ("3*x - 2*x*y - x**2", "sin(1.5*x)*y", "x + 0.5*y + x*y + y**2 + sin(x) + cos(y)")]
    genomes, _ = Genomes.from_exprs(exprs, 24)
    terms = Terms.of(genomes, Structure.of(genomes), max_terms=4)
    rng = np.random.default_rng(0)
    intercept, coefficients = rng.normal(size=3), rng.normal(size=(3, 4)) * terms.used
    free = FreeSum.of(genomes, terms, intercept, coefficients)
    assert _is_valid(free.genomes)
    assert list(free.genomes.length) == list(genomes.length + 2 + 2 * terms.count)
    X = rng.uniform(0.5, 2.0, (20, 2))
    for i in range(3):
        parts = terms.exprs(genomes, i)
        expected = intercept[i] + sum(b * t.evaluate(X) for b, t in zip(coefficients[i], parts))
        np.testing.assert_allclose(free.genomes.to_expr(i).evaluate(X), expected, rtol=1e-12)
    # The free rows' constants, in order, split back into the rows, a and b exactly.
    nodes = free.nodes()
    value, a, b = free.split(nodes.constants, genomes.value)
    np.testing.assert_array_equal(value, genomes.value)
    np.testing.assert_array_equal(a, intercept)
    np.testing.assert_array_equal(b, coefficients)
    # New constants land where they belong: the rows' own ones and the scaling.
    moved = nodes.constants + np.arange(nodes.constants.shape[1])
    value, a, b = free.split(moved, genomes.value)
    changed = Genomes(genomes.kind, genomes.arg, value, genomes.length)
    for i in range(3):
        parts = terms.exprs(changed, i)
        fitted = a[i] + sum(w * t.evaluate(X) for w, t in zip(b[i], parts))
        refined = free.genomes.to_expr(i).with_constants(moved[i, : nodes.n_constants[i]])
        np.testing.assert_allclose(fitted, refined.evaluate(X), rtol=1e-12)


def test_term_scaling_fits_every_coefficient():
    # 1 + 3x - 2xy - x^2 is found from the shape x + xy + x^2: one scoring call.
    rng = np.random.default_rng(0)
    X = rng.uniform(0.5, 2.0, size=(64, 2))
    y = 1.0 + 3 * X[:, 0] - 2 * X[:, 0] * X[:, 1] - X[:, 0] ** 2
    shapes = ["x + x*y + x**2", "x*y", "x + x"]
    genomes, _ = Genomes.from_exprs([Expr.from_sympy(f, ["x", "y"]) for f in shapes], 16)
    s = fitness.score(genomes, np.zeros(3, int), fitness.Data.stack([(X, y, None)]), "float64")
    assert s.nmse[0] < 1e-20 and list(s.n_terms) == [3, 1, 1]
    terms = Terms.of(genomes, Structure.of(genomes), fitness.MAX_TERMS)
    parts = terms.exprs(genomes, 0)
    fitted = s.intercept[0] + sum(b * t.evaluate(X) for b, t in zip(s.coefficients[0], parts))
    np.testing.assert_allclose(fitted, y, rtol=1e-9)
    assert s.nmse[1] > 0.01  # x*y alone cannot


def test_term_scaling_is_weighted_least_squares_per_row():
    rng = np.random.default_rng(3)
    B, K, N = 6, fitness.MAX_TERMS, 40
    f, y = rng.normal(size=(B, K, N)), rng.normal(size=(B, N))
    weight = rng.random((B, N)) * (rng.random((B, N)) < 0.8)  # some points unused
    weight /= weight.sum(axis=1, keepdims=True)
    used = np.arange(K) < rng.integers(1, K + 1, size=B)[:, None]
    f[~used] = np.nan  # unused slots are never read
    with jax.enable_x64(True):
        mse, a, b = (np.asarray(v) for v in fitness.term_scaling(f, y, weight, used))
    for i in range(B):
        design = np.c_[np.ones(N), f[i, used[i]].T] * np.sqrt(weight[i])[:, None]
        coef = np.linalg.lstsq(design, y[i] * np.sqrt(weight[i]), rcond=None)[0]
        residual = y[i] - np.c_[np.ones(N), f[i, used[i]].T] @ coef
        np.testing.assert_allclose([a[i], *b[i, used[i]]], coef, rtol=1e-8)
        np.testing.assert_allclose(mse[i], np.sum(weight[i] * residual**2), rtol=1e-8)
        assert np.all(b[i, ~used[i]] == 0)


def test_collinear_terms_share_their_weight():
    rng = np.random.default_rng(1)
    X = rng.uniform(0.5, 2.0, size=(64, 1))
    y = 2.0 + 5.0 * X[:, 0]
    genomes, _ = Genomes.from_exprs([Expr.from_sympy("x + 2.5*x", ["x"]), Expr.var(0)], 16)
    data = fitness.Data.stack([(X, y, None)])
    for dtype, tol in (("float64", 1e-20), ("float32", 1e-9)):
        s = fitness.score(genomes, np.zeros(2, int), data, dtype)
        assert np.all(s.nmse < tol) and np.all(np.isfinite(s.coefficients))


def test_non_finite_candidates_stay_in_their_lane():
    rng = np.random.default_rng(0)
    X = rng.uniform(-1.0, 1.0, size=(50, 2))
    y = X[:, 0] * X[:, 1]
    good = [Expr.from_sympy(f, ["x", "y"]) for f in ("x*y", "x + y", "exp(x)")]
    bad = [Expr.from_sympy("log(x)", ["x", "y"]), Expr.from_sympy("exp(exp(exp(10*y)))",
                                                                  ["x", "y"])]
    data = fitness.Data.stack([(X, y, None)])
    alone, _ = Genomes.from_exprs(good, 16)
    mixed, _ = Genomes.from_exprs([bad[0], *good, bad[1]], 16)
    s_alone = fitness.score(alone, np.zeros(3, int), data, "float64")
    s_mixed = fitness.score(mixed, np.zeros(5, int), data, "float64")
    assert np.isinf(s_mixed.nmse[[0, 4]]).all()
    np.testing.assert_array_equal(s_mixed.nmse[1:4], s_alone.nmse)


# ---------------------------------------------------------------------------- selection


@pytest.mark.parametrize("seed", range(4))
def test_pareto_ranks_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 90
    nmse = rng.choice([0.1, 0.2, 0.5, np.inf], size=n) * rng.choice([0.5, 0.7, 1.0], size=n)
    complexity = rng.integers(1, 8, size=n)
    problem = np.sort(rng.integers(0, 3, size=n))
    ranks = selection.pareto_ranks(nmse, complexity, problem)
    for q in range(3):
        left, r = set(np.flatnonzero(problem == q)), 0
        while left:  # peel off the non-dominated rows, front after front
            front = {i for i in left if not any(
                nmse[j] <= nmse[i] and complexity[j] <= complexity[i]
                and (nmse[j] < nmse[i] or complexity[j] < complexity[i]) for j in left)}
            assert {i for i in left if ranks[i] == r} == front
            if r == 0:
                mask = selection.non_dominated(nmse, complexity, problem)
                assert {i for i in left if mask[i]} == front
            left -= front
            r += 1


def test_survivors_keep_each_problems_front_and_size():
    rng = np.random.default_rng(1)
    nmse, complexity = rng.uniform(size=400), rng.integers(1, 20, size=400)
    problem = np.repeat([0, 1], 200)
    for method in selection.SELECTIONS:
        keep = selection.survivors(nmse, complexity, problem, 50, method)
        assert np.bincount(problem[keep]).tolist() == [50, 50]
        for q in (0, 1):
            mine = np.flatnonzero(problem == q)
            front = mine[selection.front(nmse[mine], complexity[mine])]
            assert set(front) <= set(keep)


# ---------------------------------------------------------------------------- the loop


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(0)
    X = rng.uniform(0.5, 2.0, size=(100, 2))
    return X, 1.5 * X[:, 0] * X[:, 1] - X[:, 0] ** 2


@pytest.mark.parametrize("dtype, digits", [("float64", 1e-6), ("float32", 1e-4)])
def test_search_recovers_a_planted_formula(planted, dtype, digits):
    X, y = planted
    result = evolve([(X, y)], settings=SearchSettings(generations=40, dtype=dtype, **SMALL))
    assert result.stopped == "target_r2"
    best = min(result.fronts[0], key=lambda c: c.nmse)
    assert best.r2 >= 1 - 1e-10
    np.testing.assert_allclose(best.expr.evaluate(X), y, rtol=digits, atol=digits)


def test_refinement_keeps_one_compiled_size_through_a_search(monkeypatch):
    # The solver's tables have one size per search (a recompilation costs seconds).
    from jaxsr.refine import api

    sizes = []
    assemble_for_solver = api.assemble
    monkeypatch.setattr(api, "assemble", lambda nodes, size, *a, **k: (
        sizes.append(size), assemble_for_solver(nodes, size, *a, **k))[1])
    rng = np.random.default_rng(3)
    X = rng.uniform(0.5, 2.0, size=(100, 2))  # the shapes of the ``planted`` searches
    y = np.exp(-X[:, 0]) * np.sin(2.5 * X[:, 1]) + X[:, 1] / (1 + X[:, 0])
    evolve([(X, y)], settings=SearchSettings(generations=6, target_r2=2.0, **SMALL))
    assert len(sizes) > 6 and len(set(sizes)) == 1, set(sizes)


def test_front_is_a_pareto_front(planted):
    X, y = planted
    result = evolve([(X, y)], settings=SearchSettings(generations=3, target_r2=2.0, **SMALL))
    front = result.fronts[0]
    complexity = np.array([c.complexity for c in front])
    nmse = np.array([c.nmse for c in front])
    assert len(front) >= 2
    assert np.all(np.diff(complexity) >= 0) and np.all(np.diff(nmse) < 0)
    for c in front:  # each error is what the formula gives
        r2 = 1 - np.mean((c.expr.evaluate(X) - y) ** 2) / np.var(y)
        assert r2 == pytest.approx(c.r2, abs=1e-4)


def test_same_seed_same_generations_same_result(planted):
    X, y = planted
    settings = SearchSettings(generations=4, target_r2=2.0, **SMALL)
    a, b = (evolve([(X, y)], settings=settings) for _ in range(2))
    assert [c.expr for c in a.fronts[0]] == [c.expr for c in b.fronts[0]]
    c = evolve([(X, y)], settings=dataclasses.replace(settings, seed=1))
    assert [e.expr for e in c.fronts[0]] != [e.expr for e in a.fronts[0]]


def test_scoring_in_several_calls_gives_the_same_scores(monkeypatch):
    # A generation larger than MAX_SCORE_ROWS is scored in several calls, each row on its
    # own (calls of another size are compiled apart: the last bits may differ).
    monkeypatch.setattr(engine, "MAX_SCORE_ROWS", 64)
    assert engine._score_sizes(256) == (64, 64) and engine._score_sizes(40) == (64, 64)
    search, population = _small_search()
    child, structure, problem = search.offspring_genomes(population)
    parts = search.dispatch(child, structure, problem)
    several = search.collect(parts)
    search.score_sizes = (64, 256)
    one = search.collect(search.dispatch(child, structure, problem))
    assert len(parts) == 4 and child.size == 256
    np.testing.assert_allclose(several.nmse, one.nmse, rtol=1e-5)
    np.testing.assert_allclose(several.coefficients, one.coefficients, rtol=1e-4, atol=1e-6)


def test_score_calls_cover_the_rows_within_their_operator_capacity():
    rng = np.random.default_rng(0)
    for n_ops in (rng.integers(0, 32, size=1000), np.full(300, 31), np.zeros(70, int),
                  np.array([31])):
        calls = engine._score_calls(n_ops, 64, 256, 16)
        assert [c[0] for c in calls] == [0] + [c[1] for c in calls[:-1]]
        assert calls[-1][1] == len(n_ops)
        for first, stop, size in calls:
            assert 0 < stop - first <= size and size in (64, 256)
            assert n_ops[first:stop].sum() <= size * 16
            assert size == 256 or len(n_ops) - first <= 64  # small only for the last rows
    # Rows within the capacity on average: as many rows per call as fit.
    assert engine._score_calls(np.full(600, 16), 64, 256, 16) == [(0, 256, 256), (256, 512, 256),
                                                                  (512, 600, 256)]


def test_rows_above_the_operator_capacity_spill_into_more_calls():
    # Unary chains of 22 operators, more than the search's 16 per row on average: the
    # search keeps its compiled size and scores the rows in more calls, padded with
    # one-node rows.
    search, _ = _small_search()
    chain = Expr.var(0)
    for k in range(22):
        chain = Expr.op(("sin", "exp", "cos")[k % 3], chain)
    exprs = ([chain] * 19 + [Expr.op("mul", Expr.var(0), Expr.var(1))]) * 10
    genomes, kept = Genomes.from_exprs(exprs, search.settings.max_length)
    assert len(kept) == len(exprs) and search.score_sizes == (64, 256)
    assert search.score_size.ops == 16
    structure, problem = Structure.of(genomes), np.zeros(genomes.size, int)
    parts = search.dispatch(genomes, structure, problem)
    spilled = search.collect(parts)
    assert len(parts) == 2 and genomes.size == 200  # 4,190 operator nodes > 256 x 16
    one = fitness.score(genomes, problem, search.data, search.settings.dtype)
    np.testing.assert_allclose(spilled.nmse, one.nmse, rtol=1e-5)
    np.testing.assert_allclose(spilled.coefficients, one.coefficients, rtol=1e-4, atol=1e-6)
    assert np.all(spilled.nmse[19::20] < 1e-6)  # x_0 * x_1 is the target


def test_step_chunks_keep_the_values_and_fit_the_step_budget():
    genomes, _ = _population(1024, seed=4)
    X = np.random.default_rng(0).uniform(0.5, 2.0, size=(224, 3))
    data = fitness.Data.stack([(X, np.sin(X[:, 0]), None)])
    size = program_size(genomes)
    chunk = fitness.step_chunk(genomes.size, size, data.X.shape, np.float32)
    block = interpreter.block_points(genomes.size * size.ops, 4, 224,
                                     interpreter.FORWARD_BLOCK_BYTES)
    assert chunk == 8 or chunk * block * 4 <= fitness.STEP_BYTES
    assert chunk < default_chunk(genomes.size * size.ops)  # smaller than the default here
    structure = Structure.of(genomes)
    nodes = to_nodes(genomes, structure)
    values = [np.asarray(evaluate_programs(assemble(nodes, size, chunk=c), data.X[0]))
              for c in (chunk, None)]
    np.testing.assert_array_equal(values[0], values[1])


def test_many_problems_evolve_together_and_stay_apart(planted):
    X, y = planted
    result = evolve([(X, y), (X[:, :1], np.exp(X[:, 0]))],
                    settings=SearchSettings(generations=30, **SMALL))
    assert len(result.fronts) == 2
    assert all(max(c.expr.variables(), default=0) == 0 for c in result.fronts[1])
    assert max(c.r2 for c in result.fronts[1]) > 1 - 1e-9


def test_seeds_and_baselines_compete(planted):
    X, y = planted
    seed = Expr.from_sympy("1.4*x*y - 0.9*x**2", ["x", "y"])
    result = evolve([(X, y)], seeds=[[seed]],
                    settings=SearchSettings(generations=0, **SMALL))
    origins = {c.origin for c in result.fronts[0]}
    assert "model sample" in origins  # the seed, refined, is the exact formula
    assert max(c.r2 for c in result.fronts[0]) > 1 - 1e-10


def test_best_seeds_only_enter_the_first_population(planted):
    X, y = planted
    names = ["x", "y"]
    good = Expr.from_sympy("1.5*x*y - x**2", names)
    poor = [Expr.from_sympy(f"sin({k}*x)", names) for k in range(1, 9)]
    settings = SearchSettings(generations=0, max_seeds=3, **SMALL)
    search = engine._Search(settings, fitness.Data.stack([(X, y, None)]), np.array([2]),
                            np.random.default_rng(0), engine._Clock(settings), None)
    population = search.initial([[*poor, good]], [(X, y, None)])
    seeded = population.origin == engine.MODEL_SAMPLE
    assert 1 <= seeded.sum() <= 3
    assert population.scores.nmse[seeded].min() < 1e-10  # the exact seed is among them
    # every seed's building blocks are subtree-mutation donors
    blocks, _ = Genomes.from_exprs([Expr.from_sympy("sin(3*x)", names),
                                    Expr.from_sympy("x*y", names)], 24)
    assert set(blocks.skeleton_keys()) <= set(search.pool.skeleton_keys())


def _exact_linear_problem():
    X = np.linspace(0.5, 2.0, 50)[:, None]
    return X, 2.0 * X[:, 0] + 1.0  # the linear baseline fits it: the search cannot improve


@pytest.mark.parametrize("share, rounds", [(1.0, 3), (0.0, 0)])
def test_model_is_asked_where_the_search_stalls(share, rounds):
    calls = []

    def proposer(requests, seed):
        calls.append(sorted({q for q, _ in requests}))
        return [[Expr.from_sympy("x", ["x"])] for _ in requests]

    result = evolve([_exact_linear_problem()], proposer=proposer,
                    settings=SearchSettings(generations=20, proposal_every=2, target_r2=2.0,
                                            proposal_share=share, **SMALL))
    # Stalled from the start, and no proposal helps: asked at generations 2, 6 and 14 (the
    # patience doubles after each round), unless proposals get no time.
    assert calls == [[0]] * rounds
    assert result.generations == 20


def _seeder_log(found):
    """A seeder returning ``found(q)`` for each problem q, and the log of its calls."""
    calls = []

    def seeder(problems):
        calls.append(list(problems))
        return [found(q) for q in problems]

    return seeder, calls


def test_a_seeder_is_asked_once_per_unsolved_problem_after_proposal_every_generations():
    X = np.random.default_rng(0).uniform(0.5, 2.0, size=(100, 2))
    y = np.sin(2.3 * X[:, 0] * X[:, 1]) / (1.0 + X[:, 0] ** 2)
    exact = Expr.from_sympy("sin(2.3*x*y) / (1 + x**2)", ["x", "y"])
    seeder, calls = _seeder_log(lambda q: [exact] if q == 0 else [])
    # Problem 0 cannot be solved by its first generations (a tiny population); problem 1's
    # linear baseline solves it at once.
    result = evolve([(X, y), _exact_linear_problem()], seeder=seeder,
                    settings=SearchSettings(generations=8, proposal_every=3,
                                            **{**SMALL, "population_size": 8}))
    assert calls == [[0]]
    best = max(result.fronts[0], key=lambda c: c.r2)
    assert best.r2 > 1 - 1e-10 and best.origin == "model sample"


def test_a_seeder_is_not_asked_where_the_search_solves_first():
    seeder, calls = _seeder_log(lambda q: [])
    result = evolve([_exact_linear_problem()], seeder=seeder,
                    settings=SearchSettings(generations=10, proposal_every=2, **SMALL))
    assert calls == [] and result.stopped == "target_r2"
    with pytest.raises(ValueError, match="proposal_every"):
        evolve([_exact_linear_problem()], seeder=seeder,
               settings=SearchSettings(generations=1, proposal_every=0, **SMALL))


def test_seeds_come_before_proposals_and_whatever_their_share():
    seeder, seeded = _seeder_log(lambda q: [Expr.from_sympy("x + 1", ["x"])])
    proposed = []

    def proposer(requests, seed):
        proposed.append(sorted({q for q, _ in requests}))
        return [[] for _ in requests]

    evolve([_exact_linear_problem()], seeder=seeder, proposer=proposer,
           settings=SearchSettings(generations=7, proposal_every=2, target_r2=2.0,
                                   proposal_share=0.0, **SMALL))
    assert seeded == [[0]] and proposed == []  # no share left for proposals
    proposed.clear()
    evolve([_exact_linear_problem()], seeder=seeder, proposer=proposer,
           settings=SearchSettings(generations=7, proposal_every=2, target_r2=2.0,
                                   proposal_share=1.0, **SMALL))
    # seeds at generation 2, proposals at the stall after them (4; then the patience doubles)
    assert proposed == [[0]]


def test_stalls_are_tracked_per_problem():
    stalls = engine._Stalls(2, 3)
    population = lambda nmse: SimpleNamespace(problem=np.array([0, 1]),
                                              scores=SimpleNamespace(nmse=np.array(nmse)))
    stalls.update(population([0.5, 0.5]), 0)
    stalls.update(population([0.2, 0.499]), 3)  # problem 0 improves, 1 by less than 1%
    assert stalls.stuck(3).tolist() == [1]
    assert stalls.stuck(5).tolist() == [1]
    assert stalls.stuck(6).tolist() == [0, 1]
    stalls.asked[1] = 6
    assert stalls.stuck(7).tolist() == [0]


def test_patience_doubles_after_a_round_that_does_not_help_and_resets_after_one_that_does():
    stalls = engine._Stalls(2, 3)
    population = lambda nmse: SimpleNamespace(problem=np.array([0, 1]),
                                              scores=SimpleNamespace(nmse=np.array(nmse)))
    stalls.update(population([0.5, 0.5]), 0)
    stalls.asked[:] = 3
    stalls.answered(np.array([0, 1]), population([0.5, 0.1]))  # only problem 1 helped
    assert stalls.patience.tolist() == [6, 3]
    stalls.answered(np.array([0]), population([0.5, 0.1]))
    assert stalls.patience.tolist() == [12, 3]
    assert stalls.stuck(14).tolist() == [1] and stalls.stuck(15).tolist() == [0, 1]
    stalls.answered(np.array([0]), population([0.3, 0.1]))
    assert stalls.patience.tolist() == [3, 3]


def test_settings_are_checked():
    with pytest.raises(ValueError, match="needs a limit"):
        SearchSettings().check()
    with pytest.raises(ValueError, match="selection"):
        SearchSettings(generations=1, selection="best").check()
    with pytest.raises(KeyError, match="unknown operator"):
        SearchSettings(generations=1, operators=("add", "frobnicate")).check()
    with pytest.raises(ValueError, match="population_size"):
        SearchSettings(generations=1, population_size=0).check()


def test_power_law_baseline_finds_a_product_of_powers():
    from jaxsr.search.engine import _power_law

    rng = np.random.default_rng(0)
    X = rng.uniform(1.0, 5.0, size=(200, 4))
    y = -0.7 * X[:, 0] * X[:, 1] ** 2 / (X[:, 2] * np.sqrt(X[:, 3]))
    law = _power_law(X, y, None)
    ratio = y / law.evaluate(X)
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-12)  # the shape, up to a factor
    assert law.complexity() <= 10
    # Logarithms do not apply: y changes sign, or no column is positive.
    assert _power_law(X, y * np.sign(X[:, 0] - 3), None) is None
    assert _power_law(-X, y, None) is None


def test_fitted_sum_writes_every_coefficient_in():
    from jaxsr.search.engine import fitted_sum

    X = np.random.default_rng(0).uniform(0.5, 2.0, (10, 2))
    terms = [Expr.from_sympy(f, ["x", "y"]) for f in ("2*x*y", "sin(y)", "1.5", "x")]
    a, b = 0.25, [3.0, -1.0, 2.0, 0.0]
    expected = a + sum(c * t.evaluate(X) for c, t in zip(b, terms))
    formula = fitted_sum(terms, a, b)
    np.testing.assert_allclose(formula.evaluate(X), expected, rtol=1e-12)
    assert "x_0" in formula.infix() and "sin" in formula.infix()


def test_fitted_sum_merges_equal_terms():
    from jaxsr.search.engine import fitted_sum

    X = np.random.default_rng(0).uniform(0.5, 2.0, (10, 2))
    x, xy = Expr.from_sympy("x", ["x", "y"]), Expr.from_sympy("x*y", ["x", "y"])
    formula = fitted_sum([x, xy, x], 0.5, [1.5, -2.0, 1.5])
    np.testing.assert_allclose(formula.evaluate(X), 0.5 + 3 * X[:, 0] - 2 * X[:, 0] * X[:, 1])
    assert formula.infix().count("x_0") == 2  # one x term (3 x) and the x*y term
