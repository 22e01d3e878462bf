"""jaxsr as an SRBench method (cavalab/srbench; the interface of peers.md section 4).

To run jaxsr inside SRBench, copy this folder to ``srbench/algorithms/jaxsr_e2e/`` (or
``experiment/methods/jaxsr_e2e/`` in older checkouts) and install jaxsr into the method's
environment (``pip install jaxsr-e2e``). SRBench imports this module and uses:

- ``est``: the sklearn estimator it fits (a fresh clone per dataset);
- ``model(est, X=None)``: the fitted formula as a sympy-parsable string, written with the
  column names of ``X`` when it is a DataFrame;
- ``complexity(est)``: the number of nodes of that formula;
- ``get_population(est)``: up to 100 candidates, each with ``predict`` and usable by ``model``
  and ``complexity``;
- ``get_best_solution(est)``: the selected formula's estimator;
- ``hyper_params``: nothing to tune (as SRBench's E2E entry);
- ``eval_kwargs``: smaller settings for SRBench's test mode; X and y left unscaled, so that the
  formula is in the data's own units and SRBench's symbolic check can compare it with the truth.
"""

from __future__ import annotations

import sympy

from jaxsr import SymbolicTransformerRegressor

# The paper's SRBench settings (docs/anchors.md 1.4): 10 candidates per bag, sampling, in bags of as
# many points as the model was trained on (200 for the paper's model, 100 for jaxsr's shipped
# default); jaxsr refines every unique candidate (the reference refined the best 10 to 100).
est = SymbolicTransformerRegressor(
    model="default",
    max_input_points=None,
    max_number_bags=100,
    n_candidates=10,
    decoding="sampling",
    refine=True,
    random_state=0,
)

hyper_params = [{}]

eval_kwargs = {
    "test_params": {"max_number_bags": 1, "n_candidates": 4, "max_time": 60},
    "scale_x": False,
    "scale_y": False,
}

POPULATION_SIZE = 100  # SRBench's limit on get_population


class Candidate:
    """One row of a fitted regressor's ``equations_``, usable where SRBench expects a fitted
    estimator: ``predict``, ``sympy`` and ``complexity``."""

    def __init__(self, regressor, index):
        self.regressor = regressor
        self.index = index

    def predict(self, X):
        return self.regressor.predict(X, index=self.index)

    def sympy(self):
        return self.regressor.sympy(index=self.index)

    @property
    def complexity(self) -> int:
        return self.regressor.expressions_[self.index].complexity()


def model(est, X=None) -> str:
    """The formula as a sympy-parsable string; variables named x_0, x_1, ... are renamed to
    the columns of X when X is a DataFrame."""
    expr = est.sympy()
    columns = list(getattr(X, "columns", []))
    if columns:
        by_name = {f"x_{k}": str(name) for k, name in enumerate(columns)}
        expr = expr.xreplace({s: sympy.Symbol(by_name[s.name]) for s in expr.free_symbols
                              if s.name in by_name})
    return str(expr)


def complexity(est) -> int:
    if isinstance(est, Candidate):
        return est.complexity
    return est.expressions_[est.best_index_].complexity()


def get_population(est) -> list[Candidate]:
    """The candidates, best first (the order of ``equations_``), at most 100."""
    return [Candidate(est, index) for index in range(len(est.expressions_))[:POPULATION_SIZE]]


def get_best_solution(est):
    return est
