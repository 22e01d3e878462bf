"""Expression trees: parsing, printing, sympy export and numpy evaluation."""

import warnings

import numpy as np
import pytest
import sympy
from hypothesis import assume, given, settings, strategies as st

from helpers import well_conditioned
from jaxsr.expr import operators
from jaxsr.expr.random_trees import random_expr
from jaxsr.expr.tokens import Vocab
from jaxsr.expr.tree import Expr, InvalidExpression, parse_prefix

seeds = st.integers(min_value=0, max_value=2**32 - 1)


def _tree(seed, n_ops=None, **kw):
    rng = np.random.default_rng(seed)
    return random_expr(rng, n_variables=3, n_operators=n_ops or int(rng.integers(0, 12)), **kw)


def test_parse_reference_example():
    expr = parse_prefix("add + N1500 E-3 mul x_0 sin x_1")
    assert expr.infix() == "1.5 + x_0*sin(x_1)"
    assert expr.constants().tolist() == [1.5]
    assert expr.complexity() == 6


@settings(max_examples=2 * settings.default.max_examples, deadline=None)
@given(seeds)
def test_prefix_round_trip(seed):
    expr = _tree(seed)
    once = parse_prefix(expr.prefix())
    # The first trip rounds constants to 4 digits; after that it is exact.
    assert once.prefix() == expr.prefix()
    assert parse_prefix(once.prefix()) == once
    assert once.skeleton() == expr.skeleton()


def assert_sympy_agrees(expr, symbolic, X):
    """``symbolic`` (a sympy form of ``expr``) gives expr's numbers at its stable points."""
    # Sympy folds undefined parts (inv(0), sin(oo)) into zoo, nan or AccumBounds.
    assume(not symbolic.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo, sympy.AccumBounds))
    symbols = sorted(symbolic.free_symbols, key=str)
    f = sympy.lambdify(symbols, symbolic, "numpy")
    ours = expr.evaluate(X)
    columns = [X[:, int(str(sym)[2:])] for sym in symbols]
    with np.errstate(all="ignore"):
        theirs = np.asarray(f(*columns), dtype=complex) * np.ones(len(X))
    ok = well_conditioned(expr, X, ours) & ~_overflows(f, columns, len(X))
    np.testing.assert_allclose(theirs[ok].real, ours[ok], rtol=1e-7, atol=1e-9)


def _overflows(f, columns, n: int) -> np.ndarray:
    """Points where sympy's form overflows in floating point. Its rewritten algebra can
    overflow where the tree does not: sin(arctan(exp(a))) becomes exp(a)/sqrt(exp(2a) + 1),
    which gives 0 for a = 640 while the tree gives 1."""
    bad = np.zeros(n, bool)
    for i in range(n if columns else 0):
        try:
            with np.errstate(over="raise", invalid="ignore", divide="ignore"):
                f(*(c[i: i + 1] for c in columns))
        except FloatingPointError:
            bad[i] = True
    return bad


def _moderate_tree(seed, **kw):
    """A random tree of variables and floats in [-3, 3], and points in [0.5, 2]^3.

    With huge constants sympy's algebraic rewriting itself over- or underflows.
    """
    rng = np.random.default_rng(seed)
    expr = _tree(seed, leaf_probs=(0.6, 0.4, 0.0), **kw)  # fixed leaves cannot be nudged
    return expr.with_constants(rng.uniform(-3, 3, expr.n_constants)), rng.uniform(0.5, 2, (20, 3))


@settings(max_examples=3 * settings.default.max_examples // 2, deadline=None)
@given(seeds)
def test_sympy_gives_the_same_numbers(seed):
    expr, X = _moderate_tree(seed, unary=("abs", "inv", "exp", "sin", "cos", "arctan", "pow2",
                                          "pow3"), binary=("add", "sub", "mul", "div"))
    assert_sympy_agrees(expr, expr.to_sympy(), X)


@settings(max_examples=3 * settings.default.max_examples // 2, deadline=None)
@given(seeds)
def test_infix_parses_back_to_the_same_function(seed):
    expr, X = _moderate_tree(seed, unary=("abs", "inv", "exp", "sin", "pow2", "pow3", "sqrt", "log"))
    assert_sympy_agrees(expr, sympy.sympify(expr.infix()), X)


_WORDS = list(Vocab.decoder().id2word[15:74]) + ["+", "-", "N1234", "E-2", "N99", "E7x", "foo", ""]


@settings(max_examples=4 * settings.default.max_examples, deadline=None)
@given(st.lists(st.sampled_from(_WORDS), max_size=25))
def test_any_token_string_parses_or_raises_invalid_expression(words):
    try:
        expr = parse_prefix(words)
    except InvalidExpression as err:
        assert 0 <= err.position <= len(words)
        return
    # Whatever parses prints back to the same words (floats were given as exact tokens).
    assert isinstance(expr, Expr)


@pytest.mark.parametrize("words, position, reason", [
    ("add x_0", 2, "truncated"),
    ("", 0, "empty"),
    ("sin x_0 x_1", 2, "extra tokens"),
    ("add x_0 bogus", 2, "unknown word"),
    ("mul + N12 E0 x_0", 1, "malformed float"),
    ("mul + N1200", 3, "truncated float"),
    ("rand", 0, "unknown word"),
])
def test_invalid_expressions_say_where_and_why(words, position, reason):
    with pytest.raises(InvalidExpression, match=reason) as info:
        parse_prefix(words)
    assert info.value.position == position
    assert isinstance(info.value, ValueError)


def test_trailing_tokens_can_be_allowed():
    assert parse_prefix("sin x_0 x_1 x_2", allow_trailing=True) == parse_prefix("sin x_0")


def test_constants_read_and_replace():
    expr = parse_prefix("add mul + N2000 E-3 x_0 add pi - N5000 E-4")
    assert expr.constants().tolist() == [2.0, -0.5]  # pi is fixed, not refinable
    new = expr.with_constants([3.0, 0.25])
    assert new.constants().tolist() == [3.0, 0.25]
    X = np.array([[1.0], [2.0]])
    np.testing.assert_allclose(new.evaluate(X), 3 * X[:, 0] + np.pi + 0.25)
    with pytest.raises(ValueError, match="2 constants"):
        expr.with_constants([1.0])


@pytest.mark.parametrize("prefix, x, expected_nan", [
    ("log x_0", 0.0, True), ("log x_0", -1.0, True), ("log x_0", 1e-300, False),
    ("sqrt x_0", -1e-9, True), ("sqrt x_0", 0.0, False),
    ("inv x_0", 0.0, True), ("div 1 x_0", 0.0, True),
    ("arcsin x_0", 1.0, False), ("arcsin x_0", 1.5, True), ("arccos x_0", -2.0, True),
    ("exp x_0", 1000.0, True), ("exp x_0", -1000.0, False),  # overflow NaN; underflow is 0
    ("pow x_0 + N5000 E-4", -4.0, True), ("pow x_0 3", -2.0, False), ("pow x_0 -1", 0.0, True),
    ("pow3 x_0", 1e200, True), ("mul x_0 x_0", 1e200, True), ("tan x_0", 1.0, False),
])
def test_domain_rules_give_nan_without_warnings(prefix, x, expected_nan):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = parse_prefix(prefix).evaluate(np.array([[x]]))[0]
    assert np.isnan(value) == expected_nan


def test_every_operator_has_every_form():
    symbols = sympy.symbols("a b")
    for op in operators.FUNCTIONS:
        args = (np.array([0.3, 0.7]), np.array([2.0, 3.0]))[: op.arity]
        assert op.apply(np, *args).shape == (2,)
        assert isinstance(op.sympy(*symbols[: op.arity]), sympy.Expr)
        for fmt in (op.infix, op.latex):
            assert len(fmt.operand_precedence) == op.arity
            assert all(f"{{{i}}}" in fmt.template for i in range(op.arity)), op.name
        expr = Expr.op(op.name, *[Expr.var(i) for i in range(op.arity)])
        assert parse_prefix(expr.prefix()) == expr


def test_printing_precedence():
    expr = parse_prefix("mul add x_0 x_1 pow2 sub x_0 - N2000 E-3")
    assert expr.infix() == "(x_0 + x_1)*(x_0 + 2.0)**2"  # x - -2 prints as x + 2
    assert parse_prefix("add x_0 mul - N4600 E-2 cos x_1").infix() == "x_0 - 46.0*cos(x_1)"
    assert parse_prefix("inv mul x_0 x_1").infix() == "1/(x_0*x_1)"
    assert parse_prefix("sub x_0 sub x_1 x_2").infix() == "x_0 - (x_1 - x_2)"
    assert parse_prefix("pow2 - N5000 E-4").infix() == "(-0.5)**2"
    assert parse_prefix("add x_0 x_1").infix(names=["mass", "v"]) == "mass + v"
    assert parse_prefix("div sqrt x_0 x_1").latex() == r"\frac{\sqrt{x_0}}{x_1}"
    assert parse_prefix("mul + N1235 E-8 sin x_0").latex() == \
        r"1.235 \cdot 10^{-5} \cdot \sin{\left(x_0\right)}"


def test_evaluate_checks_shapes():
    with pytest.raises(ValueError, match="uses x_2 but X has 2 columns"):
        parse_prefix("x_2").evaluate(np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        parse_prefix("x_0").evaluate(np.zeros((2, 2, 2)))


def test_trees_are_hashable_values():
    a = parse_prefix("add x_0 + N1000 E-3")
    b = parse_prefix(["add", "x_0", "+", "N1000", "E-3"])
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert repr(a) == "Expr('x_0 + 1.0')"
