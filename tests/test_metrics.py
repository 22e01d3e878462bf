"""jaxsr.metrics on cases worked out by hand."""

import math

import numpy as np
import pytest
import sympy

from jaxsr.expr import Expr
from jaxsr.metrics import (
    acc_tau,
    check_symbolic_solution,
    complexity,
    is_symbolic_solution,
    parse_formula,
    r2_score,
    r2_zero,
)

Y = np.array([1.0, 2.0, 3.0, 4.0])  # mean 2.5, total sum of squares 5


def test_r2_and_its_clipped_form():
    # residuals +-1 on every point: 1 - 4/5
    assert r2_score(Y, Y + np.array([1, -1, 1, -1])) == pytest.approx(0.2)
    assert r2_zero(Y, Y + np.array([1, -1, 1, -1])) == pytest.approx(0.2)
    # reversed: residual sum 9+1+1+9 = 20, so R2 = 1 - 20/5 = -3, clipped to 0
    assert r2_score(Y, Y[::-1]) == pytest.approx(-3.0)
    assert r2_zero(Y, Y[::-1]) == 0.0
    assert r2_zero(Y, np.full(4, 2.5)) == 0.0
    assert r2_zero(Y, Y) == 1.0


def test_non_finite_predictions_give_nan():
    bad = np.array([1.0, np.inf, 3.0, 4.0])
    assert math.isnan(r2_zero(Y, bad)) and math.isnan(acc_tau(Y, bad, 0.1))


def test_r2_of_a_constant_target():
    assert r2_score(np.ones(3), np.ones(3)) == 1.0
    assert r2_score(np.ones(3), np.array([1.0, 1.0, 2.0])) == 0.0


def test_acc_tau_counts_a_problem_solved_at_95_percent_of_points():
    y = np.ones(100)
    y_pred = np.ones(100)
    y_pred[:5] = 2.0  # 95 of 100 points exact: exactly at the threshold
    assert acc_tau(y, y_pred, 0.1) == 1.0
    y_pred[5] = 2.0  # 94 of 100
    assert acc_tau(y, y_pred, 0.1) == 0.0


def test_acc_tau_tolerance_is_relative_and_inclusive():
    y = np.full(20, 4.0)
    # |4.5 - 4| = 0.5 = 0.125 * 4 exactly (all binary fractions): on the boundary counts
    assert acc_tau(y, np.full(20, 4.5), 0.125) == 1.0
    assert acc_tau(y, np.full(20, np.nextafter(4.5, 5.0)), 0.125) == 0.0
    # relative to |y|: 5% off is within 0.1, not within 0.01
    y = np.array([100.0, -200.0, 300.0, -400.0])
    assert acc_tau(y, y * 1.05, 0.1) == 1.0 and acc_tau(y, y * 1.05, 0.01) == 0.0
    # y = 0 needs an exact prediction unless atol is given (the reference's biggio variant)
    zero = np.zeros(4)
    assert acc_tau(zero, np.full(4, 1e-12), 0.1) == 0.0
    assert acc_tau(zero, np.full(4, 1e-4), 0.05, atol=1e-3) == 1.0


@pytest.mark.parametrize("model, truth, reason", [
    ("3*x", "2.5*x", "ratio is constant"),              # a multiplicative constant
    ("2.5*x + 1", "2.5*x", "difference is constant"),  # an additive constant
    ("x*(1 + y) - x", "x*y", "difference is 0"),
    ("2*sin(x)", "sin(x)", "ratio is constant"),
    ("exp(x + 1.2)", "exp(x)", "ratio is constant"),   # e^1.2 e^x
    ("log(3*x)", "log(x)", "difference is constant"),  # log 3 + log x (x > 0 not needed)
    ("1/(1/x + 1/y)", "x*y/(x + y)", "difference is 0"),
    ("x + 1e-8*y", "x", "difference is 0"),            # SRBench rounds floats to 6 decimals
])
def test_symbolic_solutions(model, truth, reason):
    check = check_symbolic_solution(model, truth)
    assert check.solution is True and check.reason == reason, check


@pytest.mark.parametrize("model, truth", [
    ("x**2", "x"),
    ("sin(x) + x", "sin(x)"),
    ("sqrt(x**2)", "x"),  # |x| without assumptions on x
    ("3.0", "x"),         # a constant model
    ("x + 1e-3*y", "x"),  # a small but real extra term
])
def test_not_symbolic_solutions(model, truth):
    assert check_symbolic_solution(model, truth).solution is False


def test_a_model_that_simplifies_to_zero_is_never_a_solution():
    check = check_symbolic_solution("x - x", "x")
    assert check.solution is False and "simplifies to 0" in check.reason


def test_the_srbench_accuracy_gate():
    check = check_symbolic_solution("x", "x", r2=0.5)
    assert check.solution is False and "not checked" in check.reason
    assert check_symbolic_solution("x", "x", r2=0.51).solution is True


def test_jaxsr_trees_and_symbols_with_assumptions_match_by_name():
    tree = Expr.op("mul", Expr.const(2.0), Expr.var(0))  # to_sympy gives a real=True symbol
    assert is_symbolic_solution(tree, sympy.Symbol("x_0") * sympy.pi) is True
    # pi is SRBench's literal 3.1415926535 on both sides: the difference is exactly 0
    assert check_symbolic_solution("3.1415926535*x_0", "pi*x_0").reason == "difference is 0"


def test_undecided_when_the_formula_is_too_large_or_sympy_too_slow():
    big = " + ".join(f"sin({k}*x)" for k in range(1, 60))
    check = check_symbolic_solution(big, "x", max_nodes=100)
    assert check.solution is None and "max_nodes" in check.reason and not check
    slow = check_symbolic_solution("(x + 1)**30 - (x - 1)**30", "x**29", timeout=1e-4)
    assert slow.solution is None and "more than" in slow.reason


def test_complexity_counts_nodes():
    tree = Expr.op("add", Expr.op("sin", Expr.var(0)), Expr.const(1.5))
    assert complexity(tree) == 4  # add, sin, x_0, 1.5
    assert complexity(sympy.sympify("2*x")) == 3  # Mul, 2, x (SRBench's preorder count)
    assert complexity(sympy.sympify("sin(x) + 1")) == 4
    with pytest.raises(TypeError, match="Expr or a sympy"):
        complexity("x + 1")


def test_parse_formula_keeps_names_sympy_would_misread():
    expr = parse_formula("I*gamma + arcsin(x) + ln(E)", ["I", "gamma", "x", "E"])
    assert {str(s) for s in expr.free_symbols} == {"I", "gamma", "x", "E"}
    assert expr.has(sympy.asin) and expr.has(sympy.log)
