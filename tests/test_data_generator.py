"""The training-data generator: determinism, validity of every sample, options, config errors."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from jaxsr.data import Generator, GeneratorConfig, points, trees
from jaxsr.data import generator as generator_module
from jaxsr.expr import parse_prefix
from jaxsr.expr.tokens import Vocab
from jaxsr.expr.tree import Expr


@pytest.fixture(scope="module")
def gen() -> Generator:
    return Generator(GeneratorConfig(seed=3))


@pytest.fixture(scope="module")
def samples(gen):
    return [gen.sample(i) for i in range(400)]


def _digest(sample) -> str:
    h = hashlib.sha256()
    for array in (sample.tokens, sample.x, sample.y):
        h.update(np.ascontiguousarray(array).tobytes())
    for sigma, (x, y) in sorted(sample.prediction.items()):
        h.update(repr(sigma).encode() + x.tobytes() + y.tobytes())
    h.update(repr(sample.info).encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------- determinism

_INDICES = [0, 7, 123, 99_999]

_CHILD = """
import json, sys
sys.path[:0] = {path!r}
from tests.test_data_generator import _digest
from jaxsr.data import Generator, GeneratorConfig
gen = Generator(GeneratorConfig(seed=3))
indices = {indices!r}
print(json.dumps({{"train": [_digest(gen.sample(i)) for i in reversed(indices)][::-1],
                   "eval": [_digest(gen.sample(i, evaluation=True)) for i in indices]}}))
"""


def test_same_index_gives_the_same_sample_in_another_process(gen):
    here = {"train": [_digest(gen.sample(i)) for i in _INDICES],
            "eval": [_digest(gen.sample(i, evaluation=True)) for i in _INDICES]}
    # The child draws the training samples in the opposite order: order must not matter.
    code = _CHILD.format(path=sys.path, indices=_INDICES)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=str(__import__("pathlib").Path(__file__).parents[1]))
    assert json.loads(out.stdout.strip().splitlines()[-1]) == here


def test_sample_does_not_depend_on_history_or_global_state(gen):
    first = _digest(gen.sample(42))
    np.random.seed(0)
    state = np.random.get_state()
    for i in range(20):
        gen.sample(i)
    assert _digest(Generator(GeneratorConfig(seed=3)).sample(42)) == first
    assert _digest(gen.sample(42)) == first
    # The generator neither reads nor advances NumPy's global random state.
    after = np.random.get_state()
    assert after[0] == state[0] and np.array_equal(after[1], state[1]) and after[2] == state[2]


def test_seeds_and_streams_differ(gen):
    other = Generator(GeneratorConfig(seed=4))
    assert _digest(gen.sample(5)) != _digest(other.sample(5))
    assert _digest(gen.sample(5)) != _digest(gen.sample(6))
    assert not np.array_equal(gen.sample(5).x[:3], gen.sample(5, evaluation=True).x[:3])


def test_headers_predict_the_samples(gen, samples):
    headers = gen.headers(np.arange(len(samples)))
    for i, s in enumerate(samples):
        assert headers.dimension[i] == s.info.dimension
        assert headers.unary_budget[i] == s.info.unary_budget
        assert headers.n_points[i] == s.info.n_points


def test_scalar_and_vector_hashes_agree():
    indices = np.array([0, 1, 17, 2**31 + 5, 2**50 + 3])
    vector = generator_module._hash_uniforms(11, indices, 1, 3)
    scalar = [generator_module._hash_uniforms_one(11, int(i), 1, 3) for i in indices]
    np.testing.assert_array_equal(vector, scalar)
    assert np.all((vector >= 0) & (vector < 1))


# ---------------------------------------------------------------------------- validity


def _assert_valid(sample, max_abs_y=1e103):
    assert sample.x.ndim == 2 and sample.y.shape == (sample.x.shape[0],)
    assert np.all(np.isfinite(sample.x))
    assert np.all(np.isfinite(sample.y)), "NaN or inf left the generator"
    assert np.all(np.abs(sample.y) < max_abs_y)
    for x, y in sample.prediction.values():
        assert np.all(np.isfinite(x)) and np.all(np.isfinite(y))
        assert np.all(np.abs(y) < max_abs_y)


def test_every_sample_is_valid_and_consistent(samples):
    vocab = Vocab.decoder()
    for s in samples:
        _assert_valid(s)
        info = s.info
        assert s.x.shape == (info.n_points, info.dimension)
        assert info.dimension == len(s.tree.variables()) == max(s.tree.variables()) + 1
        # Standardised inputs: zero mean, unit population std per dimension.
        np.testing.assert_allclose(s.x.mean(axis=0), 0.0, atol=1e-9)
        np.testing.assert_allclose(s.x.std(axis=0), 1.0, rtol=1e-9)
        # y is the tree on x (no noise by default), with the table's numerics.
        np.testing.assert_allclose(s.y, s.tree.evaluate(s.x), rtol=1e-12, atol=0)
        # Token ids are exactly the reference tokenisation of the tree.
        np.testing.assert_array_equal(s.tokens, vocab.encode(s.tree.prefix()))
        assert parse_prefix(s.prefix).skeleton() == s.tree.skeleton()
        unary = sum(len(n.children) == 1 for n in s.tree.postorder)
        binary = sum(len(n.children) == 2 for n in s.tree.postorder)
        assert (info.n_unary_ops, info.n_binary_ops) == (unary, binary)
        assert info.n_unary_ops <= info.unary_budget
        assert len(s.tokens) <= trees.max_prefix_length(GeneratorConfig(), info.dimension,
                                                        info.unary_budget)


def test_reference_tree_shape(samples):
    """Constants as the reference places them: a global bias at the root, never div."""
    for s in samples:
        assert s.tree.token == "add" and s.tree.children[0].is_constant
        assert "div" not in s.tree.skeleton() and "pow" not in s.tree.skeleton()
        for c in np.abs(s.tree.constants()):  # |c| = m * 10**e, m in 1..999, e in -3..-1
            assert any(1 <= round(c / 10.0**e) <= 999 and round(c / 10.0**e) * 10.0**e == c
                       for e in (-3, -2, -1))


@pytest.mark.parametrize("precision", [1, 3, 4])
def test_constant_tokens_are_the_float_encoding(precision):
    """Constants carry ids read off their (mantissa, exponent): they must equal the
    reference's "%.3e" encoding of the value, for every mantissa length."""
    cfg = GeneratorConfig(float_precision=precision)
    constants = trees.ConstantSampler(np.random.default_rng(precision), cfg)
    vocab = Vocab.decoder()
    for _ in range(3000):
        node = constants.draw()
        assert list(node.ids) == vocab.encode(Expr.const(node.value).prefix()).tolist()


def test_evaluation_samples_have_extrapolation_sets(gen):
    cfg = gen.config
    s = gen.sample(3, evaluation=True)
    _assert_valid(s)
    assert s.x.shape[0] == cfg.max_points == 200
    assert sorted(s.prediction) == sorted(cfg.prediction_sigmas) == [1, 2, 4, 8, 16, 32]
    for sigma, (x, y) in s.prediction.items():
        assert x.shape == (cfg.n_prediction_points, s.info.dimension)
        np.testing.assert_allclose(x.std(axis=0), sigma, rtol=1e-9)
        np.testing.assert_allclose(y, s.tree.evaluate(x), rtol=1e-12)


def test_rejection_rules_hold_where_rejections_are_common():
    """exp/pow3-heavy trees overflow often; a low max_abs_y rejects more: nothing bad leaks."""
    cfg = GeneratorConfig(seed=1, unary_operators={"exp": 1, "pow3": 1, "inv": 1, "log": 1},
                          min_unary_ops=3, max_abs_y=1e3)
    gen = Generator(cfg)
    drawn = [gen.sample(i) for i in range(60)]
    for s in drawn:
        _assert_valid(s, max_abs_y=1e3)
    assert sum(s.info.rejected_generation_error for s in drawn) > 60


def test_overflow_and_underflow_reject_the_set():
    gen = Generator()
    x = np.array([[1.0], [800.0]])
    assert gen.evaluate(parse_prefix("exp x_0"), x) is None  # overflow
    assert gen.evaluate(parse_prefix("exp sub x_0 mul + N1000 E-3 x_0"), -x) is not None
    assert gen.evaluate(parse_prefix("exp mul - N1000 E-3 x_0"), x) is None  # underflow
    lenient = Generator(GeneratorConfig(allow_underflow=True))
    np.testing.assert_allclose(lenient.evaluate(parse_prefix("exp mul - N1000 E-3 x_0"), x),
                               [np.exp(-1.0), 0.0])
    assert gen.evaluate(parse_prefix("log x_0"), -x) is None  # undefined: rejected at once


def test_random_rotations_are_special_orthogonal():
    rng = np.random.default_rng(0)
    r = points.random_rotations(rng, 4000, 3)
    np.testing.assert_allclose(r @ np.swapaxes(r, 1, 2), np.broadcast_to(np.eye(3), r.shape),
                               atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-12)
    # Haar: every entry has mean 0 and E[r_ij^2] = 1/d (standard errors ~0.005 here).
    assert np.all(np.abs(r.mean(axis=0)) < 0.04)
    np.testing.assert_allclose((r**2).mean(axis=0), 1 / 3, atol=0.03)
    assert np.array_equal(points.random_rotations(rng, 2, 1), np.ones((2, 1, 1)))


# ---------------------------------------------------------------------------- options


def test_noise_options():
    train = Generator(GeneratorConfig(train_noise_gamma=0.1))
    s = train.sample(0)
    assert 0 <= s.info.noise_gamma <= 0.1
    assert not np.allclose(s.y, s.tree.evaluate(s.x))
    for kind in ("additive", "multiplicative"):
        g = Generator(GeneratorConfig(eval_noise_gamma=0.05, eval_noise_kind=kind))
        e = g.sample(0, evaluation=True)
        clean = e.tree.evaluate(e.x)
        assert e.info.noise_gamma == 0.05 and not np.allclose(e.y, clean)
        if kind == "multiplicative":
            ratio = e.y[clean != 0] / clean[clean != 0]
            assert abs(np.std(ratio - 1) - 0.05) < 0.02
        for x, y in e.prediction.values():  # extrapolation sets stay clean
            np.testing.assert_allclose(y, e.tree.evaluate(x), rtol=1e-12)


def test_paper_style_constants():
    g = Generator(GeneratorConfig(reduce_num_constants=False))
    for i in range(30):
        s = g.sample(i)
        _assert_valid(s)
        nodes = s.tree.postorder
        for node in nodes:  # every variable and every unary sits inside a + b * (.)
            if node.variable is not None or len(node.children) == 1:
                parents = [p for p in nodes if node in p.children]
                assert any(p.token == "mul" and p.children[0].is_constant for p in parents)


def test_integer_leaves_and_dimension_options():
    g = Generator(GeneratorConfig(prob_const=0.5, enforce_dim=False, max_input_dimension=5,
                                  min_input_dimension=5))
    drawn = [g.sample(i) for i in range(40)]
    words = {w for s in drawn for w in s.prefix}
    assert any(w.lstrip("-").isdigit() or w in ("pi", "e", "euler_gamma") for w in words)
    assert min(s.info.dimension for s in drawn) < 5  # small trees use fewer variables
    headers = g.headers(np.arange(40))
    for s, bound in zip(drawn, headers.n_points, strict=True):
        assert s.info.n_points <= bound and s.x.shape[1] == s.info.dimension
        _assert_valid(s)


def test_operator_filters():
    g = Generator(GeneratorConfig(required_operators=("sin",), operators_to_not_repeat="sqrt",
                                  min_unary_ops=1))
    for i in range(10):
        s = g.sample(i)
        assert "sin" in s.prefix and s.prefix.count("sqrt") <= 1


def test_use_abs_and_max_trials():
    s = Generator(GeneratorConfig(use_abs=True, unary_operators={"log": 1})).sample(2)
    _assert_valid(s)
    g = Generator(GeneratorConfig(max_trials=3))
    for i in range(20):
        t = g.sample(i)
        _assert_valid(t)
        assert len(t.y) == t.info.n_points


# ---------------------------------------------------------------------------- config errors


@pytest.mark.parametrize("changes, field", [
    (dict(min_input_dimension=5, max_input_dimension=3), "min_input_dimension"),
    (dict(max_input_dimension=11), "max_input_dimension"),
    (dict(min_unary_ops=3, max_unary_ops=2), "min_unary_ops"),
    (dict(unary_operators={"sinh": 1.0}), "unary_operators"),
    (dict(unary_operators={"add": 1.0}), "unary_operators"),
    (dict(binary_operators={"add": -1.0}), "binary_operators"),
    (dict(binary_operators={"add": 0.0}), "binary_operators"),
    (dict(required_operators=("nope",)), "required_operators"),
    (dict(max_points=0), "max_points"),
    (dict(max_centroids=1), "max_centroids"),
    (dict(max_abs_y=1e200), "max_abs_y"),
    (dict(max_int=11), "max_int"),
    (dict(float_precision=5), "float_precision"),
    (dict(prob_const=1.5), "prob_const"),
    (dict(prediction_sigmas=(1.0, -2.0)), "prediction_sigmas"),
    (dict(eval_noise_kind="gaussian"), "eval_noise_kind"),
    (dict(max_binary_ops_offset=0, max_binary_ops_per_dim=0), "max_binary_ops_offset"),
    (dict(seed=-1), "seed"),
])
def test_bad_config_names_the_field(changes, field):
    with pytest.raises(ValueError, match=rf"GeneratorConfig\.{field}"):
        GeneratorConfig(**changes)


def test_bad_arguments(gen):
    for index in (-1, 1.5, "3", True):
        with pytest.raises(ValueError, match="index"):
            gen.sample(index)
    with pytest.raises(TypeError, match="GeneratorConfig"):
        Generator({"seed": 1})


def test_defaults_are_the_reference_ones():
    cfg = GeneratorConfig()
    assert (cfg.min_input_dimension, cfg.max_input_dimension) == (1, 10)
    assert (cfg.min_unary_ops, cfg.max_unary_ops, cfg.max_unary_depth) == (0, 4, 6)
    assert cfg.binary_ops_range(3) == (0, 6)
    assert dict(cfg.binary_operators) == {"add": 1, "sub": 1, "mul": 1, "div": 0}
    weights = dict(cfg.unary_operators)
    assert weights["sqrt"] == 5 and weights["inv"] == weights["pow2"] == 3
    assert weights["tan"] == weights["arctan"] == 0.2 and weights["arcsin"] == 0
    assert sum(weights.values()) == pytest.approx(17.4)
    assert cfg.constant_exponents == (-3, -1)
    assert (cfg.min_points_per_dim, cfg.max_points, cfg.max_centroids) == (5, 200, 10)
    assert cfg.max_abs_y == 1e103 and cfg.max_trials == 1 and cfg.train_noise_gamma == 0
    assert cfg.reduce_num_constants and cfg.enforce_dim and not cfg.allow_underflow


def test_saved_configs_with_the_earlier_point_count_names_still_load():
    saved = {"max_len": 30, "min_len_per_dim": 2, "max_input_dimension": 2}
    assert GeneratorConfig.from_dict(saved) == GeneratorConfig(
        max_points=30, min_points_per_dim=2, max_input_dimension=2)
    with pytest.raises(ValueError, match="'max_len' is the earlier name of 'max_points'"):
        GeneratorConfig.from_dict({"max_len": 30, "max_points": 40})
