"""The stages of ``search="sample"`` one at a time: each returns new values (a new pool, its
counts) and leaves what it was given as it was."""

import copy
import dataclasses
from collections import Counter

import numpy as np
import pytest

from jaxsr.expr import Expr, Vocab
from jaxsr.regressor import inputs, pipeline

RNG = np.random.default_rng(0)
X = RNG.uniform(1, 3, (64, 2))
Y = 2.0 * X[:, 0] + X[:, 1]
SETTINGS = pipeline.PipelineSettings(
    max_input_points=32, max_number_bags=None, n_candidates=4, decoding="sampling",
    temperature=1.0, max_len=16, refine=True, max_iter=20, max_time=None, seed=0)


def problem():
    return inputs.prepare(X, Y, np.ones(len(Y)), ["a", "b"], max_features=10, seed=0)


def candidates() -> pipeline.Pool:
    """Model-space formulas: 2x_0 + x_1 twice (one skeleton), log(-1 - x_0^2) (never
    finite) and x_0 alone."""
    x0, x1, c = Expr.var(0), Expr.var(1), Expr.const
    exprs = [Expr.op("add", Expr.op("mul", c(2.0), x0), x1),
             Expr.op("add", Expr.op("mul", c(1.5), x0), x1),
             Expr.op("log", Expr.op("sub", c(-1.0), Expr.op("mul", x0, x0))),
             x0]
    return pipeline.Pool(exprs, np.zeros(len(exprs), int))


def frozen_copy(pool: pipeline.Pool):
    return [copy.deepcopy(getattr(pool, f.name)) for f in dataclasses.fields(pool)]


def assert_unchanged(pool: pipeline.Pool, before) -> None:
    for f, old in zip(dataclasses.fields(pool), before):
        new = getattr(pool, f.name)
        if isinstance(old, np.ndarray):
            np.testing.assert_array_equal(new, old)
        else:
            assert new == old, f.name


def test_pool_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        candidates().mse = np.zeros(4)


def test_score_returns_a_new_pool_and_the_drops_it_made():
    pool, p = candidates(), problem()
    before = frozen_copy(pool)
    scored, dropped = pipeline.score(pool, [p])
    assert_unchanged(pool, before)
    assert pool.mse is None and len(scored.exprs) == 3
    assert dropped == [Counter({pipeline.DROPPED_NON_FINITE: 1})]
    np.testing.assert_array_less(-1e-12, scored.mse)


def test_dedupe_keeps_the_lowest_error_per_skeleton_without_touching_its_input():
    scored, _ = pipeline.score(candidates(), [problem()])
    before = frozen_copy(scored)
    unique = pipeline.dedupe(scored)
    assert_unchanged(scored, before)
    assert len(unique.exprs) == 2
    assert unique.mse[0] == scored.mse[:2].min()
    np.testing.assert_array_equal(unique.per_problem(2), [2, 0])


def test_refine_fits_the_constants_and_leaves_the_scored_pool_alone():
    p = problem()
    scored = pipeline.dedupe(pipeline.score(candidates(), [p])[0])
    before = frozen_copy(scored)
    refined = pipeline.refine(scored, [p], SETTINGS, pipeline.Clock(None, 0))
    assert_unchanged(scored, before)
    assert scored.r2 is None and scored.iterations is None
    assert refined.r2[0] > 1 - 1e-10 and refined.refined[0]
    assert refined.iterations[0] > 0


def test_select_returns_counts_without_filling_those_it_was_given():
    p = problem()
    pool = pipeline.refine(pipeline.dedupe(pipeline.score(candidates(), [p])[0]), [p],
                           SETTINGS, pipeline.Clock(None, 0))
    counts = [pipeline.new_counts()]
    outcome, = pipeline.select(pool, [p], counts, [Counter()])
    assert counts == [pipeline.new_counts()]
    assert outcome.counts["iterations"] == pool.iterations.max() > 0
    assert outcome.r2[0] == pool.r2.max()


def test_parse_counts_what_it_sampled_and_why_it_dropped():
    vocab = Vocab.decoder()
    rows = [["add", "x_0", "x_1"], ["add", "x_0", "x_5"], ["add", "x_0"]]
    length = max(len(r) for r in rows)
    tokens = np.full((1, len(rows), length), vocab["<PAD>"], np.int32)
    lengths = np.zeros((1, len(rows)), np.int32)
    for j, row in enumerate(rows):
        ids = [vocab[t] for t in row]
        tokens[0, j, : len(ids)], lengths[0, j] = ids, len(ids)
    bags = pipeline.Bags(np.zeros((1, 1, 1)), np.ones((1, 1), bool), np.array([0]))
    pool, counts, dropped = pipeline.parse(tokens, lengths, bags, [problem()])
    assert [str(e) for e in pool.exprs] == [str(Expr.op("add", Expr.var(0), Expr.var(1)))]
    assert counts == [{"sampled": 3, "valid": 1}]
    assert dropped[0][pipeline.DROPPED_VARIABLE] == 1 and sum(dropped[0].values()) == 2
    merged = pipeline.sampled_counts(bags, 1, counts, 1)
    assert merged == [{**pipeline.new_counts(), "bags": 1, "sampled": 3, "valid": 1}]
