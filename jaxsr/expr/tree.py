"""Expression trees: parse the reference's prefix syntax, print, evaluate, export.

An ``Expr`` is immutable and hashable. Its leaves are variables ``x_k``, float constants (the
refinable numbers; three tokens in prefix form), and fixed leaves of the operator table
(integers and named constants such as ``pi``, which refinement leaves alone, as the reference
does).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Iterator, Sequence

import numpy as np
import sympy

from jaxsr.expr import operators, tokens

FLOAT = "<float>"  # token of a float-constant node (never a vocabulary word)
_FLIP_SIGN = {"add": "sub", "sub": "add"}
CONSTANT = "CONSTANT"  # the reference's skeleton placeholder for a float
_VARIABLE = re.compile(r"x_(\d+)\Z")


class InvalidExpression(ValueError):
    """A token sequence that is not a valid prefix expression.

    Attributes:
      reason: what is wrong, in words.
      position: index of the offending token (``len(tokens)`` when the input was truncated).
      tokens: the input sequence.
    """

    def __init__(self, reason: str, position: int, tokens_: Sequence[str] = ()):
        self.reason, self.position, self.tokens = reason, position, list(tokens_)
        super().__init__(f"{reason} (at token {position})")


@dataclasses.dataclass(frozen=True, repr=False)
class Expr:
    """A node: an operator with children, a variable, a float constant or a fixed leaf."""

    token: str
    children: tuple[Expr, ...] = ()
    value: float | None = None  # float constants only

    # ------------------------------------------------------------------ construction
    @staticmethod
    def var(index: int) -> Expr:
        return Expr(f"x_{int(index)}")

    @staticmethod
    def const(value: float) -> Expr:
        return Expr(FLOAT, value=float(value))

    @staticmethod
    def op(name: str, *children: Expr) -> Expr:
        arity = operators.get(name).arity
        if arity != len(children):
            raise ValueError(f"{name} takes {arity} operand(s), got {len(children)}")
        return Expr(name, tuple(children))

    # ------------------------------------------------------------------ structure
    @property
    def is_constant(self) -> bool:
        return self.token == FLOAT

    @property
    def variable(self) -> int | None:
        """The index k of a variable leaf ``x_k``, else None."""
        match = _VARIABLE.match(self.token)
        return int(match.group(1)) if match else None

    @property
    def operator(self) -> operators.Operator | None:
        """The table row of an operator or fixed leaf; None for variables and floats."""
        return operators.BY_NAME.get(self.token)

    def preorder(self) -> Iterator[Expr]:
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children))

    @functools.cached_property
    def postorder(self) -> tuple[Expr, ...]:
        """All nodes, children before parents (cached: trees are immutable)."""
        out, stack = [], [(self, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded or not node.children:
                out.append(node)
            else:
                stack.append((node, True))
                stack.extend((c, False) for c in reversed(node.children))
        return tuple(out)

    def complexity(self) -> int:
        """Number of nodes (a constant counts once, as in the reference's ``_complexity``)."""
        return len(self.postorder)

    def variables(self) -> set[int]:
        return {n.variable for n in self.postorder if n.variable is not None}

    # ------------------------------------------------------------------ constants
    def constants(self) -> np.ndarray:
        """The float constants in prefix order (integers and named constants excluded)."""
        return np.array([n.value for n in self.preorder() if n.is_constant], np.float64)

    @functools.cached_property
    def n_constants(self) -> int:
        """Number of float constants (cached: refinement asks every tree many times)."""
        return sum(n.token == FLOAT for n in self.postorder)

    def with_constants(self, values) -> Expr:
        """A copy with the float constants replaced, in prefix order."""
        values = [float(v) for v in np.ravel(np.asarray(values, np.float64))]
        if len(values) != self.n_constants:
            raise ValueError(f"expression has {self.n_constants} constants, got {len(values)}")
        it = iter(values)

        def rebuild(node: Expr) -> Expr:
            if node.is_constant:
                return Expr.const(next(it))
            if not node.children:
                return node
            return Expr(node.token, tuple(rebuild(c) for c in node.children))

        return rebuild(self)

    def skeleton(self) -> tuple[str, ...]:
        """Prefix tokens with every float replaced by ``CONSTANT``: a key for deduplication."""
        return tuple(CONSTANT if n.is_constant else n.token for n in self.preorder())

    # ------------------------------------------------------------------ tokens
    def prefix(self) -> list[str]:
        """Prefix tokens as the reference writes them (floats as 3 tokens, 4 digits)."""
        out: list[str] = []
        for node in self.preorder():
            out.extend(tokens.encode_float(node.value) if node.is_constant else [node.token])
        return out

    # ------------------------------------------------------------------ printing
    def _render(self, notation: str, names, number) -> tuple[str, int]:
        """Text and precedence of this subtree in ``notation`` ("infix" or "latex")."""
        if self.is_constant:
            return number(self.value), (operators.ATOM if self.value >= 0 else 4)
        if self.variable is not None:
            return _variable_name(self.variable, names), operators.ATOM
        fmt = getattr(self.operator, notation)
        parts = []
        for child, least in zip(self.children, fmt.operand_precedence):
            text, prec = child._render(notation, names, number)
            if prec < least:
                text = f"({text})" if notation == "infix" else rf"\left({text}\right)"
            parts.append(text)
        if self.token in _FLIP_SIGN and parts[1].startswith("-"):
            # "a + -2*x" -> "a - 2*x": a leading negative literal heads a product or quotient,
            # which binds tighter than + and -, so moving its sign onto the operator is exact.
            flipped = operators.BY_NAME[_FLIP_SIGN[self.token]]
            fmt = getattr(flipped, notation)
            parts[1] = parts[1][1:]
        return fmt.template.format(*parts), fmt.precedence

    def infix(self, names: Sequence[str] | None = None, precision: int | None = None) -> str:
        """A Python/sympy-parsable string, e.g. ``"x_0*sin(1.5*x_1) + 2.0"``.

        Args:
          names: variable names to use instead of ``x_0``, ``x_1``, ...
          precision: significant digits of constants; default: full precision (repr).
        """
        number = repr if precision is None else (lambda v: f"{v:.{precision}g}")
        return self._render("infix", names, number)[0]

    def latex(self, names: Sequence[str] | None = None, precision: int = 4) -> str:
        return self._render("latex", names, functools.partial(_latex_number, digits=precision))[0]

    def __str__(self) -> str:
        return self.infix()

    def __repr__(self) -> str:
        return f"Expr({self.infix()!r})"

    @staticmethod
    def from_sympy(expr, names: Sequence[str]) -> Expr:
        """Converts a sympy expression; ``names[k]`` is the symbol that becomes ``x_k``.

        Every number becomes a float constant (refinable), except small integer exponents,
        which become structure (``pow2``, ``pow3``, ``inv``, ``sqrt``).
        """
        return _from_sympy(sympy.sympify(expr), {str(n): i for i, n in enumerate(names)})

    def to_sympy(self, names: Sequence[str] | None = None) -> sympy.Expr:
        """The sympy form; variables are ``sympy.Symbol`` named ``x_k`` or from ``names``."""
        if self.is_constant:
            return sympy.Float(self.value)
        if self.variable is not None:
            return sympy.Symbol(_variable_name(self.variable, names), real=True)
        return self.operator.sympy(*(c.to_sympy(names) for c in self.children))

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, X) -> np.ndarray:
        """Values on the rows of ``X`` (N, D) in float64, NaN where undefined.

        Domain and overflow rules are the operator table's (``operators.py``).
        """
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 1:
            X = X[:, None]
        if X.ndim != 2:
            raise ValueError(f"X must have shape (N, D), got {X.shape}")
        used = self.variables()
        if used and max(used) >= X.shape[1]:
            raise ValueError(f"expression uses x_{max(used)} but X has {X.shape[1]} columns")
        values: dict[int, np.ndarray] = {}
        with np.errstate(all="ignore"):
            for node in self.postorder:
                values[id(node)] = _evaluate_node(node, X, values)
        return values[id(self)]


def _evaluate_node(node: Expr, X: np.ndarray, values: dict) -> np.ndarray:
    n = X.shape[0]
    if node.is_constant:
        return np.full(n, node.value)
    if node.variable is not None:
        return X[:, node.variable].copy()
    op = node.operator
    if op.arity == 0:
        return np.full(n, op.value)
    return op.apply(np, *(values[id(c)] for c in node.children))


def _variable_name(index: int, names) -> str:
    if names is None:
        return f"x_{index}"
    if index >= len(names):
        raise ValueError(f"no name for x_{index}: only {len(names)} names given")
    return names[index]


def _latex_number(value: float, digits: int) -> str:
    text = f"{value:.{digits}g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        return rf"{mantissa} \cdot 10^{{{int(exponent)}}}"
    return text


# ---------------------------------------------------------------------------- from sympy

_SYMPY_FUNCTIONS = {sympy.exp: "exp", sympy.log: "log", sympy.sin: "sin", sympy.cos: "cos",
                    sympy.tan: "tan", sympy.asin: "arcsin", sympy.acos: "arccos",
                    sympy.atan: "arctan", sympy.Abs: "abs"}
_SYMPY_CONSTANTS = {sympy.pi: "pi", sympy.E: "e", sympy.EulerGamma: "euler_gamma"}
_SYMPY_POWERS = {2: ("pow2",), 3: ("pow3",), -1: ("inv",), sympy.Rational(1, 2): ("sqrt",),
                 -2: ("inv", "pow2"), -3: ("inv", "pow3"), sympy.Rational(-1, 2): ("inv", "sqrt")}


def _from_sympy(e: sympy.Basic, index: dict[str, int]) -> Expr:
    if e.is_Symbol:
        if str(e) not in index:
            raise ValueError(f"symbol {e} is not among the variable names {list(index)}")
        return Expr.var(index[str(e)])
    if e in _SYMPY_CONSTANTS:
        return Expr(_SYMPY_CONSTANTS[e])
    if e.is_Number:
        value = float(e) if e.is_finite else math.nan  # sympy's own floats reach 1e+476
        if not math.isfinite(value):  # oo, nan, or beyond float64: no constant stands for it
            raise ValueError(f"cannot convert the number {sympy.N(e, 6)} to an expression "
                             "tree: it is not a finite float64")
        return Expr.const(value)
    if e.is_Add:
        terms = [_signed_term(t, index) for t in e.as_ordered_terms()]
        terms.sort(key=lambda t: t[0])  # a positive term first: "a - b" rather than "-b + a"
        out = terms[0][1] if not terms[0][0] else Expr.op("mul", Expr.const(-1.0), terms[0][1])
        for negative, term in terms[1:]:
            out = Expr.op("sub" if negative else "add", out, term)
        return out
    if e.is_Mul:
        return _product(e, index)
    if e.is_Pow:
        base, exponent = e.args
        if exponent in _SYMPY_POWERS:
            out = _from_sympy(base, index)
            for name in reversed(_SYMPY_POWERS[exponent]):
                out = Expr.op(name, out)
            return out
        return Expr.op("pow", _from_sympy(base, index), _from_sympy(exponent, index))
    if e.func in _SYMPY_FUNCTIONS:
        return Expr.op(_SYMPY_FUNCTIONS[e.func], _from_sympy(e.args[0], index))
    raise ValueError(f"cannot convert {e!r} ({e.func.__name__}) to an expression tree")


def _signed_term(term: sympy.Expr, index) -> tuple[bool, Expr]:
    """(is_negative, tree of |term|) for a term of a sum."""
    coefficient, rest = term.as_coeff_Mul()
    if coefficient.is_negative:
        return True, _from_sympy(-term, index)
    return False, _from_sympy(term, index)


def _product(e: sympy.Mul, index) -> Expr:
    numerator, denominator = sympy.fraction(e)
    if denominator != 1:
        return Expr.op("div", _from_sympy(numerator, index), _from_sympy(denominator, index))
    factors = [_from_sympy(f, index) for f in e.as_ordered_factors()]
    out = factors[0]
    for factor in factors[1:]:
        out = Expr.op("mul", out, factor)
    return out


# ---------------------------------------------------------------------------- parsing


def _read_float(toks: Sequence[str], i: int) -> tuple[float, int]:
    if i + tokens.TOKENS_PER_FLOAT > len(toks):
        raise InvalidExpression("truncated float: a float is 3 tokens", len(toks), toks)
    try:
        return tokens.decode_float(toks[i : i + 3]), i + 3
    except ValueError as err:
        raise InvalidExpression(f"malformed float: {err}", i, toks) from None


def parse_prefix(toks: Sequence[str] | str, *, allow_trailing: bool = False) -> Expr:
    """Builds a tree from prefix tokens (a list of words, or one space-separated string).

    Accepts the reference's syntax: operators of the table, variables ``x_k``, floats as three
    tokens (``+ N1500 E-3``), integers and named constants. Raises ``InvalidExpression`` with
    the position and reason for truncated input, extra tokens (unless ``allow_trailing``, as
    the reference's decoder does) and unknown words.
    """
    toks = toks.split() if isinstance(toks, str) else list(toks)
    frames: list[tuple[str, int, list[Expr]]] = []  # open operators: (name, arity, children)
    i = 0
    while i < len(toks):
        word = toks[i]
        if not isinstance(word, str):
            raise InvalidExpression(f"token {word!r} is not a string", i, toks)
        op = operators.BY_NAME.get(word)
        if op is not None and op.arity > 0:
            frames.append((word, op.arity, []))
            i += 1
            continue
        if word in ("+", "-"):
            value, i = _read_float(toks, i)
            node = Expr.const(value)
        elif op is not None or _VARIABLE.match(word):
            node, i = Expr(word), i + 1
        else:
            raise InvalidExpression(f"unknown word {word!r}", i, toks)
        # Attach the leaf, closing every operator it completes.
        while frames:
            name, arity, children = frames[-1]
            children.append(node)
            if len(children) < arity:
                break
            frames.pop()
            node = Expr(name, tuple(children))
        if not frames:
            if i < len(toks) and not allow_trailing:
                raise InvalidExpression(
                    f"extra tokens after a complete expression: {toks[i:i + 5]}", i, toks)
            return node
    if not toks:
        raise InvalidExpression("empty expression", 0, toks)
    missing = sum(arity - len(children) for _, arity, children in frames)
    raise InvalidExpression(f"truncated: {missing} operand(s) missing", len(toks), toks)
