"""Property-based tests of the symbolic core on hostile input: token streams, float tokens,
point sets and sympy expressions. Each either gives a valid result (checked against an
independent computation) or fails with the documented error; no other exception."""

from __future__ import annotations

import re

import numpy as np
import pytest
import sympy
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from helpers import well_conditioned
from jaxsr.decode import to_expressions
from jaxsr.expr import Expr, InvalidExpression, Vocab, decode_float, encode_float, encode_points
from jaxsr.expr import operators
from jaxsr.expr.random_trees import random_expr
from jaxsr.expr.tokens import MAX_EXPONENT, MAX_INPUT_DIMENSION
from jaxsr.expr.tree import CONSTANT, parse_prefix
from jaxsr.regressor import inputs

DECODER_WORDS = Vocab.decoder().id2word
OPERATOR_WORDS = [op.name for op in operators.OPERATORS]
# The largest float the tokens hold: N9999 E100.
LARGEST = 9999 * 10.0**MAX_EXPONENT

# ---------------------------------------------------------------------------- token streams

odd_words = st.sampled_from(["+", "-", "N", "E", "N12345", "N123", "E101", "E-101", "E-0",
                             "E05", "E+5", "E1_0", "N١٢٣٤", "Nabcd", "N-123", "", " ", "x_",
                             "x_-1", "X_0", "x_0 ", "CONSTANT", "<EOS>", "<PAD>"])
words = st.one_of(
    st.sampled_from(OPERATOR_WORDS), st.sampled_from(DECODER_WORDS), odd_words,
    st.from_regex(r"x_[0-9]{1,12}", fullmatch=True), st.text(max_size=6),
    st.integers(-3, 3), st.none(), st.floats(allow_nan=True))


@st.composite
def near_valid_streams(draw):
    """A random tree's prefix with a few tokens replaced, deleted or inserted."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    toks = random_expr(rng, n_operators=draw(st.integers(0, 8))).prefix()
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(toks)))
        action = draw(st.sampled_from(["replace", "delete", "insert"]))
        if action == "insert" or i == len(toks):
            toks.insert(i, draw(words))
        elif action == "delete":
            del toks[i]
        else:
            toks[i] = draw(words)
    return toks


token_streams = st.one_of(st.lists(words, max_size=40), near_valid_streams())


def _tokens_used(expr: Expr) -> int:
    return sum(3 if token == CONSTANT else 1 for token in expr.skeleton())


@given(token_streams, st.booleans())
def test_parse_prefix_gives_a_tree_or_invalid_expression(toks, trailing):
    try:
        expr = parse_prefix(toks, allow_trailing=trailing)
    except InvalidExpression as err:
        assert err.reason and 0 <= err.position <= len(toks)
        assert f"(at token {err.position})" in str(err)
        return
    used = _tokens_used(expr)
    assert used <= len(toks) if trailing else used == len(toks)
    assert expr.n_constants <= inputs.max_constants(used)  # the documented bound
    again = parse_prefix(expr.prefix())  # a tree's own tokens always parse back
    assert again.skeleton() == expr.skeleton()
    # Non-canonical float words (N0012 E-3) re-encode to 4 significant digits.
    np.testing.assert_allclose(again.constants(), expr.constants(), rtol=5e-4, atol=1e-96)


@given(token_streams)
def test_parse_prefix_of_a_string_splits_on_whitespace(toks):
    text_tokens = [t for t in toks if isinstance(t, str) and t.split() == [t]]
    try:
        from_list = parse_prefix(text_tokens).skeleton()
    except InvalidExpression as err:
        from_list = type(err)
    try:
        from_text = parse_prefix(" ".join(text_tokens)).skeleton()
    except InvalidExpression as err:
        from_text = type(err)
    assert from_list == from_text


def test_parse_prefix_names_the_fault():
    with pytest.raises(InvalidExpression, match=r"unknown word 'foo' \(at token 1\)"):
        parse_prefix(["sin", "foo"])
    with pytest.raises(InvalidExpression, match=r"truncated: 1 operand\(s\) missing"):
        parse_prefix(["add", "x_0"])
    with pytest.raises(InvalidExpression, match="not a string"):
        parse_prefix(["sin", 5])
    with pytest.raises(InvalidExpression, match="expected a mantissa token N0000..N9999, got 5"):
        parse_prefix(["+", 5, "E0"])
    with pytest.raises(InvalidExpression, match="malformed float"):
        parse_prefix(["+", "N1234", "E+5"])


token_ids = st.integers(-3, len(DECODER_WORDS) + 3)


@st.composite
def decoded_rows(draw):
    """(..., L) int arrays: random ids, or rows holding a tree's ids with noise."""
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=6))
    ids = draw(hnp.arrays(np.int64, shape, elements=token_ids))
    if draw(st.booleans()) and shape[-1] > 0:
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        row = Vocab.decoder().encode(random_expr(rng, n_operators=3).prefix())[:shape[-1]]
        ids.reshape(-1, shape[-1])[0, :len(row)] = row
    return ids


@given(decoded_rows(), st.booleans())
def test_to_expressions_keeps_or_drops_every_row(ids, with_lengths):
    lengths = None
    if with_lengths:
        lengths = np.random.default_rng(ids.size).integers(-2, ids.shape[-1] + 3,
                                                             ids.shape[:-1])
    out = to_expressions(ids, lengths)
    rows = int(np.prod(ids.shape[:-1]))
    assert len(out.exprs) + sum(out.dropped.values()) == rows
    assert out.index.shape == (len(out.exprs), ids.ndim - 1)
    assert all(isinstance(e, Expr) for e in out.exprs)
    assert set(out.dropped) <= {"truncated", "unknown word", "extra tokens after a complete "
                                "expression", "malformed float", "truncated float",
                                "empty expression", "token id out of range"}


def test_to_expressions_refuses_non_integer_tokens():
    with pytest.raises(ValueError, match="integer array"):
        to_expressions(np.zeros((2, 3), np.float32))


# ---------------------------------------------------------------------------- float tokens

hostile_floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True),
    st.sampled_from([0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1e-97, 9.9994e-98,
                     9.9996e-98, 1e-100, 1e300, -1e300, 1e100, LARGEST, 9.9995e103,
                     1.7976931348623157e308, float("nan"), float("inf")]))


@given(hostile_floats)
def test_encode_float_keeps_four_digits_or_refuses(value):
    if not np.isfinite(value):
        with pytest.raises(ValueError, match="NaN or inf"):
            encode_float(value)
        return
    try:
        toks = encode_float(value)
    except ValueError as err:
        assert abs(value) >= 9.9995e103 and f"above E{MAX_EXPONENT}" in str(err)
        return
    back = decode_float(toks)
    assert toks[0] == ("-" if value < 0 else "+")  # -0.0 encodes as "+", as the reference
    if back == 0:
        assert abs(value) < 9.9995e-98  # below E-100: underflows to zero
        assert toks[1:] == ["N0000", "E0"] or abs(value) == 0
    else:
        assert back == pytest.approx(value, rel=5.0001e-4)
        digits, exponent = ("%.3e" % abs(value)).split("e")
        assert toks[1] == "N" + digits.replace(".", "")
        assert toks[2] == f"E{int(exponent) - 3}"


float_word_lists = st.lists(st.one_of(
    st.sampled_from(["+", "-"]), st.from_regex(r"N[0-9]{4}", fullmatch=True),
    st.integers(-101, 101).map(lambda e: f"E{e}"), odd_words, st.text(max_size=5),
    st.integers(0, 9), st.none()), min_size=0, max_size=4)


def _is_float_words(toks) -> bool:
    if len(toks) != 3 or not all(isinstance(t, str) for t in toks):
        return False
    sign, mantissa, exponent = toks
    match = re.fullmatch(r"E(-?[1-9][0-9]{0,2}|0)", exponent)
    return (sign in ("+", "-") and re.fullmatch(r"N[0-9]{4}", mantissa) is not None
            and match is not None and abs(int(match.group(1))) <= MAX_EXPONENT)


@given(float_word_lists)
def test_decode_float_accepts_exactly_the_vocabulary_words(toks):
    if not _is_float_words(toks):
        with pytest.raises(ValueError, match="float is 3 tokens|expected a"):
            decode_float(toks)
        return
    value = decode_float(toks)
    assert np.isfinite(value) and abs(value) <= LARGEST
    assert (value < 0) == (toks[0] == "-" and toks[1] != "N0000")


# ---------------------------------------------------------------------------- point sets


@st.composite
def point_sets(draw):
    n = draw(st.integers(0, 8))
    d = draw(st.integers(0, MAX_INPUT_DIMENSION + 2))
    x = draw(hnp.arrays(np.float64, (n, d), elements=hostile_floats))
    y_rows = n if draw(st.integers(0, 9)) else draw(st.integers(0, 8))  # sometimes wrong
    y = draw(hnp.arrays(np.float64, (y_rows,), elements=hostile_floats))
    return x, y


@given(point_sets())
def test_encode_points_gives_valid_ids_or_a_clear_error(points):
    x, y = points
    try:
        ids = encode_points(x, y)
    except ValueError as err:
        message = str(err)
        if len(y) != len(x):
            assert "expected x (N, D) and y (N,)" in message
        elif x.shape[1] > MAX_INPUT_DIMENSION:
            assert f"at most {MAX_INPUT_DIMENSION}" in message
        else:  # x is encoded before y: the message names one of the faults present
            values = np.concatenate([x.ravel(), y])
            faults = {"NaN or inf": not np.isfinite(values).all(),
                      f"above E{MAX_EXPONENT}": bool(np.any(np.abs(values[np.isfinite(values)])
                                                            >= 9.9995e103))}
            assert any(fault in message for fault, present in faults.items() if present)
        return
    n, d = x.shape
    assert ids.shape == (n, 3 * (MAX_INPUT_DIMENSION + 1)) and ids.dtype == np.int32
    assert ((ids >= 0) & (ids < len(Vocab.encoder()))).all()
    words = np.array(Vocab.encoder().decode(ids), dtype=object).reshape(
        n, MAX_INPUT_DIMENSION + 1, 3)
    assert (words[:, d:MAX_INPUT_DIMENSION] == "<INPUT_PAD>").all()
    for row in range(n):
        for column, value in [*enumerate(x[row]), (MAX_INPUT_DIMENSION, y[row])]:
            back = decode_float(words[row, column])
            assert back == pytest.approx(value, rel=5.0001e-4, abs=1e-97)


# ---------------------------------------------------------------------------- sympy

X_SYMBOL, Y_SYMBOL, Z_SYMBOL = sympy.symbols("x y z")
sympy_leaves = st.one_of(
    st.sampled_from([X_SYMBOL, Y_SYMBOL, X_SYMBOL, Y_SYMBOL, sympy.pi, sympy.E,
                     sympy.EulerGamma, Z_SYMBOL, sympy.I, sympy.oo, sympy.zoo, sympy.nan]),
    st.integers(-5, 5).map(sympy.Integer),
    st.tuples(st.integers(-9, 9), st.integers(1, 9)).map(lambda t: sympy.Rational(*t)),
    st.floats(-10, 10, allow_nan=False).map(lambda v: sympy.Float(round(v, 3))))
SUPPORTED_FUNCTIONS = [sympy.exp, sympy.log, sympy.sin, sympy.cos, sympy.tan, sympy.asin,
                       sympy.acos, sympy.atan, sympy.Abs, sympy.sqrt]
OTHER_FUNCTIONS = [sympy.sinh, sympy.gamma, sympy.floor, sympy.erf, sympy.sign]
BINARY = [lambda a, b: a + b, lambda a, b: a - b, lambda a, b: a * b, lambda a, b: a / b,
          lambda a, b: a ** b, lambda a, b: a ** 2, lambda a, b: a ** -1,
          lambda a, b: a ** sympy.Rational(3, 2), lambda a, b: sympy.Max(a, b)]


def _apply(parts):
    """f(*args), or None where sympy itself refuses (Max of a complex number, ...)."""
    f, *args = parts
    try:
        return f(*args)
    except (ValueError, TypeError, ZeroDivisionError):
        return None


def _extend(children):
    unary = st.tuples(st.sampled_from(SUPPORTED_FUNCTIONS * 3 + OTHER_FUNCTIONS), children)
    binary = st.tuples(st.sampled_from(BINARY), children, children)
    return st.one_of(unary, binary).map(_apply).filter(lambda e: e is not None)


sympy_exprs = st.recursive(sympy_leaves, _extend, max_leaves=6)
POINTS = np.random.default_rng(0).uniform(-3, 3, (64, 2))


@settings(max_examples=max(10, settings.default.max_examples // 2))
@given(sympy_exprs)
def test_from_sympy_matches_sympy_or_refuses(expr):
    try:
        tree = Expr.from_sympy(expr, ["x", "y"])
    except ValueError as err:
        assert re.search(r"cannot convert|not among the variable names", str(err)), err
        event("refused")
        return
    event("converted")
    with np.errstate(all="ignore"):
        ours = tree.evaluate(POINTS)
        theirs = _sympy_values(expr)
    assume(theirs is not None)
    near = well_conditioned(tree, POINTS, ours)
    both = near & np.isfinite(theirs)
    np.testing.assert_allclose(ours[both], theirs[both], rtol=1e-7, atol=1e-9)
    assert np.all(np.isfinite(tree.constants()))


def _sympy_values(expr) -> np.ndarray | None:
    """sympy's own numeric values on POINTS (real ones only), or None where sympy cannot
    give them (a number it cannot evaluate as a float)."""
    f = sympy.lambdify([X_SYMBOL, Y_SYMBOL], expr, modules="numpy")
    try:
        values = np.asarray(f(POINTS[:, 0], POINTS[:, 1]), dtype=np.complex128)
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return None
    values = np.broadcast_to(values, (len(POINTS),))
    return np.where(values.imag == 0, values.real, np.nan)


def test_from_sympy_names_what_it_cannot_convert():
    with pytest.raises(ValueError, match="cannot convert"):
        Expr.from_sympy(sympy.sinh(X_SYMBOL), ["x"])
    with pytest.raises(ValueError, match="not among the variable names"):
        Expr.from_sympy(X_SYMBOL + Z_SYMBOL, ["x"])
    with pytest.raises(ValueError, match="cannot convert zoo"):
        Expr.from_sympy(X_SYMBOL + sympy.zoo, ["x"])
    with pytest.raises(ValueError, match="number oo to an expression tree: it is not a finite"):
        Expr.from_sympy(X_SYMBOL + sympy.oo, ["x"])
    with pytest.raises(ValueError, match="number 1.00000E\\+500 .* not a finite float64"):
        Expr.from_sympy(X_SYMBOL + sympy.Float("1e500"), ["x"])
