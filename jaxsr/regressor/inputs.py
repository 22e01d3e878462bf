"""Training data in: validation with errors that name the problem, variable names, feature
selection and standardisation. Everything here is numpy; nothing touches the model."""

from __future__ import annotations

import dataclasses
import functools
import keyword
import numbers
import re
import unicodedata
import warnings
from collections.abc import Sequence

import numpy as np

from jaxsr.expr.tokens import MAX_ABS_VALUE

# Rows used to score, refine and rank candidates (a seeded subsample beyond this, as the
# reference refines on 1,024 rows; it took the first ones, we draw them at random).
MAX_FIT_ROWS = 1024
# Rows mutual information is estimated on when more than max_input_dimension features exist.
SELECTION_ROWS = 2000

# The largest problem accepted (docs/errors.md, "Limits"). The model reads at most
# max_input_dimension (10) features and bags of a few hundred points, so these bound memory
# rather than quality: X in float64 is at most MAX_VALUES * 8 bytes (160 MB), and the mutual
# information that picks 10 of MAX_FEATURES columns takes seconds.
MAX_ROWS = 1_000_000
MAX_FEATURES = 1_000
MAX_VALUES = 20_000_000  # rows x features
MIN_ROWS = 2


@dataclasses.dataclass
class FitProblem:
    """One regression problem, validated and prepared for the pipeline.

    Only rows with a positive weight are kept: a zero weight removes a row everywhere.

    Attributes:
      X: (n, D) float64 in the user's units, every column.
      y, weight: (n,).
      names: the formula name of each of the D columns.
      selected: (d,) the columns the model sees (d <= its max_input_dimension), ascending.
      mean, scale: (d,) standardisation of the selected columns (scale 1 for a constant one).
      fit_rows: (m,) rows on which candidates are scored, refined and ranked.
      rng: this problem's random generator (bags, fit rows).
      max_features: the most columns the model reads.
    """

    X: np.ndarray
    y: np.ndarray
    weight: np.ndarray
    names: list[str]
    selected: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    fit_rows: np.ndarray
    rng: np.random.Generator
    max_features: int

    @property
    def constant_target(self) -> bool:
        return bool(np.ptp(self.y) == 0)

    @property
    def n_selected(self) -> int:
        return len(self.selected)

    def standardised(self, rows) -> np.ndarray:
        """(len(rows), d): the selected columns as the model sees them."""
        return (self.X[rows][:, self.selected] - self.mean) / self.scale

    def user_units(self, rows) -> np.ndarray:
        """(len(rows), d): the selected columns in the user's units."""
        return self.X[rows][:, self.selected]


# ---------------------------------------------------------------------------- validation


def check_columns_numeric(X) -> None:
    """Names the first non-numeric or missing cell of a DataFrame (its column, its row
    position and the value), and column names that are not all strings. Numpy input is left
    to numpy."""
    dtypes = getattr(X, "dtypes", None)
    if dtypes is None or not hasattr(dtypes, "items"):
        return
    from pandas.api.types import is_bool_dtype, is_complex_dtype, is_numeric_dtype

    check_column_names(list(dtypes.index))
    for position, (name, dtype) in enumerate(dtypes.items()):
        if is_complex_dtype(dtype):  # "numeric" to pandas; numpy's float cast would fail
            raise ValueError(f"X column {name!r} holds complex numbers (dtype {dtype}); a "
                             "formula needs real ones")
        if not (is_numeric_dtype(dtype) or is_bool_dtype(dtype)):
            _check_cells(name, X.iloc[:, position])


def check_column_names(names: list) -> None:
    """sklearn reads feature names only when all are strings; a mix would fail later with a
    TypeError, so it is refused here, naming the odd ones."""
    kinds = {type(name).__name__ for name in names}
    if len(kinds) > 1 and "str" in kinds:
        odd = [repr(name) for name in names if not isinstance(name, str)]
        raise ValueError(f"X's column names mix strings with {', '.join(sorted(kinds - {'str'}))}"
                         f" ({_first(odd)}): make them all strings")


def _check_cells(name, column) -> None:
    """The first cell of an object/string/categorical column that is not a real number."""
    for row, value in enumerate(column.tolist()):
        if _is_missing(value):
            raise ValueError(f"X column {name!r} has a missing value ({value!r}) at row "
                             f"{row} (0-based position); remove or impute it")
        if not _is_real(value):
            raise ValueError(f"X column {name!r} has a non-numeric value {value!r} at row "
                             f"{row} (0-based position); convert or drop the column "
                             "(a formula needs numbers)")


def _is_missing(value) -> bool:
    import pandas as pd

    try:
        return value is None or bool(pd.isna(value))
    except (TypeError, ValueError):  # array-like cells: not a missing scalar
        return False


def _is_real(value) -> bool:
    return isinstance(value, (numbers.Real, np.bool_)) and not isinstance(value, str)


def as_floats(values) -> np.ndarray | None:
    """``values`` as a float array, (n,) for a column; None where that fails (sklearn's
    validation then says why)."""
    try:
        values = np.asarray(values)
        if np.iscomplexobj(values):
            return None
        values = values.astype(np.float64)
    except (TypeError, ValueError):
        return None
    return values[:, 0] if values.ndim == 2 and values.shape[1] == 1 else values


def check_finite(values: np.ndarray | None, what: str,
                 names: Sequence[str] | None = None) -> None:
    """Raises a ValueError saying which entries of ``values`` are NaN or infinite, and where."""
    if values is None or values.ndim not in (1, 2):
        return
    bad = ~np.isfinite(values)
    if not bad.any():
        return
    kinds = [kind for kind, mask in (("NaN", np.isnan(values)), ("inf", np.isinf(values)))
             if mask.any()]
    rows = np.unique(np.nonzero(bad)[0])
    where = f"rows {_first(rows)}"
    if values.ndim == 2:
        columns = np.flatnonzero(bad.any(axis=0))
        labels = [names[c] if names is not None else str(c) for c in columns]
        where += f", columns {_first(labels)}"
    raise ValueError(f"{what} contains {' and '.join(kinds)} ({int(bad.sum())} value(s)) at "
                     f"{where}; remove or impute them")


def _first(items, limit: int = 5) -> str:
    items = [str(i) for i in items]
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def check_lengths(X, y, sample_weight) -> None:
    """Checks the size of X against the limits, and says which of y and sample_weight has a
    different number of rows than X (before sklearn's generic "inconsistent numbers of
    samples")."""
    n = _length(X)
    shape = getattr(X, "shape", None)
    if n is not None and isinstance(shape, tuple) and len(shape) == 2:
        check_size(n, int(shape[1]))
    for what, other in (("y", y), ("sample_weight", sample_weight)):
        m = _length(other)
        if n is not None and m is not None and m != n:
            raise ValueError(f"X has {n} rows but {what} has {m}")


def check_size(n_rows: int, n_features: int) -> None:
    """Raises a ValueError naming the limit a problem of this size exceeds."""
    # The wording keeps sklearn's "1 sample"; no features is left to sklearn's own check.
    if n_rows < MIN_ROWS:
        raise ValueError(f"X has {n_rows} sample(s) (rows); at least {MIN_ROWS} are needed")
    if n_rows > MAX_ROWS:
        raise ValueError(f"X has {n_rows:,} rows; the limit is {MAX_ROWS:,} "
                         "(inputs.MAX_ROWS): subsample it first")
    if n_features > MAX_FEATURES:
        raise ValueError(f"X has {n_features:,} features; the limit is {MAX_FEATURES:,} "
                         "(inputs.MAX_FEATURES): select features first")
    if n_rows * n_features > MAX_VALUES:
        raise ValueError(f"X has {n_rows:,} rows x {n_features:,} features = "
                         f"{n_rows * n_features:,} values; the limit is {MAX_VALUES:,} "
                         "(inputs.MAX_VALUES): subsample the rows first")


def max_rows_for(n_features: int) -> int:
    """The most rows accepted with ``n_features`` features."""
    return min(MAX_ROWS, MAX_VALUES // max(n_features, 1))


def max_constants(max_len: int) -> int:
    """The most float constants a formula of ``max_len`` tokens holds: each takes 3 tokens
    and every two leaves need a binary operator, so k constants need 4k - 1 tokens. The
    regressor's ``max_len`` (at most the model's positions) thereby bounds them."""
    return (max_len + 1) // 4


def limits_text() -> str:
    return (f"limits: {MAX_ROWS:,} rows, {MAX_FEATURES:,} features, {MAX_VALUES:,} values "
            "in all")


def _length(a) -> int | None:
    """Rows of an array-like; None for scalars and None (without calling numpy on ``a``)."""
    shape = getattr(a, "shape", None)
    if isinstance(shape, tuple):
        return int(shape[0]) if shape else None
    try:
        return len(a)
    except TypeError:
        return None


def check_target_range(y: np.ndarray) -> None:
    largest = float(np.max(np.abs(y)))
    if largest >= MAX_ABS_VALUE:  # y is encoded unscaled, as in training
        raise ValueError(
            f"y reaches {largest:.3g}; the model's float encoding stops near "
            f"{MAX_ABS_VALUE:.0e}: divide y by a power of ten first")


def check_weights(weight: np.ndarray) -> None:
    if np.any(~np.isfinite(weight)) or np.any(weight < 0):
        raise ValueError("sample_weight must be finite and non-negative")
    if np.count_nonzero(weight) < 2:
        raise ValueError(f"sample_weight is zero for {np.sum(weight == 0)} of {len(weight)} "
                         "samples: at least 2 samples need a non-zero weight")


# ---------------------------------------------------------------------------- names


def formula_names(columns: Sequence | None, n_features: int) -> tuple[list[str], dict]:
    """Variable names for formulas, and the renamed columns {column: name}.

    Without column names: ``x_0``, ``x_1``, ... (the reference's). A column name that is not
    a Python identifier, is a keyword, or means something else to sympy (``E``, ``I``, ``N``,
    ``S``, ``beta``, ``lambda``, ``sin``...) is mapped to one that is safe in every output:
    invalid characters become ``_``, a clash gets a trailing ``_``, and duplicates a suffix.
    """
    if columns is None:
        return [f"x_{i}" for i in range(n_features)], {}
    names, renamed, taken = [], {}, set()
    for column in columns:
        name = _safe_name(str(column))
        base, k = name, 2
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        names.append(name)
        if name != str(column):
            renamed[str(column)] = name
    return names, renamed


def _safe_name(text: str) -> str:
    name = "".join(c if _identifier_char(c) else "_" for c in text)
    if not name.isidentifier():  # empty, or starting with a digit (of any script)
        name = "x_" + name
    for _ in range(4):  # "E" -> "E_", "lambda" -> "lambda_": one step is enough for sympy
        if _is_plain_symbol(name):
            return name
        name += "_"
    return "x_" + re.sub(r"[^0-9A-Za-z_]", "_", text)  # always a plain symbol


def _identifier_char(c: str) -> bool:
    """Whether ``c`` may continue an identifier and survives the NFKC normalisation Python
    and sympy apply to names ("²" does not continue one; "ﬁ" would come back as "fi")."""
    return ("_" + c).isidentifier() and unicodedata.normalize("NFKC", c) == c


@functools.lru_cache(maxsize=4096)
def _is_plain_symbol(name: str) -> bool:
    """Whether ``name`` reads back as itself: a Python identifier that sympy parses to a
    Symbol of that name (so "E", "I", "beta", "sin", "lambda" are not)."""
    import sympy

    if not name.isidentifier() or keyword.iskeyword(name):
        return False
    try:
        value = sympy.sympify(name)
    except (sympy.SympifyError, SyntaxError, TypeError, ValueError, AttributeError):
        return False
    return isinstance(value, sympy.Symbol) and value.name == name


# ---------------------------------------------------------------------------- selection


def select_features(X: np.ndarray, y: np.ndarray, max_features: int, seed: int,
                    names: Sequence[str]) -> np.ndarray:
    """The columns the model sees: all when there are at most ``max_features``, else the
    ``max_features`` with the highest mutual information with y (which, unlike the
    reference's |Pearson r|, also sees dependences such as y = x**2 or cos(x)), with a
    warning naming the dropped ones. Returned in column order."""
    n_features = X.shape[1]
    if n_features <= max_features:
        return np.arange(n_features)
    from sklearn.feature_selection import mutual_info_regression

    rng = np.random.default_rng(seed)
    rows = rng.permutation(len(y))[:SELECTION_ROWS]
    scores = mutual_info_regression(X[rows], y[rows], random_state=seed % (2**32))
    keep = np.sort(np.argsort(-scores, kind="stable")[:max_features])
    dropped = [names[i] for i in range(n_features) if i not in set(keep)]
    warnings.warn(
        f"X has {n_features} features but the model reads at most {max_features}: keeping the "
        f"{max_features} with the highest mutual information with y; dropped: "
        f"{', '.join(dropped)}", UserWarning, stacklevel=4)
    return keep


def standardisation(X: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean and standard deviation of each column (1 where a column is constant).

    Columns are divided by their largest magnitude first, so that values near 1e300 do not
    overflow when squared.
    """
    magnitude = np.max(np.abs(X), axis=0)
    magnitude = np.where(magnitude > 0, magnitude, 1.0)
    unit = X / magnitude
    mean = np.average(unit, axis=0, weights=weight)
    std = np.sqrt(np.average((unit - mean) ** 2, axis=0, weights=weight))
    scale = np.where(std > 0, std * magnitude, 1.0)
    return mean * magnitude, scale


def fit_rows(n: int, rng: np.random.Generator) -> np.ndarray:
    """All rows, or a seeded sorted subsample of MAX_FIT_ROWS of them."""
    if n <= MAX_FIT_ROWS:
        return np.arange(n)
    return np.sort(rng.choice(n, MAX_FIT_ROWS, replace=False))


def prepare(X: np.ndarray, y: np.ndarray, weight: np.ndarray, names: list[str],
            max_features: int, seed: int) -> FitProblem:
    """A validated (X, y, weight) -> ``FitProblem``: positive-weight rows, selected features,
    standardisation and fit rows. ``seed`` fixes every random choice made here and later
    for this problem (bags)."""
    keep = weight > 0
    X, y, weight = X[keep], y[keep], weight[keep]
    selected = select_features(X, y, max_features, seed, names)
    mean, scale = standardisation(X[:, selected], weight)
    rng = np.random.default_rng(seed)
    return FitProblem(X=X, y=y, weight=weight, names=names, selected=selected, mean=mean,
                   scale=scale, fit_rows=fit_rows(len(y), rng), rng=rng,
                   max_features=max_features)
