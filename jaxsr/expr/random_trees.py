"""Simple random expression trees for tests and benchmarks.

This is not the training-data generator (that is ``jaxsr.data``, which reproduces the
reference's distribution); it draws any operator of the table, so tests exercise every
operator, domain rule and leaf kind.
"""

from __future__ import annotations

import numpy as np

from jaxsr.expr import operators
from jaxsr.expr.tree import Expr

_FIXED = tuple(op.name for op in operators.OPERATORS if op.arity == 0)


def random_expr(
    rng: np.random.Generator,
    n_variables: int = 3,
    n_operators: int = 6,
    unary: tuple[str, ...] = operators.UNARY,
    binary: tuple[str, ...] = operators.BINARY,
    leaf_probs: tuple[float, float, float] = (0.6, 0.3, 0.1),
) -> Expr:
    """A random tree with exactly ``n_operators`` operator nodes.

    Args:
      rng: numpy Generator.
      n_variables: leaves draw variables from ``x_0 .. x_{n_variables - 1}``.
      n_operators: operator nodes (each unary with probability 1/2).
      unary, binary: operator names to draw from.
      leaf_probs: probabilities of a variable, a float constant, and a fixed leaf.
    """
    if n_operators == 0:
        kind = rng.choice(3, p=leaf_probs)
        if kind == 0:
            return Expr.var(rng.integers(n_variables))
        if kind == 1:
            value = rng.choice([-1, 1]) * rng.integers(1, 10000) * 10.0 ** rng.integers(-4, 2)
            return Expr.const(float(value))
        return Expr(str(rng.choice(_FIXED)))
    rest = n_operators - 1
    if rng.random() < 0.5 or not binary:
        return Expr.op(str(rng.choice(unary)),
                       random_expr(rng, n_variables, rest, unary, binary, leaf_probs))
    left = int(rng.integers(rest + 1))
    return Expr.op(
        str(rng.choice(binary)),
        random_expr(rng, n_variables, left, unary, binary, leaf_probs),
        random_expr(rng, n_variables, rest - left, unary, binary, leaf_probs),
    )
