"""A fitted formula as a JAX function: ``f(params, X)``, jittable, vmappable, differentiable.

Built from our own tree and the operator table (the same array functions and domain rules
as every other backend), not through sympy.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxsr.expr import Expr


def jax_function(expr: Expr):
    """``(f, params)``: ``f(params, X)`` gives the (N,) values of ``expr`` on the rows of
    X (N, D); ``params`` holds its float constants in prefix order (``expr.constants()``).
    Values are NaN outside an operator's domain, with finite gradients elsewhere."""

    def f(params, X):
        X = jnp.asarray(X)
        slots = iter(range(expr.n_constants))

        def value(node: Expr):  # preorder recursion: constants are met in prefix order
            if node.is_constant:
                return params[next(slots)]
            if node.variable is not None:
                return X[:, node.variable]
            op = node.operator
            if op.arity == 0:
                return op.value
            return op.apply(jnp, *(value(child) for child in node.children))

        return jnp.broadcast_to(value(expr), X.shape[:1])

    return f, jnp.asarray(expr.constants())
