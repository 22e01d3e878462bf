"""``SymbolicTransformerRegressor``: the sklearn estimator around the pipeline."""

from __future__ import annotations

import numbers
import sys
import warnings

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from jaxsr import decode
from jaxsr.checks import check_int
from jaxsr.expr.tokens import DEFAULT_MAX_LEN
from jaxsr.regressor import evolution, inputs, models, pipeline
from jaxsr.regressor.export import jax_function


SEARCHES = ("evolve", "sample")


class SymbolicTransformerRegressor(RegressorMixin, BaseEstimator):
    """Fits a formula to data with a pretrained transformer and a search it guides.

    The model reads bags of points and samples candidate formulas; every unique candidate
    gets its constants refined by batched L-BFGS. With ``search="sample"`` (the paper's
    protocol) the candidates are ranked by R2 (ties: lower complexity). With
    ``search="evolve"`` (the default) they seed an evolutionary search
    (``jaxsr.search``) in which the model also proposes formulas for the residuals of the
    best ones; the answer is the simplest formula of the final Pareto front whose error on
    held-out training rows is within tolerance of the best, preferring formulas that do not
    blow up between the training rows. See ``docs/regressor.md``.

    Parameters:
      model: "default" (the trained model that ships with the package; an installation
        that lacks it falls back to the untrained ``tiny`` config, with a warning), a config name ("tiny", "small", "paper": random weights),
        or the path of a weights directory. Weights load once per process; the estimator
        keeps only this string.
      max_input_points: points per bag; None (the default) for the size the weights record:
        the most the model was trained on, or a size measured to work better (50 for the
        shipped default model, trained on 5-100), 200 for the reference's. More points than
        the model was trained on put it out of its training distribution.
      max_number_bags: bags per problem at most; None for all.
      n_candidates: formulas sampled per bag (the beam size for "beam"; 1 for "greedy").
      decoding: "sampling", "beam" or "greedy".
      temperature: sampling temperature; None for the model's default (0.1 for the reference).
      max_len: longest formula, in tokens (the reference's 200).
      refine: refine the constants of every unique candidate.
      max_iter: L-BFGS iterations at most.
      max_time: seconds for the whole fit; checked between decoding calls, refinement
        rounds and search generations, the best formulas found so far are returned
        (``stopped_early_``). None: no limit (the search then runs ``generations``).
      search: "evolve" (seeded evolutionary search) or "sample" (the paper's protocol).
      population_size: formulas per problem in the search.
      generations: search generations at most; None: until max_time (40 without one).
      seeds: "model" (the search starts from the model's samples), "model-deferred" (they
        join each problem still unsolved after the search's first 5 generations, so that
        what random trees solve at once never waits for decoding) or "random" (random
        trees only, no model: for ablations).
      model_proposals: the model proposes formulas during the search.
      random_state: int, RandomState or None; fixes bags, subsamples and sampling.
      verbose: 0 silent; 1 a progress bar and a summary with per-stage timings.

    Attributes (after ``fit``):
      equations_: DataFrame, one row per candidate: formula (exact, full precision, in the
        column names), sympy, complexity, r2, mse, refined, source, selected, model. With
        "sample": every unique candidate, best first, source "model" or a flagged
        fallback. With "evolve": the final Pareto front, simplest first, with r2_validation,
        calm (False where the formula blows up between the training rows, which the
        choice avoids) and source "model sample", "model proposal", "evolved", "random
        tree" or "baseline".
      expressions_: the candidates as ``jaxsr.Expr`` trees (x_k = column k of X), same order.
      best_: the selected formula (exact infix string); best_index_: its row.
      variable_names_: the name of each column in formulas; feature_names_in_,
        n_features_in_: as sklearn; selected_features_: columns the model saw.
      fallback_: None, or why the answer is a fallback (no usable formula, constant y).
      model_label_: which model produced the result, "untrained" where it is.
      timings_: seconds per stage (tokenise, decode, parse, score, refine, select, total).
      fit_info_: counts (bags, sampled, valid, unique), dropped sequences by reason, ...
      stopped_early_: max_time cut the fit short.
      n_iter_: the most L-BFGS iterations any candidate ran (0 when none was refined).
    """

    def __init__(self, model="default", *, max_input_points=None, max_number_bags=10,
                 n_candidates=100, decoding="sampling", temperature=None,
                 max_len=DEFAULT_MAX_LEN, refine=True, max_iter=50, max_time=None, search="evolve",
                 population_size=1024, generations=None, seeds="model", model_proposals=True,
                 random_state=None, verbose=0):
        self.model = model
        self.max_input_points = max_input_points
        self.max_number_bags = max_number_bags
        self.n_candidates = n_candidates
        self.decoding = decoding
        self.temperature = temperature
        self.max_len = max_len
        self.refine = refine
        self.max_iter = max_iter
        self.max_time = max_time
        self.search = search
        self.population_size = population_size
        self.generations = generations
        self.seeds = seeds
        self.model_proposals = model_proposals
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ fitting

    def fit(self, X, y, sample_weight=None):
        """Fits X (n, D) array or DataFrame, y (n,); returns self."""
        self._fit_all([(self, X, y, sample_weight)])
        return self

    def fit_many(self, datasets) -> list:
        """Fits many problems in one batched pass: all their bags decode together, all their
        candidates are scored in one call and refined in one call.

        ``datasets``: (X, y) or (X, y, sample_weight) tuples. Returns one fitted clone of
        this estimator per problem, each as after ``fit``; ``self`` is unchanged. Their
        ``timings_`` are those of the whole pass.
        """
        jobs = []
        for i, data in enumerate(datasets):
            if not isinstance(data, (tuple, list)) or len(data) not in (2, 3):
                raise ValueError(f"dataset {i}: expected (X, y) or (X, y, sample_weight)")
            jobs.append((clone(self), *data, *([None] * (3 - len(data)))))
        if not jobs:
            raise ValueError("fit_many needs at least one (X, y) dataset")
        self._fit_all(jobs)
        return [job[0] for job in jobs]

    def _fit_all(self, jobs) -> None:
        loaded = models.resolve(self.model)
        random = check_random_state(self.random_state)
        seeds = random.randint(np.iinfo(np.int32).max, size=len(jobs) + 1)
        settings = self._settings(loaded, int(seeds[-1]))
        problems = []
        for i, (estimator, X, y, weight) in enumerate(jobs):
            try:
                problems.append(estimator._prepare(X, y, weight, loaded.max_features,
                                                   int(seeds[i])))
            except ValueError as err:
                if len(jobs) == 1:
                    raise
                raise ValueError(f"dataset {i}: {err}") from None
        clock = pipeline.Clock(settings.max_time, self.verbose)
        run = evolution.run if settings.search == "evolve" else pipeline.run
        outcomes = run(problems, loaded, settings, clock)
        timings = clock.close()
        for (estimator, *_), problem, outcome in zip(jobs, problems, outcomes):
            estimator._store(outcome, problem, loaded, timings, clock.stopped_early)
            if self.verbose:
                estimator._print_summary()

    def _settings(self, loaded: models.LoadedModel, seed: int) -> pipeline.PipelineSettings:
        """The parameters, checked (here rather than in __init__, as sklearn asks)."""
        max_points = self.max_input_points
        if max_points is None:
            max_points = loaded.max_input_points
        check_int("max_input_points", max_points, 1)
        if self.max_number_bags is not None:
            check_int("max_number_bags", self.max_number_bags, 1)
        check_int("n_candidates", self.n_candidates, 1)
        check_int("max_len", self.max_len, 1, loaded.model.config.max_positions)
        check_int("max_iter", self.max_iter, 0)
        check_int("verbose", self.verbose, 0)
        _check_choice("decoding", self.decoding, decode.STRATEGIES)
        temperature = self.temperature
        if temperature is None:
            temperature = float(loaded.decoding.get("beam_temperature", 0.1))
        _check_positive("temperature", temperature)
        if self.max_time is not None:
            _check_positive("max_time", self.max_time, allow_zero=True)
        if not isinstance(self.refine, (bool, np.bool_)):
            raise TypeError(f"refine must be True or False, got {self.refine!r}")
        _check_choice("search", self.search, SEARCHES)
        _check_choice("seeds", self.seeds, evolution.SEEDS)
        check_int("population_size", self.population_size, 2)
        if self.generations is not None:
            check_int("generations", self.generations, 0)
        if not isinstance(self.model_proposals, (bool, np.bool_)):
            raise TypeError(f"model_proposals must be True or False, "
                            f"got {self.model_proposals!r}")
        return pipeline.PipelineSettings(
            max_input_points=max_points, max_number_bags=self.max_number_bags,
            n_candidates=self.n_candidates, decoding=self.decoding,
            temperature=float(temperature), max_len=self.max_len, refine=bool(self.refine),
            max_iter=self.max_iter, max_time=self.max_time, seed=seed, search=self.search,
            population_size=self.population_size, generations=self.generations,
            seeds=self.seeds, model_proposals=bool(self.model_proposals), verbose=self.verbose)

    def _prepare(self, X, y, sample_weight, max_features: int, seed: int) -> inputs.FitProblem:
        """Validates one problem (setting n_features_in_, feature_names_in_) and prepares it."""
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target "
                             "y is None")
        inputs.check_columns_numeric(X)
        inputs.check_lengths(X, y, sample_weight)
        inputs.check_finite(inputs.as_floats(y), "y")  # before sklearn's, to say where
        X, y = validate_data(self, X, y, dtype=np.float64, ensure_all_finite=False,
                             ensure_min_samples=2, y_numeric=True)
        columns = getattr(self, "feature_names_in_", None)
        labels = list(columns) if columns is not None else None
        names, renamed = inputs.formula_names(labels, X.shape[1])
        inputs.check_finite(X, "X", labels)
        inputs.check_target_range(y)
        weight = _sample_weight(sample_weight, len(y))
        inputs.check_weights(weight)
        if renamed:
            warnings.warn(f"column names changed for use in formulas: {renamed}", UserWarning,
                          stacklevel=4)
        return inputs.prepare(X, y, weight, names, max_features, seed)

    def _store(self, outcome: pipeline.FitOutcome, problem: inputs.FitProblem,
               loaded: models.LoadedModel, timings: dict, stopped_early: bool) -> None:
        self.variable_names_ = list(problem.names)
        self.selected_features_ = problem.selected
        self.expressions_ = outcome.exprs
        self.best_index_ = outcome.selected
        self.best_ = outcome.exprs[outcome.selected].infix(self.variable_names_)
        self.fallback_ = outcome.fallback
        self.model_label_ = loaded.label
        self.timings_ = dict(timings)
        self.stopped_early_ = bool(stopped_early)
        self.n_iter_ = outcome.counts["iterations"]
        self.fit_info_ = {
            "model": loaded.label, "untrained": loaded.untrained, "rows": len(problem.y),
            "fit_rows": len(problem.fit_rows), **outcome.counts,
            "refined": int(outcome.refined.sum()), "dropped": outcome.dropped,
            "dropped_features": [problem.names[i] for i in range(len(problem.names))
                                 if i not in set(problem.selected)],
        }
        self._table = {"complexity": outcome.complexity, "r2": outcome.r2, "mse": outcome.mse,
                       "refined": outcome.refined, "source": outcome.source}
        for column in ("r2_validation", "calm"):
            if getattr(outcome, column) is not None:
                self._table[column] = getattr(outcome, column)
        self._equations = None

    # ------------------------------------------------------------------ results

    @property
    def equations_(self):
        """Every unique candidate, best first (built on first access: sympy takes a few ms
        per row)."""
        check_is_fitted(self, "expressions_")
        if getattr(self, "_equations", None) is None:
            import pandas as pd

            names = self.variable_names_
            table = pd.DataFrame({
                "formula": [e.infix(names) for e in self.expressions_],
                "sympy": [e.to_sympy(names) for e in self.expressions_],
                **self._table,
                "selected": np.arange(len(self.expressions_)) == self.best_index_,
                "model": self.model_label_,
            })
            table.attrs["model"] = self.model_label_
            self._equations = table
        return self._equations

    def predict(self, X, index=None) -> np.ndarray:
        """Values of the selected formula (or of row ``index`` of ``equations_``) on X; NaN
        where the formula is undefined (outside an operator's domain)."""
        check_is_fitted(self, "expressions_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return self.expressions_[self._row(index)].evaluate(X)

    def sympy(self, index=None):
        """The formula as a sympy expression, in the variable names."""
        check_is_fitted(self, "expressions_")
        return self.expressions_[self._row(index)].to_sympy(self.variable_names_)

    def latex(self, index=None, precision: int = 4) -> str:
        """The formula in LaTeX, constants to ``precision`` digits, variables as sympy
        writes them (``x_0`` -> ``x_{0}``, ``lambda_`` -> ``\\lambda_{}``)."""
        import sympy

        check_is_fitted(self, "expressions_")
        names = [sympy.latex(sympy.Symbol(name)) for name in self.variable_names_]
        return self.expressions_[self._row(index)].latex(names, precision)

    def jax(self, index=None):
        """``(f, params)``: ``f(params, X)`` (X with all n_features_in_ columns) gives the
        formula's values; jittable and differentiable in params and X. ``params`` are its
        constants (float64 only with jax x64 enabled)."""
        check_is_fitted(self, "expressions_")
        return jax_function(self.expressions_[self._row(index)])

    def _row(self, index) -> int:
        if index is None:
            return self.best_index_
        n = len(self.expressions_)
        if not isinstance(index, numbers.Integral) or not -n <= index < n:
            raise IndexError(f"index must be an int in [{-n}, {n}) (a row of equations_), "
                             f"got {index!r}")
        return int(index) % n

    def _rows(self, top: int | None = None, precision: int | None = None) -> list[dict]:
        """The best ``top`` rows as plain dicts (JSON-ready: None for inf/NaN), without the
        sympy column, for reports."""
        number = lambda v: float(v) if np.isfinite(v) else None
        return [{"rank": k, "formula": self.expressions_[k].infix(self.variable_names_, precision),
                 "r2": number(self._table["r2"][k]), "mse": number(self._table["mse"][k]),
                 "complexity": int(self._table["complexity"][k]),
                 "refined": bool(self._table["refined"][k]), "source": self._table["source"][k]}
                for k in range(len(self.expressions_))[:top]]

    def _print_summary(self, file=None) -> None:
        file = file or sys.stdout
        info = self.fit_info_
        dropped = ", ".join(f"{n} {why}" for why, n in sorted(info["dropped"].items(),
                                                             key=lambda kv: -kv[1]))
        timings = ", ".join(f"{k} {v:.2f}" for k, v in self.timings_.items())
        print(f"jaxsr: model {self.model_label_}", file=file)
        print(f"  {info['bags']} bag(s), {info['sampled']} sampled, {info['valid']} valid, "
              f"{info['unique']} unique, {info['refined']} refined"
              + (f"; dropped: {dropped}" if dropped else ""), file=file)
        print(f"  seconds: {timings}" + (" (stopped early: max_time)" if self.stopped_early_
                                         else ""), file=file)
        best = self._rows(precision=6)[self.best_index_]
        print(f"  best: {best['formula']}  (R2 {best['r2']}, complexity {best['complexity']}, "
              f"{best['source']})", file=file)
        if self.fallback_:
            print(f"  fallback: {self.fallback_}", file=file)

    # ------------------------------------------------------------------ sklearn plumbing

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_equations", None)  # rebuilt on access
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        # Random weights give random formulas: scores are whatever the fallback reaches.
        tags.regressor_tags.poor_score = models.is_untrained(self.model)
        return tags


def _check_choice(name, value, choices) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def _check_positive(name, value, allow_zero=False) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} "
                         f"number, got {value!r}")


def _sample_weight(sample_weight, n: int) -> np.ndarray:
    if sample_weight is None:
        return np.ones(n)
    weight = np.asarray(sample_weight, dtype=np.float64)
    if weight.ndim == 0:
        return np.full(n, float(weight))
    if weight.shape != (n,):
        raise ValueError(f"sample_weight must have shape ({n},), got {weight.shape}")
    return weight
