"""SRBench's ground-truth problems, rebuilt from the data bundled in ``jaxsr/datasets`` (or the
folder ``--data`` names, laid out the same way).

- **Feynman** (119 problems): PMLB's tables are Git LFS pointers, so the data are regenerated the
  way AI Feynman and PMLB made them: each variable uniform in its range, ``n_rows`` rows
  (PMLB kept 100,000). The 100 AI Feynman equations and the 20 bonus ones come from
  ``feynman/FeynmanEquations.csv`` and ``feynman/BonusEquations.csv``; II.11.17 is left out
  because PMLB has no table for it, which leaves SRBench's 119.
- **Strogatz** (14 problems): the real ``strogatz/d_<name>.txt`` files (about 400 rows each).
- **Generated** (none unless asked for, ``GeneratedSet``): functions from jaxsr's own
  generator, ``generated_000``, ``generated_001``, ..., in ranges that can be narrowed to a
  model's training ranges. They are not SRBench's: they tell whether a model helps the search
  on the kind of problem it was trained on, the first place a better model should show.

Then SRBench's protocol (docs/anchors.md section 2.1): a 75/25 train/test split seeded by the
trial seed (``sklearn.model_selection.train_test_split``), the training set capped at 10,000
rows by random subsampling (without replacement), and additive Gaussian noise of standard
deviation ``noise * RMS(y_train)`` on the training targets only. y is not standardised (the authors'
``evaluate_pmlb`` feeds raw y too).

Randomness: a Feynman table depends only on the problem (like a fixed PMLB file); the split,
cap and noise depend on (seed, problem). The noise draw for a given seed is the same standard
normal vector at every noise level, scaled.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import zlib
from functools import cached_property

import numpy as np
import pandas as pd
import sympy
from sklearn.model_selection import train_test_split

from experiments.common import data_file
from jaxsr.data import Generator, GeneratorConfig
from jaxsr.datasets import STROGATZ
from jaxsr.metrics import parse_formula

FEYNMAN_FILES = ("FeynmanEquations.csv", "BonusEquations.csv")
# PMLB has no table for this AI Feynman equation, so SRBench's Feynman set has 119 problems.
NOT_IN_PMLB = ("II.11.17",)
# PMLB's names where they are not AI Feynman's with dots turned into underscores.
PMLB_RENAMES = {"I.15.1": "feynman_I_15_10"}
PMLB_ROWS = 100_000
TRAIN_FRACTION = 0.75
TRAIN_CAP = 10_000
NOISE_LEVELS = (0.0, 0.001, 0.01, 0.1)


@dataclasses.dataclass(frozen=True)
class FeynmanSpec:
    """One Feynman formula and the ranges its variables are drawn from."""

    name: str                      # PMLB name, e.g. feynman_I_6_2a, feynman_test_1
    source_name: str               # AI Feynman's, e.g. I.6.2a, test_1
    formula: str                   # sympy syntax ('~' of the source already made '-')
    variables: tuple[str, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]

    def sample(self, n_rows: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n_rows`` inputs uniform in the ranges and the formula's outputs."""
        X = rng.uniform(self.low, self.high, size=(n_rows, len(self.variables)))
        y = evaluate_formula(self.formula, self.variables, X)
        if not np.all(np.isfinite(y)):
            raise ValueError(f"{self.name}: the formula {self.formula} is not finite on "
                             f"{int(np.sum(~np.isfinite(y)))} of {n_rows} rows in its ranges")
        return X, y


@dataclasses.dataclass(frozen=True, eq=False)
class GroundTruthProblem:
    """One train/test instance of a ground-truth problem."""

    name: str
    family: str                    # "feynman", "strogatz" or "generated"
    formula: str                   # the true formula in terms of feature_names
    feature_names: tuple[str, ...]
    X_train: np.ndarray
    y_train: np.ndarray            # noise included
    X_test: np.ndarray
    y_test: np.ndarray             # noise-free
    noise: float
    seed: int

    @cached_property
    def truth(self) -> sympy.Expr:
        """The true formula with the features renamed x_0, x_1, ... (the regressor's names), so
        that names sympy would misread (I, E, gamma) never get in the way."""
        expr = parse_formula(self.formula, self.feature_names)
        return expr.xreplace({sympy.Symbol(n): sympy.Symbol(f"x_{k}")
                              for k, n in enumerate(self.feature_names)})


# ---------------------------------------------------------------------------- reading


def evaluate_formula(formula: str, names, X: np.ndarray) -> np.ndarray:
    expr = parse_formula(formula, names)
    unknown = {str(s) for s in expr.free_symbols} - set(names)
    if unknown:
        raise ValueError(f"formula {formula!r} uses {sorted(unknown)}, not among its variables "
                         f"{list(names)}")
    function = sympy.lambdify([sympy.Symbol(n) for n in names], expr, "numpy")
    with np.errstate(all="ignore"):
        y = function(*np.asarray(X, np.float64).T)
    return np.broadcast_to(np.asarray(y, np.float64), (len(X),)).copy()


def pmlb_name(source_name: str) -> str:
    """AI Feynman's name -> PMLB's: ``I.6.2a`` -> ``feynman_I_6_2a``, ``test_3`` ->
    ``feynman_test_3``."""
    return PMLB_RENAMES.get(source_name, "feynman_" + source_name.replace(".", "_"))


def read_feynman_specs(data_dir) -> list[FeynmanSpec]:
    """The 119 Feynman problems of SRBench, in file order."""
    specs = []
    for filename in FEYNMAN_FILES:
        table = pd.read_csv(data_file(data_dir, "feynman", filename))
        for row in table.to_dict("records"):
            if row["Filename"] in NOT_IN_PMLB:
                continue
            specs.append(_feynman_spec(row))
    return specs


def _feynman_spec(row: dict) -> FeynmanSpec:
    # Variables are the named ones: "# variables" undercounts in test_12, 13, 18 and 19.
    slots = [k for k in range(1, 11) if isinstance(row.get(f"v{k}_name"), str)]
    return FeynmanSpec(
        name=pmlb_name(row["Filename"]), source_name=row["Filename"],
        formula=row["Formula"].replace("~", "-"),  # '~' is unary minus in the source files
        variables=tuple(row[f"v{k}_name"] for k in slots),
        low=tuple(float(row[f"v{k}_low"]) for k in slots),
        high=tuple(float(row[f"v{k}_high"]) for k in slots))


def strogatz_names() -> list[str]:
    return [f"strogatz_{name}" for name in STROGATZ]


def read_strogatz(data_dir, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(X, y) of a Strogatz system: columns x, y of ``d_<system>.txt`` -> its ``label``."""
    system = name.removeprefix("strogatz_")
    table = pd.read_csv(data_file(data_dir, "strogatz", f"d_{system}.txt"))
    return table[["x", "y"]].to_numpy(np.float64), table["label"].to_numpy(np.float64)


# ---------------------------------------------------------------------------- the protocol


def _problem_key(name: str) -> int:
    return zlib.crc32(name.encode())


def split_and_noise(name: str, X: np.ndarray, y: np.ndarray, *, seed: int, noise: float,
                    train_cap: int = TRAIN_CAP):
    """SRBench's protocol on one table: (X_train, y_train + noise, X_test, y_test)."""
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, train_size=TRAIN_FRACTION, test_size=1 - TRAIN_FRACTION, random_state=seed)
    rng = np.random.default_rng([seed, _problem_key(name)])
    if len(y_train) > train_cap:
        keep = rng.choice(len(y_train), size=train_cap, replace=False)
        X_train, y_train = X_train[keep], y_train[keep]
    standard_normal = rng.standard_normal(len(y_train))
    rms = np.sqrt(np.mean(y_train ** 2))
    return X_train, y_train + noise * rms * standard_normal, X_test, y_test


def select_names(names: list[str], patterns: list[str] | None) -> list[str]:
    """The names matching any pattern (exact names or shell patterns such as
    ``feynman_I_*``), in the given order; an unmatched pattern is an error."""
    if not patterns:
        return list(names)
    unmatched = [p for p in patterns if not fnmatch.filter(names, p)]
    if unmatched:
        raise ValueError(f"--problems {unmatched} match no problem; names look like "
                         f"{names[0]}, {names[-1]} (shell patterns such as 'feynman_I_*' work)")
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def load_problems(data_dir, *, seed: int = 0, noise: float = 0.0, patterns=None,
                  n_rows: int = PMLB_ROWS, train_cap: int = TRAIN_CAP,
                  generated: GeneratedSet | None = None) -> list[GroundTruthProblem]:
    """The selected ground-truth problems (all 133, then ``generated``'s, by default;
    ``patterns`` as in ``select_names``), split and noised for one (seed, noise), Feynman
    first."""
    generated = generated or GeneratedSet()
    specs = {spec.name: spec for spec in read_feynman_specs(data_dir)}
    problems = []
    for name in select_names([*specs, *strogatz_names(), *generated.names()], patterns):
        if name in specs:
            spec = specs[name]
            X, y = spec.sample(n_rows, np.random.default_rng(_problem_key(name)))
            family, formula, features = "feynman", spec.formula, spec.variables
        elif name.startswith(GENERATED_PREFIX):
            X, y, formula, features = generated.table(name)
            family = "generated"
        else:
            X, y = read_strogatz(data_dir, name)
            family, formula = "strogatz", STROGATZ[name.removeprefix("strogatz_")]
            features = ("x", "y")
        X_train, y_train, X_test, y_test = split_and_noise(name, X, y, seed=seed, noise=noise,
                                                           train_cap=train_cap)
        problems.append(GroundTruthProblem(name, family, formula, tuple(features), X_train,
                                           y_train, X_test, y_test, noise, seed))
    return problems


def all_problem_names(data_dir, generated: GeneratedSet | None = None) -> list[str]:
    """PMLB names of all 133 problems: 119 Feynman, then 14 Strogatz; then ``generated``'s."""
    return ([spec.name for spec in read_feynman_specs(data_dir)] + strogatz_names()
            + (generated or GeneratedSet()).names())


# ---------------------------------------------------------------------------- generated

GENERATED_PREFIX = "generated_"
GENERATED_ROWS = 400  # per function: 300 training and 100 test rows after the 75/25 split
GENERATED_SEED = 0    # the generator's seed: a function's table depends only on its index


@dataclasses.dataclass(frozen=True)
class GeneratedSet:
    """The first ``count`` evaluation samples of jaxsr's generator seeded ``GENERATED_SEED``,
    as problems ``generated_000``, ... . ``generator``: ``GeneratorConfig`` fields as (field,
    value) pairs narrowing its ranges (e.g. a model's training ranges, which its weights
    record); empty: the reference's ranges. Inputs come from the generator's own input
    distribution; the truth is the generated tree."""

    count: int = 0
    generator: tuple[tuple[str, object], ...] = ()

    def names(self) -> list[str]:
        return [f"{GENERATED_PREFIX}{i:03d}" for i in range(self.count)]

    def table(self, name: str) -> tuple[np.ndarray, np.ndarray, str, tuple[str, ...]]:
        """(X, y, the formula in sympy syntax, feature names) of one function."""
        index = int(name.removeprefix(GENERATED_PREFIX))
        if not 0 <= index < self.count:
            raise ValueError(f"{name}: this run generates {self.count} functions")
        sample = self._generator.sample(index, evaluation=True)
        features = tuple(f"x_{k}" for k in range(sample.x.shape[1]))
        return sample.x, sample.y, str(sample.tree.to_sympy(features)), features

    @cached_property
    def _generator(self) -> Generator:
        return Generator(GeneratorConfig(**{**dict(self.generator), "seed": GENERATED_SEED,
                                            "max_points": GENERATED_ROWS}))
