"""jaxsr and peer symbolic-regression methods on SRBench's ground-truth problems, at equal budget.

Every method fits every selected problem (the 119 Feynman and 14 Strogatz problems of
``problems.py``, with SRBench's 75/25 split, seeds and noise protocol) under the same wall-clock
budget per problem and the same number of threads. Methods (one adapter each, in ``METHODS``):

- ``jaxsr-sample``: ``SymbolicTransformerRegressor(model=MODEL, search="sample",
  max_time=BUDGET, random_state=seed)``, the paper's protocol (``search`` is passed only where
  the regressor has that keyword; sampling is then its only search);
- ``jaxsr-evolve``: the same with ``search="evolve"`` (transformer-seeded evolutionary search);
  skipped with a note while the regressor has no ``search`` keyword;
- ``pyoperon``: ``pyoperon.sklearn.SymbolicRegressor``, single objective R2, SRBench's largest
  symbol set, population 1000, length 50; generations and evaluations set out of reach so that
  the time limit ends the run;
- ``gplearn``: ``gplearn.genetic.SymbolicRegressor`` with SRBench's settings (population 1000,
  tournaments of 20, mean absolute error, parsimony 0.001, its function set).

A peer that is not installed (``pip install jaxsr-e2e[peers]``) is skipped with a one-line note,
printed and written into ``summary.md`` and ``provenance.json``. ``--ablation`` runs the jaxsr
evolutionary search's switches instead (``ABLATION``): ``evolve`` (model seeds and model
proposals, the regressor's defaults), ``evolve-seeds-deferred`` (``seeds="model-deferred"``:
seeds only for problems unsolved after the first generations),
``evolve-random-seeds`` (``seeds="random"``: no model at all), ``evolve-no-proposals``
(``model_proposals=False``); a variant whose keyword the regressor lacks is skipped likewise.

Threads (``--threads T``, default 1). XLA's CPU thread pool cannot be resized once jax has
started, so the whole process is held to T cores: run as a script, the CPU affinity is set (and
OMP_NUM_THREADS and the like) before numpy or jax is imported, then again in ``main`` for every
thread that exists (``threads.py``). Every method is therefore limited to T cores; in addition
pyoperon gets ``n_threads=T`` and gplearn ``n_jobs=T`` (its worker processes inherit the cores).

Budget (``--budget S`` seconds per problem, default 5). jaxsr: ``max_time=S``, checked between
decoding calls and refinement rounds, so a fit overruns by up to one decoding call (a few
seconds on a 2-core CPU), and when the budget is spent before refinement the candidates are
returned unrefined; each jaxsr method fits its first problem once untimed before timing
(compilation), and problems of other shapes may still compile a little inside the budget.
pyoperon: ``max_time`` (``time_limit`` before 0.5) of whole seconds, S rounded down. gplearn
has no time limit: it evolves one generation, then chunks of generations sized to half the
remaining budget at the last measured speed (``warm_start``), and stops when the next
generation would not fit; on several threads it too gets an untimed first fit (its worker
processes start then). The seconds actually spent in ``fit`` are recorded for every problem,
and the summary shows the largest.

Scores: test R2 of the method's own predictions; solved at R2 > 0.99 and > 0.999; symbolic
solution (``jaxsr.metrics.check_symbolic_solution`` on the formula, as ``srbench.py``);
complexity (``jaxsr.metrics.complexity``, nodes of the returned sympy form). Every formula is
over x_0, x_1, ... (column k of X is x_k), as the true formulas are.

    python experiments/peers.py --out results/peers --quick
    python experiments/peers.py --out results/peers --budget 30 --threads 1
    python experiments/peers.py --out results/peers/3 --budget 30 --shard 3/64
    python experiments/peers.py --out results/peers-all --merge results/peers/*
    python experiments/peers.py --out results/ablation --ablation --budget 30

``--generated N`` adds N functions of jaxsr's own generator (``problems.GeneratedSet``,
family "generated", ranges narrowed with ``--generator FIELD=VALUE``); with the default model's
training ranges they show whether its seeds help the search where it was trained:

    python experiments/peers.py --out results/in_domain --ablation --generated 50 \
        --problems 'generated_*' --generator max_input_dimension=3 max_unary_ops=2 \
        max_binary_ops_offset=3 --methods evolve evolve-random-seeds

``--shard I/N`` runs every N-th job (from the I-th) of the sorted list of (method, problem,
noise, seed) jobs; ``--merge DIR ...`` combines such folders (duplicate jobs counted once).
Writes ``peers_results.csv`` (one row per method, problem, seed and noise level),
``summary.csv``/``.md`` (per method: overall, by family, by number of variables),
``accuracy_vs_time.png`` and ``provenance.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `experiments` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments import threads  # standard library only

if __name__ == "__main__":  # before numpy or jax starts a thread pool: hold it to --threads cores
    threads.pin_from_argv(sys.argv[1:])

import dataclasses  # noqa: E402
import importlib  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import numbers  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from importlib import metadata  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import sympy  # noqa: E402

from experiments import common  # noqa: E402
from experiments.problems import (  # noqa: E402
    PMLB_ROWS,
    TRAIN_CAP,
    GeneratedSet,
    GroundTruthProblem,
    all_problem_names,
    load_problems,
    select_names,
)
from jaxsr.data import GeneratorConfig  # noqa: E402
from jaxsr.metrics import check_symbolic_solution, complexity, parse_formula, r2_score  # noqa: E402

QUICK_PROBLEMS = ("feynman_I_12_1", "strogatz_lv1")
WARM_UP = ("one untimed fit per process before timing for every jaxsr method (compilation) and "
           "for gplearn on several threads (worker processes)")
RESULTS = "peers_results.csv"
FIGURE = "accuracy_vs_time.png"
# One row per job; a merge counts each job once.
JOB_KEY = ["method", "problem", "noise", "seed"]
RESULT_COLUMNS = ["method", "problem", "family", "n_variables", "noise", "seed", "r2_test",
                  "solved_0.99", "solved_0.999", "symbolic_solution", "symbolic_reason",
                  "complexity", "seconds", "formula", "truth", "budget", "threads", "error"]
# Number-of-variables groups of the summary: (lowest, highest, label).
VARIABLE_BINS = ((1, 1, "1"), (2, 2, "2"), (3, 3, "3"), (4, 5, "4-5"), (6, math.inf, "6+"))


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """What every method gets: the budget and threads, the data protocol, jaxsr's model."""

    budget: float = 5.0               # wall-clock seconds per problem and method
    threads: int = 1
    model: str = "default"            # jaxsr's weights
    jaxsr_overrides: dict = dataclasses.field(default_factory=dict)  # --fit FIELD=VALUE
    n_rows: int = PMLB_ROWS           # Feynman rows generated per problem
    train_cap: int = TRAIN_CAP
    symbolic_timeout: float = 10.0    # seconds of sympy per formula at most (not in the budget)
    generated: GeneratedSet = GeneratedSet()  # --generated, --generator

    @classmethod
    def quick(cls, **changes) -> RunSettings:
        return cls(**{"budget": 2.0, "n_rows": 400, "train_cap": 300, "symbolic_timeout": 5.0,
                      **changes})


# ---------------------------------------------------------------------------- methods


@dataclasses.dataclass(frozen=True)
class Fitted:
    """A fitted method: its predictions, and its formula in sympy over x_0, x_1, ..."""

    predict: Callable[[np.ndarray], np.ndarray]
    formula: sympy.Expr


class Method:
    """One adapter: ``unavailable()`` says why the method cannot run here (None: it can);
    ``fit`` fits one problem within ``run.budget`` seconds on ``run.threads`` threads."""

    name: str
    warm_up: bool = False  # fit the first problem once untimed (compilation)

    def unavailable(self) -> str | None:
        return None

    def needs_warm_up(self, run: RunSettings) -> bool:
        return self.warm_up

    def settings(self, run: RunSettings) -> dict:
        return {}

    def fit(self, X: np.ndarray, y: np.ndarray, seed: int, run: RunSettings) -> Fitted:
        raise NotImplementedError


def variable_names(n: int) -> list[str]:
    return [f"x_{k}" for k in range(n)]


def missing_module(module: str, distribution: str) -> str | None:
    """Why ``module`` cannot be imported (a one-line note), or None."""
    try:
        importlib.import_module(module)
    except ImportError as err:
        return (f"{distribution} is not installed ({type(err).__name__}: {err}); "
                f"pip install 'jaxsr-e2e[peers]'")
    return None


def regressor_parameters() -> set[str]:
    from jaxsr import SymbolicTransformerRegressor

    return set(inspect.signature(SymbolicTransformerRegressor).parameters)


@dataclasses.dataclass(frozen=True)
class JaxsrMethod(Method):
    """``SymbolicTransformerRegressor`` with the keywords that define the method. Keywords the
    regressor lacks are left out, unless they are ``required`` (then the method is skipped)."""

    name: str
    keywords: dict
    required: tuple[str, ...] = ()
    warm_up: bool = True

    def unavailable(self) -> str | None:
        missing = [k for k in self.required if k not in regressor_parameters()]
        if missing:
            wanted = ", ".join(f"{k}={self.keywords[k]!r}" for k in missing)
            return (f"SymbolicTransformerRegressor has no {' or '.join(missing)} keyword yet "
                    f"(this method sets {wanted})")
        return None

    def settings(self, run: RunSettings) -> dict:
        supported = regressor_parameters()
        return {"model": run.model, "max_time": run.budget,
                **{k: v for k, v in self.keywords.items() if k in supported},
                **run.jaxsr_overrides}

    def fit(self, X, y, seed, run) -> Fitted:
        from jaxsr import SymbolicTransformerRegressor

        est = SymbolicTransformerRegressor(**self.settings(run), random_state=seed).fit(X, y)
        return Fitted(est.predict, est.sympy())  # fitted on arrays: x_0, x_1, ...


# SRBench's Operon settings where a single run has them; its largest symbol set. Generations
# and evaluations are out of reach so that the time limit, the budget, ends every run.
OPERON_SETTINGS = {
    "allowed_symbols": "add,sub,mul,div,sin,cos,exp,log,sqrt,pow,constant,variable",
    "objectives": ["r2"], "population_size": 1000, "pool_size": 1000, "max_length": 50,
    "offspring_generator": "basic", "reinserter": "keep-best", "initialization_method": "btc",
    "optimizer_iterations": 1, "epsilon": 1e-5,
    "generations": 10**9, "max_evaluations": 10**15,
}
# Decimals of Operon's constants in the formula (float32 in Operon: 12 keeps them all).
OPERON_DECIMALS = 12


@dataclasses.dataclass(frozen=True)
class PyOperonMethod(Method):
    name: str = "pyoperon"

    def unavailable(self) -> str | None:
        return missing_module("pyoperon.sklearn", "pyoperon")

    def settings(self, run: RunSettings, seed: int = 0) -> dict:
        from pyoperon.sklearn import SymbolicRegressor

        accepted = inspect.signature(SymbolicRegressor).parameters
        # pyoperon 0.5 renamed time_limit to max_time; both are whole seconds.
        clock = "max_time" if "max_time" in accepted else "time_limit"
        wanted = {**OPERON_SETTINGS, "n_threads": run.threads, "random_state": seed,
                  clock: max(1, int(run.budget))}
        return {k: v for k, v in wanted.items() if k in accepted}

    def fit(self, X, y, seed, run) -> Fitted:
        from pyoperon.sklearn import SymbolicRegressor

        est = SymbolicRegressor(**self.settings(run, seed)).fit(X, y)
        names = variable_names(X.shape[1])
        text = est.get_model_string(est.model_, OPERON_DECIMALS, names)
        return Fitted(est.predict, parse_formula(text.replace("^", "**"), names))


# SRBench's gplearn settings (its first hyper-parameter set's population).
GPLEARN_SETTINGS = {
    "population_size": 1000, "tournament_size": 20, "init_depth": (2, 6),
    "init_method": "half and half", "metric": "mean absolute error",
    "parsimony_coefficient": 0.001, "p_crossover": 0.9, "p_subtree_mutation": 0.01,
    "p_hoist_mutation": 0.01, "p_point_mutation": 0.01, "p_point_replace": 0.05,
    "max_samples": 1.0, "function_set": ("add", "sub", "mul", "div", "log", "sqrt", "sin", "cos"),
}
GPLEARN_MAX_GENERATIONS = 100_000
# gplearn's functions read as mathematics, as SRBench reads them: its protected division,
# log and sqrt differ only where the divisor or argument is near 0 (or negative: |x|).
GPLEARN_SYMPY = {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b, "sqrt": lambda a: sympy.sqrt(sympy.Abs(a)),
    "log": lambda a: sympy.log(sympy.Abs(a)), "abs": sympy.Abs, "neg": lambda a: -a,
    "inv": lambda a: 1 / a, "max": sympy.Max, "min": sympy.Min, "sin": sympy.sin,
    "cos": sympy.cos, "tan": sympy.tan,
}


def gplearn_sympy(program: list) -> sympy.Expr:
    """A gplearn program (prefix list of functions, feature indices and constants) as sympy."""
    nodes = iter(program)

    def build() -> sympy.Expr:
        node = next(nodes)
        if hasattr(node, "arity"):
            return GPLEARN_SYMPY[node.name](*[build() for _ in range(node.arity)])
        if isinstance(node, numbers.Integral):
            return sympy.Symbol(f"x_{int(node)}")
        return sympy.Float(float(node))

    return build()


def evolve_within(est, X, y, budget: float) -> int:
    """Runs a ``warm_start`` gplearn estimator for about ``budget`` seconds: one generation,
    then chunks of half the remaining time at the last measured speed (few calls, as each
    warm-started call replays its random seeds); returns the generations run."""
    start = time.perf_counter()
    est.set_params(generations=1, warm_start=True).fit(X, y)
    per_generation = time.perf_counter() - start
    while True:
        done = len(est._programs)
        remaining = budget - (time.perf_counter() - start)
        if done < est.generations or done >= GPLEARN_MAX_GENERATIONS:
            return done  # a perfect fit stopped it early, or the cap
        if remaining < per_generation:
            return done  # the next generation would not fit in the budget
        more = max(1, int(0.5 * remaining / per_generation))
        chunk_start = time.perf_counter()
        est.set_params(generations=min(done + more, GPLEARN_MAX_GENERATIONS)).fit(X, y)
        per_generation = (time.perf_counter() - chunk_start) / max(1, len(est._programs) - done)


@dataclasses.dataclass(frozen=True)
class GplearnMethod(Method):
    name: str = "gplearn"

    def unavailable(self) -> str | None:
        return missing_module("gplearn.genetic", "gplearn")

    def needs_warm_up(self, run: RunSettings) -> bool:
        # n_jobs > 1: joblib starts its worker processes (seconds) on the first fit.
        return run.threads > 1

    def settings(self, run: RunSettings, seed: int = 0) -> dict:
        # low_memory: keep only the last generation (the budget may allow thousands).
        return {**GPLEARN_SETTINGS, "n_jobs": run.threads, "random_state": seed,
                "low_memory": True}

    def fit(self, X, y, seed, run) -> Fitted:
        from gplearn.genetic import SymbolicRegressor

        est = SymbolicRegressor(**self.settings(run, seed))
        evolve_within(est, X, y, run.budget)
        return Fitted(est.predict, gplearn_sympy(est._program.program))


def method_table(*methods: Method) -> dict[str, Method]:
    return {m.name: m for m in methods}


METHODS = method_table(
    JaxsrMethod("jaxsr-sample", {"search": "sample"}),
    JaxsrMethod("jaxsr-evolve", {"search": "evolve"}, required=("search",)),
    PyOperonMethod(),
    GplearnMethod(),
)
# The evolutionary search's switches at equal budget; each needs the keywords it changes.
ABLATION = method_table(
    JaxsrMethod("evolve", {"search": "evolve", "seeds": "model", "model_proposals": True},
                required=("search",)),
    JaxsrMethod("evolve-seeds-deferred",
                {"search": "evolve", "seeds": "model-deferred", "model_proposals": True},
                required=("search", "seeds")),
    JaxsrMethod("evolve-random-seeds",
                {"search": "evolve", "seeds": "random", "model_proposals": True},
                required=("search", "seeds")),
    JaxsrMethod("evolve-no-proposals",
                {"search": "evolve", "seeds": "model", "model_proposals": False},
                required=("search", "model_proposals")),
)


# ---------------------------------------------------------------------------- jobs


@dataclasses.dataclass(frozen=True, order=True)
class Job:
    method: str
    problem: str
    noise: float
    seed: int


def job_list(methods, problems, noises, seeds) -> list[Job]:
    """Every (method, problem, noise, seed), sorted: method first, so that a round-robin slice
    gets about the same number of jobs of each method."""
    return sorted(Job(m, p, float(n), int(s))
                  for m in methods for p in problems for n in noises for s in seeds)


def shard(jobs: list[Job], index: int, count: int) -> list[Job]:
    """Slice ``index`` of ``count``: every ``count``-th job of the sorted list from ``index``."""
    if not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: need 0 <= I < N")
    return sorted(jobs)[index::count]


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N), 0 <= I < N."""
    import argparse

    try:
        index, count = (int(part) for part in text.split("/"))
        shard([], index, count)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N, got {text!r}") from None
    return index, count


class ProblemStore:
    """Problems as the jobs need them, a few kept (a Feynman table takes a moment to build)."""

    def __init__(self, data_dir: Path, run: RunSettings, keep: int = 8):
        self.data_dir, self.run, self.keep = data_dir, run, keep
        self._cache: dict[tuple, GroundTruthProblem] = {}

    def get(self, name: str, seed: int, noise: float) -> GroundTruthProblem:
        key = (name, seed, noise)
        if key not in self._cache:
            if len(self._cache) >= self.keep:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key], = load_problems(self.data_dir, seed=seed, noise=noise,
                                              patterns=[name], n_rows=self.run.n_rows,
                                              train_cap=self.run.train_cap,
                                              generated=self.run.generated)
        return self._cache[key]


# ---------------------------------------------------------------------------- running


def fit_and_predict(method: Method, problem: GroundTruthProblem, seed: int,
                    run: RunSettings) -> tuple[Fitted | None, np.ndarray | None, float, str]:
    """(fitted, test predictions, seconds in fit, error). A method that raises gets its error
    recorded in its row rather than ending the run."""
    start = time.perf_counter()
    try:
        fitted = method.fit(problem.X_train, problem.y_train, seed, run)
    except Exception as err:  # noqa: BLE001 - peers raise anything; the row records it
        return None, None, time.perf_counter() - start, f"{type(err).__name__}: {err}"
    seconds = time.perf_counter() - start
    try:
        with np.errstate(all="ignore"):
            prediction = np.asarray(fitted.predict(problem.X_test), np.float64)
    except Exception as err:  # noqa: BLE001
        return fitted, None, seconds, f"predict: {type(err).__name__}: {err}"
    return fitted, prediction, seconds, ""


def result_row(job: Job, problem: GroundTruthProblem, fitted: Fitted | None, prediction,
               seconds: float, error: str, run: RunSettings) -> dict:
    """One row of ``peers_results.csv``."""
    r2 = r2_score(problem.y_test, prediction) if prediction is not None else math.nan
    if fitted is not None and prediction is not None:
        check = check_symbolic_solution(fitted.formula, problem.truth,
                                        r2=r2 if math.isfinite(r2) else -math.inf,
                                        timeout=run.symbolic_timeout)
        symbolic, reason = check.solution, check.reason
    else:
        symbolic, reason = False, "no formula"
    return {
        "method": job.method, "problem": problem.name, "family": problem.family,
        "n_variables": problem.X_train.shape[1], "noise": job.noise, "seed": job.seed,
        "r2_test": r2, "solved_0.99": bool(r2 > 0.99), "solved_0.999": bool(r2 > 0.999),
        "symbolic_solution": symbolic, "symbolic_reason": reason,
        "complexity": complexity(sympy.sympify(fitted.formula)) if fitted else math.nan,
        "seconds": seconds, "formula": str(fitted.formula) if fitted else "",
        "truth": str(problem.truth), "budget": run.budget, "threads": run.threads,
        "error": error,
    }


WARM_UP_BUDGETS = 4
WARM_UP_COLUMNS = 2


def warm_up(method: Method, problem: GroundTruthProblem, seed: int, run: RunSettings,
            log) -> None:
    """One untimed fit, so that compilation (jaxsr) or starting worker processes (gplearn on
    several threads) is not charged to the first timed problem.

    The fit sees the problem with noise added, only its first WARM_UP_COLUMNS columns, and
    WARM_UP_BUDGETS times the budget: a run that solves its problem at once, or spends its
    budget compiling, stops before the stages that compile last (jaxsr's model proposals
    come when the search stalls), and jaxsr's model is asked only about problems with as
    few variables as it was trained on (its search pads every problem to the same width,
    so fewer columns compile nothing less)."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    noisy = dataclasses.replace(
        problem, X_train=problem.X_train[:, :WARM_UP_COLUMNS],
        X_test=problem.X_test[:, :WARM_UP_COLUMNS],
        y_train=problem.y_train + 0.1 * np.std(problem.y_train)
        * rng.standard_normal(len(problem.y_train)))
    fit_and_predict(method, noisy, seed,
                    dataclasses.replace(run, budget=WARM_UP_BUDGETS * run.budget))
    log(f"  warm-up of {method.name} on {problem.name}: {time.perf_counter() - start:.1f} s "
        "(untimed)")


def run_jobs(jobs: list[Job], methods: dict[str, Method], store: ProblemStore,
             run: RunSettings, log=print, partial: Path | None = None) -> pd.DataFrame:
    """Runs the jobs in order; one row each. With ``partial``, the rows so far are written
    there (atomically) after every job, so an interrupted run keeps what it measured."""
    rows, warmed = [], set()
    for k, job in enumerate(jobs, 1):
        method = methods[job.method]
        problem = store.get(job.problem, job.seed, job.noise)
        if method.needs_warm_up(run) and job.method not in warmed:
            warmed.add(job.method)
            warm_up(method, problem, job.seed, run, log)
        fitted, prediction, seconds, error = fit_and_predict(method, problem, job.seed, run)
        rows.append(result_row(job, problem, fitted, prediction, seconds, error, run))
        log(f"  [{k}/{len(jobs)}] {job.method} {job.problem} noise {job.noise:g} seed "
            f"{job.seed}: R2 {rows[-1]['r2_test']:.4f} in {seconds:.1f} s"
            + (f" ({error})" if error else ""))
        if partial is not None:
            common.write_csv(pd.DataFrame(rows, columns=RESULT_COLUMNS), partial)
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


# ---------------------------------------------------------------------------- tables


def variable_group(n: int) -> str:
    return next(label for low, high, label in VARIABLE_BINS if low <= n <= high)


def as_flags(values: pd.Series) -> pd.Series:
    """True/False flags, also as read back from CSV text; missing (undecided) is False."""
    return values.map(lambda v: str(v).strip().lower() in ("true", "1", "1.0"))


def summary(results: pd.DataFrame) -> pd.DataFrame:
    """Per method and noise level, over all problems, by family and by number of variables:
    runs, % solved at R2 > 0.99 and > 0.999, symbolic solutions (an undecided check counts as
    none, as SRBench scores its timeouts), median complexity, median seconds, errors."""
    frame = results.assign(
        all="all", variables=results["n_variables"].astype(int).map(variable_group),
        s99=as_flags(results["solved_0.99"]), s999=as_flags(results["solved_0.999"]),
        symbolic=as_flags(results["symbolic_solution"]),
        undecided=results["symbolic_solution"].isna(),
        failed=results["error"].map(lambda e: isinstance(e, str) and e != ""))
    parts = [_group_summary(frame, grouping, column)
             for grouping, column in (("all", "all"), ("family", "family"),
                                      ("variables", "variables"))]
    return pd.concat(parts, ignore_index=True)


def _group_summary(frame: pd.DataFrame, grouping: str, column: str) -> pd.DataFrame:
    groups = frame.groupby(["method", "noise", column], sort=True)
    table = pd.DataFrame({
        "runs": groups.size(),
        "% R2>0.99": 100 * groups["s99"].mean(),
        "% R2>0.999": 100 * groups["s999"].mean(),
        "symbolic": groups["symbolic"].sum(),
        "% symbolic": 100 * groups["symbolic"].mean(),
        "symbolic undecided": groups["undecided"].sum(),
        "median complexity": groups["complexity"].median(),
        "median seconds": groups["seconds"].median(),
        "max seconds": groups["seconds"].max(),
        "errors": groups["failed"].sum(),
    }).reset_index().rename(columns={column: "group"})
    table.insert(2, "grouping", grouping)
    return table.astype({"runs": int, "symbolic": int, "symbolic undecided": int, "errors": int})


def plot_accuracy_vs_time(overall: pd.DataFrame, path: Path, title: str,
                          budgets=()) -> None:
    """Median seconds per problem (log) against % solved at R2 > 0.999, one labelled point per
    method (and noise level, where there are several), as Fig. 1 of the E2E paper; a dashed
    line at each budget."""
    from matplotlib.figure import Figure  # no pyplot: no global backend (Agg by default here)
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(6.4, 4.6))
    ax = fig.add_subplot()
    several_noises = overall["noise"].nunique() > 1
    for row in overall.to_dict("records"):
        seconds = max(float(row["median seconds"]), 1e-3)  # log axis: a 0 s method stays on it
        accuracy = float(row["% R2>0.999"])
        label = row["method"] + (f" (noise {row['noise']:g})" if several_noises else "")
        ax.scatter([seconds], [accuracy], s=40)
        ax.annotate(label, (seconds, accuracy), textcoords="offset points", xytext=(5, 4),
                    fontsize=8)
    for budget in budgets:
        ax.axvline(budget, color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    if overall.empty:
        ax.set_xlim(0.1, 100)
    # Plain numbers at 1, 2, 3 and 5 per decade: the points often span less than a decade.
    plain = FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "1235" else "")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.set_ylim(-3, 103)
    ax.set_xlabel("median seconds per problem (log scale)")
    ax.set_ylabel("% solved (R2 > 0.999)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")


def run_description(results: pd.DataFrame) -> str:
    """Budget, threads, seeds and noise levels, as the rows record them."""
    def values(column):
        return ", ".join(f"{v:g}" for v in sorted(results[column].dropna().unique()))
    if results.empty:
        return "no results"
    return (f"budget {values('budget')} s per problem, {values('threads')} thread(s), seeds "
            f"{values('seed')}, noise {values('noise')}")


def report(results: pd.DataFrame, out: Path, notes: list[str], title: str) -> str:
    """Writes ``summary.csv``, ``summary.md`` and the figure; returns the markdown."""
    table = summary(results)
    table.to_csv(out / "summary.csv", index=False)
    described = run_description(results)
    sections = [f"### {title}", f"{len(results)} runs; {described}. Seconds: wall time of each "
                f"method's fit, after {WARM_UP}; sympy's symbolic check is not counted."]
    sections += [f"Note: {note}" for note in notes]
    for grouping, heading in (("all", "All problems"), ("family", "By family"),
                              ("variables", "By number of variables")):
        part = table[table["grouping"] == grouping].drop(columns="grouping")
        # Noise levels as given (SRBench's 0.001 and 0.01), not rounded like the shares.
        part = part.assign(noise=part["noise"].map("{:g}".format))
        sections += [f"#### {heading}", common.markdown_table(part, digits=1)]
    text = "\n\n".join(sections) + "\n"
    (out / "summary.md").write_text(text)
    plot_accuracy_vs_time(table[table["grouping"] == "all"], out / FIGURE,
                          f"{title}\n{described} (dashed: budget)",
                          sorted(results["budget"].dropna().unique()))
    return text


# ---------------------------------------------------------------------------- merging


def read_results(directory: Path) -> pd.DataFrame:
    path = Path(directory) / RESULTS
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (was that shard run?)")
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def merge_results(frames: list[pd.DataFrame]) -> tuple[pd.DataFrame, int]:
    """All rows, each job once (the first seen), sorted; and how many duplicates were dropped."""
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=RESULT_COLUMNS), 0
    rows = pd.concat(frames, ignore_index=True)
    unique = rows.drop_duplicates(subset=JOB_KEY, keep="first")
    unique = unique.sort_values(JOB_KEY, kind="stable").reset_index(drop=True)
    return unique[[c for c in RESULT_COLUMNS if c in unique.columns]], len(rows) - len(unique)


def skipped_notes(skipped: dict[str, list[str]], runs: int) -> list[str]:
    """One note per skipped method, saying in how many of ``runs`` runs (shards) it was."""
    notes = []
    for name, reasons in sorted(skipped.items()):
        where = "" if runs == 1 else f" in {len(reasons)} of {runs} runs"
        notes.append(f"{name} skipped{where}: {'; '.join(sorted(set(reasons)))}")
    return notes


def shard_skips(directories: list[Path]) -> dict[str, list[str]]:
    """The methods each folder's run skipped, from its provenance.json."""
    skipped: dict[str, list[str]] = {}
    for directory in directories:
        record = Path(directory) / "provenance.json"
        if record.is_file():
            for name, reason in json.loads(record.read_text()).get("skipped", {}).items():
                skipped.setdefault(name, []).append(reason)
    return skipped


# ---------------------------------------------------------------------------- command line


def build_parser():
    parser = common.parser(__doc__.splitlines()[0], data=True)
    parser.add_argument("--budget", type=float, default=None,
                        help="wall-clock seconds per problem and method (default 5; 2 with "
                             "--quick)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU cores (and threads) for every method: the process is held to "
                             "this many cores")
    parser.add_argument("--methods", nargs="+", metavar="NAME", default=None,
                        help=f"methods to run (default: all of {', '.join(METHODS)}; with "
                             f"--ablation: {', '.join(ABLATION)})")
    parser.add_argument("--ablation", action="store_true",
                        help="run the jaxsr evolutionary search's switches instead of the peers")
    parser.add_argument("--problems", nargs="+", default=None, metavar="NAME_OR_PATTERN",
                        help="only these problems: names or shell patterns such as "
                             "'feynman_I_*' (default: all 133; 2 with --quick)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="trial seeds (default: --seed)")
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0],
                        help="target noise levels (SRBench: 0 0.001 0.01 0.1)")
    parser.add_argument("--shard", type=parse_shard, default=(0, 1), metavar="I/N",
                        help="run only slice I of N of the job list (0 <= I < N)")
    parser.add_argument("--merge", nargs="+", type=Path, default=None, metavar="DIR",
                        help="combine the results of these folders (e.g. shards) into --out "
                             "instead of running")
    parser.add_argument("--rows", type=int, default=None,
                        help=f"Feynman rows generated per problem (default {PMLB_ROWS:,}, as "
                             "PMLB; fewer make a long run cheaper: 75%% train, 25%% test)")
    parser.add_argument("--symbolic-timeout", type=float, default=None,
                        help="seconds of sympy per formula for the symbolic check (default 10)")
    parser.add_argument("--generated", type=int, default=0, metavar="N",
                        help="also N functions of jaxsr's generator (generated_000, ...)")
    parser.add_argument("--generator", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="GeneratorConfig fields narrowing --generated's ranges, e.g. "
                             "max_input_dimension=3 (default: the reference's ranges)")
    return parser


def run_settings(args) -> RunSettings:
    overrides = common.assignments("--fit", args.fit, common.FitSettings)
    changes = {"threads": args.threads, "model": args.model, "jaxsr_overrides": overrides}
    if args.budget is not None:
        changes["budget"] = args.budget
    if args.rows is not None:
        changes["n_rows"] = args.rows
    if args.symbolic_timeout is not None:
        changes["symbolic_timeout"] = args.symbolic_timeout
    if args.generated:
        fields = common.assignments("--generator", args.generator, GeneratorConfig)
        changes["generated"] = GeneratedSet(args.generated, tuple(sorted(fields.items())))
    return RunSettings.quick(**changes) if args.quick else RunSettings(**changes)


def peer_versions() -> dict[str, str]:
    versions = {}
    for name in ("pyoperon", "gplearn"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def check_arguments(args, table: dict[str, Method]) -> str | None:
    """What is wrong with the command line before any work (None: nothing)."""
    unknown = [m for m in (args.methods or []) if m not in table]
    if unknown:
        return f"--methods {unknown}: not among {list(table)}"
    if args.budget is not None and not args.budget > 0:
        return f"--budget must be positive, got {args.budget}"
    if not 0 <= args.generated < 1000:
        return f"--generated must be between 0 and 999, got {args.generated}"
    if args.generator and not args.generated:
        return "--generator narrows --generated's functions: give --generated N too"
    cores = len(os.sched_getaffinity(0))
    if not 1 <= args.threads <= cores:
        return f"--threads must be between 1 and the {cores} core(s) this process may use"
    try:
        patterns = args.problems or (list(QUICK_PROBLEMS) if args.quick else None)
        select_names(all_problem_names(args.data, GeneratedSet(args.generated)), patterns)
    except (common.DataNotFoundError, ValueError) as err:
        return str(err)
    return None


def run(args) -> int:
    table = ABLATION if args.ablation else METHODS
    problem = check_arguments(args, table)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    settings = run_settings(args)
    names = args.methods or list(table)
    patterns = args.problems or (list(QUICK_PROBLEMS) if args.quick else None)
    problems = select_names(all_problem_names(args.data, settings.generated), patterns)
    seeds = args.seeds if args.seeds is not None else [args.seed]
    index, count = args.shard
    jobs = shard(job_list(names, problems, args.noise, seeds), index, count)
    out, clock = common.start(args)

    # Availability is checked here, not when listing jobs: a shard's slice must not depend on
    # what its machine has installed.
    skipped = {name: reason for name in names if (reason := table[name].unavailable())}
    for name, reason in skipped.items():
        print(f"note: {name} skipped: {reason}")
    runnable = [job for job in jobs if job.method not in skipped]
    print(f"{len(runnable)} jobs (shard {index}/{count} of {len(problems)} problems x "
          f"{len(names)} methods x {len(seeds)} seeds x {len(args.noise)} noise levels), "
          f"budget {settings.budget:g} s, {settings.threads} thread(s)")
    with threads.pinned(settings.threads) as pinning:
        results = run_jobs(runnable, table, ProblemStore(args.data, settings), settings,
                           partial=out / RESULTS)
    results.to_csv(out / RESULTS, index=False)

    title = "jaxsr search ablation" if args.ablation else "jaxsr and peers"
    kind = "ground-truth problems" if settings.generated.count else "SRBench ground-truth problems"
    print(report(results, out, skipped_notes({k: [v] for k, v in skipped.items()}, 1),
                 f"{title} on {kind}"))
    common.write_provenance(out, "peers-ablation" if args.ablation else "peers", args,
                            dataclasses.asdict(settings), wall_seconds=clock.seconds, extra={
                                "methods": {n: method_record(table[n], settings, skipped)
                                            for n in names},
                                "skipped": skipped, "threads": pinning.record(),
                                "warm_up": WARM_UP,
                                "shard": f"{index}/{count}", "jobs": len(jobs),
                                "problems": problems, "peer_versions": peer_versions()})
    print(f"wrote {out} in {clock.seconds:.1f} s")
    return 0


def method_record(method: Method, settings: RunSettings, skipped: dict) -> dict:
    """How a method was configured, for provenance.json."""
    if method.name in skipped:
        return {"skipped": skipped[method.name]}
    return {"adapter": type(method).__name__,
            "settings": json.loads(json.dumps(method.settings(settings), default=str))}


def merge(args) -> int:
    try:
        frames = [read_results(d) for d in args.merge]
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out, clock = common.start(args)
    results, duplicates = merge_results(frames)
    results.to_csv(out / RESULTS, index=False)
    notes = skipped_notes(shard_skips(args.merge), len(args.merge))
    print(report(results, out, notes, "jaxsr and peers on SRBench ground-truth problems "
                                      f"({len(args.merge)} folder(s) merged)"))
    common.write_provenance(out, "peers-merge", args, {}, wall_seconds=clock.seconds, extra={
        "merged": [str(d) for d in args.merge], "rows": len(results),
        "duplicates_dropped": duplicates, "skipped": {
            name: "; ".join(sorted(set(r))) for name, r in shard_skips(args.merge).items()},
        "peer_versions": peer_versions()})
    print(f"merged {len(args.merge)} folders ({len(results)} rows, {duplicates} duplicates "
          f"dropped) into {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return merge(args) if args.merge else run(args)


if __name__ == "__main__":
    sys.exit(main())
