"""The sklearn regressor: fit a formula to data.

>>> from jaxsr import SymbolicTransformerRegressor
>>> est = SymbolicTransformerRegressor(random_state=0).fit(df[["x", "y"]], df["z"])
>>> est.best_, est.equations_, est.predict(X), est.sympy(), est.jax()

Modules: ``estimator`` (the sklearn class), ``inputs`` (validation, names, feature selection,
standardisation), ``pipeline`` (the stages of one batched fit), ``models`` (model resolution
and caching), ``export`` (formulas as JAX functions), ``command`` (``jaxsr fit``; importing it
loads no JAX, so the command line starts fast).
"""

import importlib


def __getattr__(name):
    if name == "SymbolicTransformerRegressor":
        return importlib.import_module("jaxsr.regressor.estimator").SymbolicTransformerRegressor
    raise AttributeError(f"module 'jaxsr.regressor' has no attribute {name!r}")


__all__ = ["SymbolicTransformerRegressor"]
