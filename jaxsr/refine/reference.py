"""The reference's way of refining: one scipy BFGS per candidate, numpy objective and gradient.

This is the baseline that ``refine_constants`` is measured and tested against. The gradient
is reverse-mode over the tree, using the operator table's derivatives (the reference used
torch autodiff through a sympy-built module; the arithmetic is the same).
"""

from __future__ import annotations

import numpy as np
import scipy.optimize

from jaxsr.expr import operators
from jaxsr.expr.compiler import KIND_CONST, KIND_FIXED, KIND_OP, KIND_VAR, _template
from jaxsr.expr.tree import Expr


def loss_and_grad(expr: Expr, consts: np.ndarray, X: np.ndarray, y: np.ndarray,
                  weight: np.ndarray) -> tuple[float, np.ndarray]:
    """Weighted MSE of ``expr`` with constants ``consts`` (prefix order) and its gradient.

    ``weight`` sums to 1. Returns (nan, nan-gradient) where the formula is undefined.
    """
    t = _template(expr)
    n = len(t.kind)
    values = [None] * n
    with np.errstate(all="ignore"):
        for i in range(n):
            values[i] = _node_value(t, i, consts, X, values)
        residual = values[n - 1] - y
        adjoint = [None] * n
        adjoint[n - 1] = 2 * weight * residual
        grad = np.zeros(len(consts))
        for i in range(n - 1, -1, -1):
            if adjoint[i] is None:
                continue
            if t.kind[i] == KIND_CONST:
                grad[t.arg[i]] += np.sum(adjoint[i])
            elif t.kind[i] == KIND_OP:
                op = operators.FUNCTIONS[t.arg[i]]
                kids = t.children[i, : op.arity]
                partials = op.derivative(np, values[i], *(values[k] for k in kids))
                for k, partial in zip(kids, partials):
                    contribution = adjoint[i] * partial
                    adjoint[k] = contribution if adjoint[k] is None else adjoint[k] + contribution
        loss = float(np.sum(weight * residual**2))
    return loss, grad


def _node_value(t, i: int, consts, X, values):
    kind = t.kind[i]
    if kind == KIND_VAR:
        return X[:, t.arg[i]]
    if kind == KIND_CONST:
        return np.full(len(X), consts[t.arg[i]])
    if kind == KIND_FIXED:
        return np.full(len(X), t.fixed[i])
    op = operators.FUNCTIONS[t.arg[i]]
    return op.apply(np, *(values[k] for k in t.children[i, : op.arity]))


def scipy_refine(expr: Expr, X, y, sample_weight=None, max_iter: int | None = None,
                 gtol: float | None = None):
    """Refines one candidate with ``scipy.optimize.minimize(method="BFGS")``.

    Returns (refined Expr, final weighted MSE, scipy's OptimizeResult). scipy's defaults
    (gtol 1e-5, maxiter 200 * n) apply unless ``max_iter`` or ``gtol`` is given. gtol bounds
    the gradient of the weighted MSE, in the units of y squared: a nearly exact fit of a
    target with small values already meets the default at its starting point.
    """
    X = np.asarray(X, np.float64)
    y = np.asarray(y, np.float64)
    weight = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, np.float64)
    weight = weight / weight.sum()
    c0 = expr.constants()
    if len(c0) == 0:
        return expr, loss_and_grad(expr, c0, X, y, weight)[0], None

    def fun(c):
        loss, grad = loss_and_grad(expr, c, X, y, weight)
        return (loss, grad) if np.isfinite(loss) else (np.inf, np.zeros_like(c))

    options = {} if max_iter is None else {"maxiter": max_iter}
    if gtol is not None:
        options["gtol"] = gtol
    result = scipy.optimize.minimize(fun, c0, jac=True, method="BFGS", options=options)
    best = result.x if result.fun <= fun(c0)[0] else c0
    return expr.with_constants(best), min(result.fun, fun(c0)[0]), result
