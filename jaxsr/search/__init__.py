"""Evolutionary search on the batched evaluator, seeded and fed by the model.

``evolve(problems, seeds, settings, proposer)`` runs it; ``jaxsr.regressor`` uses it for
``SymbolicTransformerRegressor(search="evolve")``. Layout: ``population`` (formulas as
arrays, their additive terms), ``variation`` (mutations and crossover on the arrays),
``fitness`` (batched scoring, least squares over each formula's terms), ``selection``
(duplicates, Pareto fronts, tournaments), ``engine`` (the loop, refinement, model
proposals, stopping).
"""

from jaxsr.search.engine import (
    DEFAULT_OPERATORS,
    ORIGINS,
    Candidate,
    Proposer,
    SearchResult,
    SearchSettings,
    evolve,
)
from jaxsr.search.variation import Rates

__all__ = ["DEFAULT_OPERATORS", "ORIGINS", "Candidate", "Proposer", "Rates", "SearchResult",
           "SearchSettings", "evolve"]
