"""Scores of predictions and formulas: R2 (clipped or not), Acc_tau, the symbolic-solution check
and complexity.

Definitions follow the reference's ``symbolicregression/metrics.py`` (docs/reference.md 6.1)
for the numeric scores and SRBench's ``assess_symbolic_model.py`` for the symbolic check
(docs/anchors.md 2.1):

- ``r2_zero``: R2 clipped at 0, the paper's in-domain "R2" column.
- ``acc_tau``: 1 when at least 95% of the points have ``|y_pred - y| <= tau * |y|``.
- ``check_symbolic_solution``: the model minus the truth simplifies to 0 or a constant, or the
  model over the truth simplifies to a constant (so ``3*x`` solves ``2.5*x``, and so does
  ``2.5*x + 1``); only checked when the test R2 exceeds 0.5, as SRBench does.
- ``complexity``: nodes of a jaxsr tree (the reference's ``_complexity``) or of a sympy
  expression (SRBench's ``complexity``).

Numeric scores are NaN when a prediction is not finite (the reference's convention); tables that
average them count NaN as a failure (see ``experiments/common.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading

import numpy as np
import sympy
from sympy.parsing.sympy_parser import parse_expr

# SRBench replaces pi by this literal in both the true and the predicted formula.
SRBENCH_PI = sympy.Float(3.1415926535)
# SRBench rounds every float of the formulas it compares to this many decimals.
SRBENCH_DECIMALS = 6
# SRBench only looks for a symbolic solution when the test R2 is above this.
SRBENCH_MIN_R2 = 0.5
# Function names of the Feynman lists that sympy spells differently.
_FUNCTION_ALIASES = {"arcsin": sympy.asin, "arccos": sympy.acos, "arctan": sympy.atan,
                     "ln": sympy.log}


# ---------------------------------------------------------------------------- numeric scores


def _as_vectors(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, np.float64).ravel()
    y_pred = np.asarray(y_pred, np.float64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    return y_true, y_pred


def r2_score(y_true, y_pred, *, clip: bool = False) -> float:
    """Coefficient of determination; NaN if any prediction is not finite.

    With ``clip=True`` negative values become 0 (see ``r2_zero``). A constant target gives 1.0
    for a perfect prediction, else 0.0.
    """
    y_true, y_pred = _as_vectors(y_true, y_pred)
    if not np.all(np.isfinite(y_pred)):
        return float("nan")
    residual = np.sum((y_true - y_pred) ** 2)
    total = np.sum((y_true - y_true.mean()) ** 2)
    score = 1.0 - residual / total if total > 0 else float(residual == 0)
    return max(0.0, score) if clip else float(score)


def r2_zero(y_true, y_pred) -> float:
    """R2 clipped at 0 (the reference's ``r2_zero``, the paper's Table 2 "R2"); NaN if any
    prediction is not finite."""
    return r2_score(y_true, y_pred, clip=True)


def acc_tau(y_true, y_pred, tau: float, *, atol: float = 0.0, fraction: float = 0.95) -> float:
    """The paper's Acc_tau as the reference computes it (``accuracy_l1_{tau}``).

    1.0 if at least ``fraction`` of the points have ``|y_pred - y_true| <= atol + tau *
    |y_true|`` (``np.isclose(y_pred, y_true, rtol=tau, atol=atol)``), else 0.0; NaN if any
    prediction is not finite. ``atol=1e-3, tau=0.05`` gives the reference's
    ``accuracy_l1_biggio``.
    """
    y_true, y_pred = _as_vectors(y_true, y_pred)
    if not np.all(np.isfinite(y_pred)):
        return float("nan")
    close = np.abs(y_pred - y_true) <= atol + tau * np.abs(y_true)
    return float(np.mean(close) >= fraction)


accuracy_tau = acc_tau  # the name used before the research harness; kept working


# ---------------------------------------------------------------------------- formulas


def parse_formula(text: str, names) -> sympy.Expr:
    """A formula string as sympy, with every name in ``names`` a plain ``Symbol``.

    Names that sympy would read as something else (``I``, ``E``, ``gamma``, ``beta``) stay
    variables; ``arcsin``, ``arccos``, ``arctan`` and ``ln`` are understood.
    """
    local = {**_FUNCTION_ALIASES, **{str(name): sympy.Symbol(str(name)) for name in names}}
    return parse_expr(text, local_dict=local)


def complexity(expr) -> int:
    """Size of a formula.

    - a jaxsr ``Expr``: its number of nodes, a constant counting once (the reference's
      ``_complexity``, the token count of its prefix form with floats as one token);
    - a sympy expression: the nodes of its preorder traversal (SRBench's ``complexity``, which
      it applies to the simplified model).
    """
    if isinstance(expr, sympy.Basic):
        return sum(1 for _ in sympy.preorder_traversal(expr))
    if hasattr(expr, "postorder"):  # jaxsr.expr.Expr; not imported, to keep this module light
        return int(expr.complexity())
    raise TypeError(f"complexity() takes a jaxsr Expr or a sympy expression, "
                    f"got {type(expr).__name__}")


@dataclasses.dataclass(frozen=True)
class SymbolicCheck:
    """Outcome of ``check_symbolic_solution``.

    Attributes:
      solution: True or False; None when it could not be decided (formula too large for the
        budget, sympy ran out of time or failed). Tables count None as "not a solution", as
        SRBench does with its timeouts.
      reason: why, in words ("difference is constant", "R2 0.3 <= 0.5: not checked", ...).
      simplified: the simplified model, as text ("" when not computed).
      difference: truth - model after simplification ("" when not computed).
      ratio: model / truth ("" when not computed).
    """

    solution: bool | None
    reason: str
    simplified: str = ""
    difference: str = ""
    ratio: str = ""

    def __bool__(self) -> bool:
        return bool(self.solution)


class _OutOfTime(Exception):
    pass


@contextlib.contextmanager
def _time_budget(seconds: float | None):
    """Raises ``_OutOfTime`` inside the block after ``seconds`` (SIGALRM: only in the main
    thread of a Unix process; elsewhere the block runs unbounded and only the size guard of
    ``check_symbolic_solution`` protects it)."""
    usable = (seconds is not None and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def expire(signum, frame):
        raise _OutOfTime

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _standardise(expr) -> sympy.Expr:
    """sympy with plain symbols (no assumptions, so ``x`` from two sources is one symbol) and
    pi written as SRBench's literal."""
    if hasattr(expr, "to_sympy"):  # a jaxsr Expr
        expr = expr.to_sympy()
    expr = sympy.sympify(expr)
    plain = {s: sympy.Symbol(s.name) for s in expr.free_symbols}
    return expr.xreplace(plain).subs(sympy.pi, SRBENCH_PI)


def _round_floats(expr: sympy.Expr) -> sympy.Expr:
    """SRBench's ``round_floats``: every float rounded to 6 decimals (1e-7 becomes 0)."""
    floats = {a: sympy.Float(round(float(a), SRBENCH_DECIMALS))
              for a in sympy.preorder_traversal(expr) if isinstance(a, sympy.Float)}
    return expr.xreplace(floats)


def _is_constant(expr: sympy.Expr) -> bool:
    """sympy's ``is_constant`` (numeric probes, then simplified derivatives), with "cannot
    tell" and non-finite constants (zoo, nan) read as False."""
    if expr.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo):
        return False
    return bool(expr.is_constant())


def check_symbolic_solution(model, truth, *, r2: float | None = None,
                            max_nodes: int = 200, timeout: float | None = 10.0) -> SymbolicCheck:
    """Is ``model`` the true formula up to an additive or multiplicative constant?

    SRBench's definition (``experiment/assess_symbolic_model.py``, ``postprocessing``):

    1. only checked when the test R2 is above 0.5 (pass ``r2``; None skips this gate);
    2. the model is simplified (``sympy.simplify(ratio=1)``) and its floats rounded to 6
       decimals; a model that becomes 0 or NaN is not a solution;
    3. it is a solution when ``truth - model`` simplifies to 0 or to a constant, or when
       ``model / truth`` is a constant (sympy's ``is_constant``).

    So ``3*x`` and ``2.5*x + 1`` both solve ``2.5*x``; ``x**2`` does not solve ``x``.
    The reference's own ``is_symbolic_solution`` is a numeric version of the same idea.

    Args:
      model, truth: sympy expressions, jaxsr ``Expr`` trees, or strings that sympy parses
        (use ``parse_formula`` for names sympy would misread). Symbols match by name.
      r2: the model's test R2, for the SRBench gate.
      max_nodes: a model or truth with more sympy nodes than this is not simplified: the
        answer is None ("unknown"), because simplify can take minutes on large formulas.
      timeout: seconds of sympy work at most (main thread only); past it the answer is None.
    """
    if r2 is not None and not r2 > SRBENCH_MIN_R2:
        return SymbolicCheck(False, f"R2 {r2:.3g} <= {SRBENCH_MIN_R2}: not checked (SRBench)")
    try:
        model, truth = _standardise(model), _standardise(truth)
    except (sympy.SympifyError, TypeError, SyntaxError) as err:
        return SymbolicCheck(None, f"cannot read the formula: {err}")
    size = max(complexity(model), complexity(truth))
    if size > max_nodes:
        return SymbolicCheck(None, f"formula of {size} nodes exceeds max_nodes={max_nodes}: "
                                   "not simplified")
    try:
        with _time_budget(timeout):
            return _compare(model, truth)
    except _OutOfTime:
        return SymbolicCheck(None, f"sympy needed more than {timeout:g} s")
    except Exception as err:  # noqa: BLE001 - sympy raises many kinds; SRBench records them too
        return SymbolicCheck(None, f"sympy failed: {type(err).__name__}: {err}")


def _compare(model: sympy.Expr, truth: sympy.Expr) -> SymbolicCheck:
    simplified = _round_floats(sympy.simplify(model, ratio=1))
    text = str(simplified)
    if text in ("0", "nan") or simplified.has(sympy.nan, sympy.zoo):
        return SymbolicCheck(False, f"the model simplifies to {text}", text)
    difference = _round_floats(truth - simplified)
    ratio = _round_floats(simplified / truth)
    if not _is_constant(difference):
        difference = sympy.simplify(difference, ratio=1)
    found = {"simplified": text, "difference": str(difference), "ratio": str(ratio)}
    if difference == 0:
        return SymbolicCheck(True, "difference is 0", **found)
    if _is_constant(difference):
        return SymbolicCheck(True, "difference is constant", **found)
    if _is_constant(ratio):
        return SymbolicCheck(True, "ratio is constant", **found)
    return SymbolicCheck(False, "neither difference nor ratio is constant", **found)


def is_symbolic_solution(model, truth, **options) -> bool | None:
    """``check_symbolic_solution(...).solution``: True, False or None (undecided)."""
    return check_symbolic_solution(model, truth, **options).solution


__all__ = [
    "SymbolicCheck",
    "acc_tau",
    "accuracy_tau",
    "check_symbolic_solution",
    "complexity",
    "is_symbolic_solution",
    "parse_formula",
    "r2_score",
    "r2_zero",
]
