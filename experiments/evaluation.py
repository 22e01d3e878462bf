"""In-domain evaluation machinery shared by ``in_domain.py`` and ``ablations.py``.

The validation set is drawn from jaxsr's generator (docs/reference.md 6.2): evaluation samples with
200 fit points and, for every extrapolation scale sigma, 200 test points from the same
multimodal input distribution (sigma = 1 is the in-domain test set). As in the reference, an
expression enters the set only if it is defined on all of them. A problem shown with N < 200
points keeps a random subset of N of its 200 fit points, so the function and its test points are
the same at every N and only the amount of data changes.

A ``Task`` is one fit and the test sets to score it on. ``run_tasks`` fits all tasks in batched
``fit_many`` calls without refinement (one decoding pass) and scores three variants of that
search, the paper's Table 2 rows:

- "no refinement": the regressor's answer with ``refine=False`` (best training R2, ties:
  lower complexity);
- "refinement (model constants)": every candidate refined by L-BFGS from the model's
  constants, as the regressor's ``refine=True`` does (same ``refine_constants`` call: its
  solver, float64, ``max_iter``, on the fit points in the user's units), then ranked the same
  way;
- "refinement (random constants)": the same, from N(0, 1) constants (``init="random"``).

Each refinement is one batched call over all candidates of all tasks of a batch. A task whose
fit fell back to a linear fit or the mean (an untrained model decodes nothing usable) keeps that
fallback in every variant.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import numpy as np
import pandas as pd

from experiments.common import FitSettings, failures_as_zero, make_regressor
from jaxsr.data import Generator, GeneratorConfig, Sample
from jaxsr.expr import Expr
from jaxsr.expr.tokens import MAX_INPUT_DIMENSION
from jaxsr.metrics import acc_tau, r2_zero
from jaxsr.refine import refine_constants
from jaxsr.regressor.pipeline import REFINE_SOLVER
from jaxsr.shapes import next_power_of_two

NO_REFINEMENT = "no refinement"
MODEL_INIT = "refinement (model constants)"
RANDOM_INIT = "refinement (random constants)"
VARIANTS = (NO_REFINEMENT, MODEL_INIT, RANDOM_INIT)
TAUS = (0.1, 0.01, 0.001)
METRICS = ("r2_zero", *(f"acc_{tau:g}" for tau in TAUS))
N_TEST_POINTS = 200


# ---------------------------------------------------------------------------- the validation set


def validation_samples(seed: int, n_problems: int, *,
                       sigmas=(1.0, 2.0, 4.0, 8.0, 16.0, 32.0),
                       generator_overrides: dict | None = None) -> Iterator[Sample]:
    """The first ``n_problems`` evaluation samples of the generator seeded ``seed`` (reference
    defaults unless ``generator_overrides`` narrows them; 200 fit points; 200 test points per
    sigma), one at a time (10,000 samples with all their test sets take over a gigabyte)."""
    config = GeneratorConfig(**{**(generator_overrides or {}), "seed": seed, "max_points": 200,
                                "n_prediction_points": N_TEST_POINTS,
                                "prediction_sigmas": tuple(sigmas)})
    generator = Generator(config)
    return (generator.sample(i, evaluation=True) for i in range(n_problems))


def fit_subset(sample: Sample, n_points: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n_points`` of the sample's fit points, chosen at random (seeded by sample and N)."""
    if n_points > len(sample.y):
        raise ValueError(f"sample {sample.index} has {len(sample.y)} fit points, not {n_points}")
    rng = np.random.default_rng([seed, sample.index, n_points])
    keep = np.sort(rng.choice(len(sample.y), size=n_points, replace=False))
    return sample.x[keep], sample.y[keep]


def sample_labels(sample: Sample) -> dict:
    """Columns that describe a validation problem in result tables."""
    info = sample.info
    return {"problem": sample.index, "dimension": info.dimension, "unary_ops": info.n_unary_ops,
            "binary_ops": info.n_skeleton_binary_ops, "truth": sample.tree.infix(precision=4)}


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
    """One fit (x, y) and the test sets {name: (x, y)} to score it on; ``labels`` go into
    every result row of the task."""

    x: np.ndarray
    y: np.ndarray
    tests: dict
    labels: dict


# ---------------------------------------------------------------------------- refinement


@dataclasses.dataclass(frozen=True)
class Choice:
    """The formula a variant picked for one task, and the seconds that variant cost it."""

    tree: Expr
    seconds: float


def model_candidates(est) -> list[Expr]:
    """The fitted regressor's candidates from the model (none when it fell back to a linear fit
    or the mean, ``fallback_``), as trees over the task's columns in its units."""
    return [] if est.fallback_ is not None else list(est.expressions_)


def refine_candidates(fitted: list, tasks: list[Task], *, init: str, seed: int,
                      max_iter: int) -> list[Choice]:
    """Every task's model candidates refined (from their own constants, ``init="model"``, or
    from N(0, 1) draws, ``init="random"``) in one batched call over all tasks, with the
    regressor's solver; then per task the best (training R2 to 10 decimals, ties: lower
    complexity), as the regressor ranks. A task without model candidates keeps the regressor's
    answer."""
    trees, owner = [], []
    for t, est in enumerate(fitted):
        for tree in model_candidates(est):
            trees.append(tree)
            owner.append(t)
    began = time.perf_counter()
    refined = []
    if trees:
        # Data padded as the regressor pads it (a power of two of rows, the model's width);
        # refine_constants rounds the candidate batch itself, so compiled code is reused.
        X, y, weight = _stack_datasets([(task.x, task.y) for task in tasks])
        result = refine_constants(trees, X, y, sample_weight=weight,
                                  dataset_index=np.asarray(owner), init=init, seed=seed,
                                  max_iter=max_iter, solver=REFINE_SOLVER, dtype="float64")
        refined = result.exprs
        r2 = np.where(np.isfinite(result.r2), result.r2, -np.inf)
    seconds = (time.perf_counter() - began) / len(tasks)
    choices = []
    for t, est in enumerate(fitted):
        mine = [i for i, o in enumerate(owner) if o == t]
        if not mine:
            choices.append(Choice(est.expressions_[est.best_index_], seconds))
            continue
        best = min(mine, key=lambda i: (-round(r2[i], 10), refined[i].complexity()))
        choices.append(Choice(refined[best], seconds))
    return choices


def _stack_datasets(datasets):
    """Pads datasets to one (P, N, D) array: extra rows get weight 0, extra columns zeros
    (no candidate of a dataset uses a column it does not have)."""
    n = next_power_of_two(max(len(y) for _, y in datasets), 16)
    d = max(MAX_INPUT_DIMENSION, *(x.shape[1] for x, _ in datasets))
    X = np.zeros((len(datasets), n, d))
    Y = np.zeros((len(datasets), n))
    W = np.zeros((len(datasets), n))
    for i, (x, y) in enumerate(datasets):
        X[i, : len(y), : x.shape[1]] = x
        Y[i, : len(y)] = y
        W[i, : len(y)] = 1.0
    return X, Y, W


# ---------------------------------------------------------------------------- scoring


def score(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """The paper's Table 2 metrics of one prediction."""
    y_pred = np.asarray(y_pred, np.float64).ravel()
    return {"r2_zero": r2_zero(y_true, y_pred),
            **{f"acc_{tau:g}": acc_tau(y_true, y_pred, tau) for tau in TAUS}}


def run_tasks(tasks: list[Task], model: str, settings: FitSettings, *, seed: int,
              variants=VARIANTS, batch_size: int = 256, log=print) -> pd.DataFrame:
    """Fits every task and scores each variant on each test set: one row per (task, variant,
    test set) with the task's labels, the metrics, the formula and the seconds per task (the
    batched fit's wall time divided by its tasks, plus the variant's refinement)."""
    rows = []
    for start in range(0, len(tasks), batch_size):
        batch = tasks[start:start + batch_size]
        rows += _run_batch(batch, model, settings, seed=seed + start, variants=variants)
        log(f"  {min(start + batch_size, len(tasks))}/{len(tasks)} fits done")
    return pd.DataFrame(rows)


def _run_batch(tasks, model, settings, *, seed, variants) -> list[dict]:
    # One decoding pass without refinement; both refinements start from its candidates, so
    # the variants differ only in what the paper compares.
    regressor = make_regressor(model, settings, refine=False, seed=seed)
    began = time.perf_counter()
    fitted = list(regressor.fit_many([(task.x, task.y) for task in tasks]))
    fit_seconds = (time.perf_counter() - began) / len(tasks)
    chosen = {}
    if NO_REFINEMENT in variants:
        chosen[NO_REFINEMENT] = [Choice(est.expressions_[est.best_index_], 0.0) for est in fitted]
    for variant, init in ((MODEL_INIT, "model"), (RANDOM_INIT, "random")):
        if variant in variants:
            chosen[variant] = refine_candidates(fitted, tasks, init=init, seed=seed,
                                                max_iter=settings.max_iter)
    rows = []
    for t, task in enumerate(tasks):
        for variant, choices in chosen.items():
            tree = choices[t].tree
            for test_name, (x_test, y_test) in task.tests.items():
                rows.append({**task.labels, "variant": variant, "test": test_name,
                             **score(y_test, tree.evaluate(x_test)),
                             "complexity": tree.complexity(), "formula": tree.infix(precision=4),
                             "seconds": fit_seconds + choices[t].seconds,
                             "model_label": fitted[t].model_label_})
    return rows


def summarise(results: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean of each metric over problems, grouped by ``by``; a NaN (no finite prediction)
    counts as 0, so failures lower the averages rather than vanish from them."""
    scored = results.assign(**{m: failures_as_zero(results[m]) for m in METRICS})
    table = scored.groupby(by, sort=False)[list(METRICS)].mean().reset_index()
    table["fits"] = scored.groupby(by, sort=False).size().to_numpy()
    return table
