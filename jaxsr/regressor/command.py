"""``jaxsr fit DATA --target COLUMN``: fit a formula to a table and print it.

DATA is a .csv, .tsv (or .tab) file, optionally compressed (.gz, .bz2, .xz, .zip), any
other extension read with a sniffed separator, or ``strogatz:NAME`` for a bundled Strogatz
system (columns x, y, label).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

COMPRESSIONS = (".gz", ".bz2", ".xz", ".zip", ".zst")
SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}


class DataError(ValueError):
    """The data file cannot be used; the message says why."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", metavar="DATA",
                        help="a .csv/.tsv table (.gz etc. too), or strogatz:NAME (bundled)")
    parser.add_argument("--target", required=True, metavar="COLUMN",
                        help="the column to explain; every other column is a feature")
    parser.add_argument("--model", default="default",
                        help="'default', a config name (tiny, small, paper: random weights) "
                             "or a weights directory")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--top", type=int, default=5, help="candidates to list (default 5)")
    parser.add_argument("--n-candidates", type=int, default=100,
                        help="formulas sampled per bag (default 100)")
    parser.add_argument("--max-bags", type=int, default=10,
                        help="bags at most, each of the size the model's weights record "
                             "(50 points for the default model)")
    parser.add_argument("--max-time", type=float, default=None, help="seconds at most")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def read_table(spec: str):
    """A pandas DataFrame from a file path or ``strogatz:NAME``; DataError naming the problem."""
    import pandas as pd

    if spec.startswith("strogatz:"):
        return _bundled_strogatz(spec.split(":", 1)[1])
    path = Path(spec)
    if not path.exists():
        raise DataError(f"no such file: {spec}")
    if path.is_dir():
        raise DataError(f"{spec} is a directory, not a data file")
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
    sep = SEPARATORS.get(suffixes[-1] if suffixes else "")
    try:
        table = pd.read_csv(path, sep=sep, engine="c" if sep else "python")
    except pd.errors.EmptyDataError:
        raise DataError(f"{spec} is empty") from None
    except (OSError, EOFError, UnicodeDecodeError, pd.errors.ParserError, ValueError) as err:
        raise DataError(f"cannot read {spec} as a table: {err}") from None
    if table.shape[0] == 0:
        raise DataError(f"{spec} has a header but no rows")
    return table


def _bundled_strogatz(name: str):
    import pandas as pd

    from jaxsr import datasets

    problem = datasets.strogatz(name)  # ValueError naming the known systems
    table = pd.DataFrame(problem.X, columns=list(problem.feature_names))
    table["label"] = problem.y
    return table


def split_target(table, target: str):
    if target not in table.columns:
        raise DataError(f"no column {target!r} in the data; columns: "
                        f"{', '.join(map(str, table.columns))}")
    y = table[target]
    if not np.issubdtype(y.dtype, np.number):
        raise DataError(f"the target column {target!r} is not numeric (dtype {y.dtype})")
    X = table.drop(columns=[target])
    if X.shape[1] == 0:
        raise DataError(f"the data has no column besides the target {target!r}")
    return X, y.to_numpy(np.float64)


def run(args: argparse.Namespace) -> int:
    """The ``jaxsr fit`` command; returns the exit status."""
    from jaxsr.regressor import SymbolicTransformerRegressor

    try:
        X, y = split_target(read_table(args.data), args.target)
    except (DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    estimator = SymbolicTransformerRegressor(
        args.model, n_candidates=args.n_candidates, max_number_bags=args.max_bags,
        max_time=args.max_time, random_state=args.seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            estimator.fit(X, y)
        except (ValueError, OSError) as err:  # bad data, unreadable weights
            _print_warnings(caught)
            print(f"error: {err}", file=sys.stderr)
            return 1
    messages = list(dict.fromkeys(str(w.message) for w in caught))
    if args.json:
        print(json.dumps(summary(estimator, args, messages)))
    else:
        _print_warnings(caught)
        print_report(estimator, args)
    return 0


def _print_warnings(caught) -> None:
    for message in dict.fromkeys(str(w.message) for w in caught):
        print(f"warning: {message}", file=sys.stderr)


def _fmt(value: float | None) -> str:
    return "nan" if value is None else f"{value:.6g}"


def simplified(estimator) -> str:
    """The selected formula as sympy folds it, constants to 6 digits (for reading only)."""
    import sympy

    return str(sympy.N(estimator.sympy(), 6))


def summary(estimator, args, messages: list[str]) -> dict:
    """Everything ``--json`` prints."""
    return {
        "data": args.data, "target": args.target, "model": estimator.model_label_,
        "untrained": estimator.fit_info_["untrained"],
        "features": list(estimator.variable_names_),
        "best": {**estimator._rows(1)[0], "simplified": simplified(estimator)},
        "candidates": estimator._rows(args.top),
        "fallback": estimator.fallback_,
        "fit": {k: v for k, v in estimator.fit_info_.items() if k not in ("model", "untrained")},
        "stopped_early": estimator.stopped_early_,
        "seconds": estimator.timings_,
        "warnings": messages,
    }


def print_report(estimator, args) -> None:
    info = estimator.fit_info_
    print(f"model: {estimator.model_label_}")
    if info["untrained"]:
        print("  (untrained: its formulas are random; see the fallback below)")
    print(f"data: {args.data}, {info['rows']} rows, target {args.target!r}, features "
          f"{', '.join(estimator.variable_names_)}")
    best = estimator._rows(1)[0]
    print(f"best formula: {best['formula']}")
    print(f"  simplified (sympy, 6 digits): {simplified(estimator)}")
    print(f"R2 = {_fmt(best['r2'])}, MSE = {_fmt(best['mse'])}, complexity {best['complexity']} "
          f"({best['source']}{', refined' if best['refined'] else ''})")
    if estimator.fallback_:
        print(f"fallback: {estimator.fallback_}")
    print(f"candidates: {info['sampled']} sampled from {info['bags']} bag(s), {info['valid']} "
          f"valid, {info['unique']} unique, {info['refined']} refined")
    print(f"top {min(args.top, len(estimator.expressions_))} (constants to 6 digits):")
    print(f"  {'rank':>4} {'R2':>12} {'complexity':>10}  formula")
    for row in estimator._rows(args.top, precision=6):
        print(f"  {row['rank']:>4} {_fmt(row['r2']):>12} {row['complexity']:>10}  "
              f"{row['formula']}")
    timings = ", ".join(f"{k} {v:.2f}" for k, v in estimator.timings_.items())
    print(f"seconds: {timings}")
