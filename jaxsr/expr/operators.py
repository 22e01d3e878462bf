"""The operator table: one row per operator or fixed leaf, driving every backend.

Every other module (tree evaluation in numpy, the batched JAX interpreter, sympy export,
infix and LaTeX printing, the data generator) reads this table instead of keeping its own
switch statement, so adding an operator means adding one row to ``OPERATORS``.

Numerical semantics follow the reference implementation's numpy evaluation
(``Node.val`` run under ``np.seterr(all="raise")``):

* an argument outside the operator's domain gives NaN (``log`` of x <= 0, ``sqrt`` of x < 0,
  ``inv``/``div`` by exactly 0, ``arcsin``/``arccos`` outside [-1, 1], a negative base with a
  non-integer exponent in ``pow``);
* a result that overflows to +-inf gives NaN (the reference caught the overflow exception and
  returned NaN).

One deliberate difference: the reference also raised on *underflow* (e.g. ``exp(-800)``) and
turned the whole column into NaN; here an underflow is the correctly rounded tiny value or 0,
and NaN is per element rather than per column.

The same array function serves numpy and JAX (it receives the array module ``xp``), so the two
backends cannot drift apart. Domain rules come with a "safe" argument that replaces invalid
inputs before the function is applied: the output is NaN there either way, but gradients stay
finite in JAX (the classic double-``where``), which keeps masked points from poisoning a
candidate's gradient.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np
import sympy

ArrayFn = Callable[..., "np.ndarray"]


@dataclasses.dataclass(frozen=True)
class Format:
    """How an operator prints in one notation.

    ``template`` holds ``{0}``/``{1}`` for the operands. ``precedence`` is how tightly the
    printed form binds (higher binds tighter; 9 is an atom such as ``sin(x)``), and
    ``operand_precedence`` is, per operand, the least precedence it may have without being
    parenthesised.
    """

    template: str
    precedence: int
    operand_precedence: tuple[int, ...] = ()


ATOM = 9  # precedence of atoms: variables, numbers, function calls


@dataclasses.dataclass(frozen=True)
class Operator:
    """One row of the table: an operator (arity 1 or 2) or a fixed leaf (arity 0).

    Attributes:
      name: the token in the reference vocabulary (``"add"``, ``"pow2"``, ``"pi"``, ``"-3"``).
      arity: number of operands; 0 for fixed leaves (named constants and integers).
      fn: ``fn(xp, *operands)`` with ``xp`` = numpy or jax.numpy; unused for leaves.
      sympy: builds the sympy form from sympy operands (or the leaf's sympy value).
      infix: printing as a Python/sympy-parsable string.
      latex: printing as LaTeX.
      derivative: ``derivative(xp, out, *operands) -> tuple`` of partial derivatives, one per
        operand, given the operator's output ``out`` (reusing it makes reverse sweeps cheap:
        exp' = out, sqrt' = 0.5 / out). Used by the JAX interpreter and numpy code alike.
      domain: ``domain(xp, *operands) -> bool mask`` of valid inputs, or None (always valid).
      safe: per operand, a value substituted where the domain mask is False.
      value: the numeric value of a fixed leaf.
    """

    name: str
    arity: int
    fn: ArrayFn | None
    sympy: Callable
    infix: Format
    latex: Format
    derivative: Callable | None = None
    domain: Callable | None = None
    safe: tuple[float, ...] = ()
    value: float | None = None

    def apply(self, xp, *operands):
        """Evaluates the operator elementwise with the reference's NaN rules.

        Works for numpy (call it under ``np.errstate(all="ignore")``) and for jax.numpy.
        """
        if self.domain is None:
            result = self.fn(xp, *operands)
        else:
            valid = self.domain(xp, *operands)
            safe_operands = [
                xp.where(valid, x, s) if s is not None else x
                for x, s in zip(operands, self.safe)
            ]
            result = xp.where(valid, self.fn(xp, *safe_operands), xp.nan)
        return xp.where(xp.isfinite(result), result, xp.nan)


def _pow_domain(xp, base, exponent):
    integral = exponent == xp.floor(exponent)
    return (base > 0) | (integral & ((base != 0) | (exponent >= 0)))


def _binary(name, fn, sym, infix, latex, **kw) -> Operator:
    return Operator(name, 2, fn, sym, infix, latex, **kw)


def _function(name, fn, sym, *, latex_name=None, **kw) -> Operator:
    """A unary operator printed as a function call, e.g. ``sin(x)``."""
    latex_name = latex_name or f"\\{name}"
    return Operator(
        name, 1, fn, sym,
        Format(f"{name}({{0}})", ATOM, (0,)),
        Format(latex_name + r"{{\left({0}\right)}}", ATOM, (0,)),
        **kw,
    )


def _leaf(name: str, value: float, sym, latex: str | None = None) -> Operator:
    text_prec = ATOM if value >= 0 else 4  # a negative literal binds like unary minus
    text = str(sym)  # sympy's spelling ("E", "EulerGamma") so that infix strings sympify
    return Operator(
        name, 0, None, lambda: sym,
        Format(text, text_prec), Format(latex or name, text_prec), value=value,
    )


# Precedences: 1 additive, 3 multiplicative, 4 unary minus, 5 power, 9 atom.
OPERATORS: tuple[Operator, ...] = (
    _binary("add", lambda xp, a, b: a + b, lambda a, b: a + b,
            Format("{0} + {1}", 1, (1, 1)), Format("{0} + {1}", 1, (1, 1)),
            derivative=lambda xp, out, a, b: (1.0, 1.0)),
    _binary("sub", lambda xp, a, b: a - b, lambda a, b: a - b,
            Format("{0} - {1}", 1, (1, 3)), Format("{0} - {1}", 1, (1, 3)),
            derivative=lambda xp, out, a, b: (1.0, -1.0)),
    _binary("mul", lambda xp, a, b: a * b, lambda a, b: a * b,
            Format("{0}*{1}", 3, (3, 4)), Format(r"{0} \cdot {1}", 3, (3, 4)),
            derivative=lambda xp, out, a, b: (b, a)),
    _binary("div", lambda xp, a, b: a / b, lambda a, b: a / b,
            Format("{0}/{1}", 3, (3, 5)), Format(r"\frac{{{0}}}{{{1}}}", ATOM, (0, 0)),
            derivative=lambda xp, out, a, b: (1 / b, -out / b),
            domain=lambda xp, a, b: b != 0, safe=(None, 1.0)),
    _binary("pow", lambda xp, a, b: xp.power(a, b), lambda a, b: a**b,
            Format("{0}**{1}", 5, (ATOM, 4)), Format("{{{0}}}^{{{1}}}", 5, (ATOM, 0)),
            derivative=lambda xp, out, a, b: (b * xp.power(a, b - 1), out * xp.log(a)),
            domain=_pow_domain, safe=(1.0, 1.0)),
    Operator("inv", 1, lambda xp, a: 1 / a, lambda a: 1 / a,
             Format("1/{0}", 3, (5,)), Format(r"\frac{{1}}{{{0}}}", ATOM, (0,)),
             derivative=lambda xp, out, a: (-out * out,),
             domain=lambda xp, a: a != 0, safe=(1.0,)),
    _function("abs", lambda xp, a: xp.abs(a), sympy.Abs, latex_name=r"\operatorname{abs}",
              derivative=lambda xp, out, a: (xp.sign(a),)),
    Operator("sqrt", 1, lambda xp, a: xp.sqrt(a), sympy.sqrt,
             Format("sqrt({0})", ATOM, (0,)), Format(r"\sqrt{{{0}}}", ATOM, (0,)),
             derivative=lambda xp, out, a: (0.5 / out,),
             domain=lambda xp, a: a >= 0, safe=(1.0,)),
    _function("log", lambda xp, a: xp.log(a), sympy.log, derivative=lambda xp, out, a: (1 / a,),
              domain=lambda xp, a: a > 0, safe=(1.0,)),
    _function("exp", lambda xp, a: xp.exp(a), sympy.exp, derivative=lambda xp, out, a: (out,)),
    _function("sin", lambda xp, a: xp.sin(a), sympy.sin, derivative=lambda xp, out, a: (xp.cos(a),)),
    _function("cos", lambda xp, a: xp.cos(a), sympy.cos,
              derivative=lambda xp, out, a: (-xp.sin(a),)),
    _function("tan", lambda xp, a: xp.tan(a), sympy.tan,
              derivative=lambda xp, out, a: (1 + out * out,)),
    _function("arcsin", lambda xp, a: xp.arcsin(a), sympy.asin,
              derivative=lambda xp, out, a: (1 / xp.sqrt(1 - a * a),),
              domain=lambda xp, a: xp.abs(a) <= 1, safe=(0.0,)),
    _function("arccos", lambda xp, a: xp.arccos(a), sympy.acos,
              derivative=lambda xp, out, a: (-1 / xp.sqrt(1 - a * a),),
              domain=lambda xp, a: xp.abs(a) <= 1, safe=(0.0,)),
    _function("arctan", lambda xp, a: xp.arctan(a), sympy.atan,
              derivative=lambda xp, out, a: (1 / (1 + a * a),)),
    Operator("pow2", 1, lambda xp, a: a * a, lambda a: a**2,
             Format("{0}**2", 5, (ATOM,)), Format("{{{0}}}^{{2}}", 5, (ATOM,)),
             derivative=lambda xp, out, a: (2 * a,)),
    Operator("pow3", 1, lambda xp, a: a * a * a, lambda a: a**3,
             Format("{0}**3", 5, (ATOM,)), Format("{{{0}}}^{{3}}", 5, (ATOM,)),
             derivative=lambda xp, out, a: (3 * a * a,)),
    # Fixed leaves of the reference vocabulary (section 2.5): named constants and integers.
    _leaf("pi", math.pi, sympy.pi, r"\pi"),
    _leaf("e", math.e, sympy.E),
    _leaf("euler_gamma", 0.5772156649015329, sympy.EulerGamma, r"\gamma"),
    *(_leaf(str(i), float(i), sympy.Integer(i)) for i in range(-10, 11)),
)

BY_NAME: dict[str, Operator] = {op.name: op for op in OPERATORS}

# Operators proper (arity >= 1), in table order; their index is the opcode of the batched
# JAX interpreter (interpreter.py).
FUNCTIONS: tuple[Operator, ...] = tuple(op for op in OPERATORS if op.arity > 0)
OPCODE: dict[str, int] = {op.name: i for i, op in enumerate(FUNCTIONS)}

UNARY = tuple(op.name for op in FUNCTIONS if op.arity == 1)
BINARY = tuple(op.name for op in FUNCTIONS if op.arity == 2)


def get(name: str) -> Operator:
    """Returns the table row for ``name``; raises KeyError naming the known operators."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(
            f"unknown operator {name!r}; known: {', '.join(op.name for op in FUNCTIONS)}"
        ) from None


assert len(FUNCTIONS) == 18, "the reference vocabulary has 17 operators plus pow"
assert len(np.unique([op.name for op in OPERATORS])) == len(OPERATORS)
