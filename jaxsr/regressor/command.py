"""``jaxsr fit DATA --target COLUMN``: fit a formula to a table and print it.

DATA is a table whose first line names the columns (``table.py``: UTF-8, a byte-order mark
ignored, comma/semicolon/tab/whitespace separators sniffed, optionally compressed: .gz,
.bz2, .xz, .zip), or ``strogatz:NAME`` for a bundled Strogatz system (columns x, y, label).
Errors end the command with the statuses of ``jaxsr.errors`` (docs/errors.md).
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import sys
import warnings

import numpy as np

from jaxsr.errors import DATA, MODEL, USAGE, CommandError
from jaxsr.expr.tokens import DEFAULT_MAX_LEN
from jaxsr.regressor.table import DataError, read_table  # re-exported: the CLI's readers

__all__ = ["DataError", "add_arguments", "load_data", "read_table", "run", "split_target"]


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _seed(text: str) -> int:
    value = _int_at_least(0)(text)
    if value >= 2**32:  # numpy's RandomState takes seeds below 2**32
        raise argparse.ArgumentTypeError(f"must be below 2**32, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", metavar="DATA",
                        help="a .csv/.tsv table (.gz etc. too), or strogatz:NAME (bundled)")
    parser.add_argument("--target", required=True, metavar="COLUMN",
                        help="the column to explain; every other column is a feature")
    parser.add_argument("--model", default="default",
                        help="'default', a config name (tiny, small, paper: random weights) "
                             "or a weights directory")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--top", type=_int_at_least(0), default=5,
                        help="candidates to list (default 5)")
    parser.add_argument("--n-candidates", type=_int_at_least(1), default=100,
                        help="formulas sampled per bag (default 100)")
    parser.add_argument("--max-bags", type=_int_at_least(1), default=10,
                        help="bags at most, each of the size the model's weights record "
                             "(50 points for the default model)")
    parser.add_argument("--max-len", type=_int_at_least(1), default=DEFAULT_MAX_LEN,
                        metavar="TOKENS", help=f"longest formula in tokens (default "
                        f"{DEFAULT_MAX_LEN}; at most the model's positions)")
    parser.add_argument("--max-time", type=_seconds, default=None, help="seconds at most")
    parser.add_argument("--search", choices=("evolve", "sample"), default="evolve",
                        help="'evolve' (default): the model seeds an evolutionary search; "
                             "'sample': the paper's protocol (sample, refine, rank)")
    parser.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")


def load_data(spec: str, target: str):
    """(X DataFrame, y float64 array) from a table file; DataError naming the problem."""
    from jaxsr.regressor import inputs

    table = read_table(spec)
    try:
        X, y = split_target(table, target)
    except DataError as err:
        raise DataError(f"{spec}: {err}") from None
    try:
        inputs.check_size(*X.shape)
        inputs.check_target_range(y)
    except ValueError as err:
        raise DataError(f"{spec}: {err}") from None
    return X, y


def split_target(table, target: str):
    """(the other columns, the target column as float64); DataError naming the columns."""
    if target not in table.columns:
        columns = [str(c) for c in table.columns]
        close = [c for c in columns if c.casefold() == target.casefold()] or \
            difflib.get_close_matches(target, columns, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        header = " (the first line is read as the header)" if _numbers_only(columns) else ""
        raise DataError(f"no column {target!r} in the data{hint}; columns: "
                        f"{', '.join(columns)}{header}")
    y = table[target]
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    if not is_numeric_dtype(y.dtype) or is_bool_dtype(y.dtype):
        raise DataError(f"the target column {target!r} is not numeric (dtype {y.dtype})")
    X = table.drop(columns=[target])
    if X.shape[1] == 0:
        raise DataError(f"the data has no column besides the target {target!r}")
    return X, y.to_numpy(np.float64)


def _numbers_only(names: list[str]) -> bool:
    try:
        [float(name) for name in names]
    except ValueError:
        return False
    return True


def run(args: argparse.Namespace) -> int:
    """The ``jaxsr fit`` command; returns 0 or raises CommandError (its exit status: DATA
    for the table, MODEL for the weights, USAGE for options)."""
    from jaxsr.regressor import SymbolicTransformerRegressor

    try:
        X, y = load_data(args.data, args.target)
    except DataError as err:
        raise CommandError(str(err), DATA) from err
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _check_max_len(args.max_len, _load_model(args.model))
        estimator = SymbolicTransformerRegressor(
            args.model, n_candidates=args.n_candidates, max_number_bags=args.max_bags,
            max_len=args.max_len, max_time=args.max_time, search=args.search,
            random_state=args.seed)
        try:
            estimator.fit(X, y)
        except ValueError as err:  # the model loaded and the options are checked: the data
            raise CommandError(f"{args.data}: {err}", DATA) from err
    messages = list(dict.fromkeys(str(w.message) for w in caught))
    if args.json:
        print(json.dumps(summary(estimator, args, messages)))
    else:
        _print_warnings(caught)
        print_report(estimator, args)
    return 0


def _load_model(spec: str):
    """The model, loaded once per process (the estimator reuses it); MODEL status if not."""
    from jaxsr.regressor import models

    try:
        return models.resolve(spec)
    except (ValueError, TypeError, OSError) as err:  # weights format, checksum, shapes
        raise CommandError(f"cannot use --model {spec!r}: {err}", MODEL) from err


def _check_max_len(max_len: int, loaded) -> None:
    positions = loaded.model.config.max_positions
    if max_len > positions:
        raise CommandError(f"--max-len {max_len} exceeds the {positions} positions of the "
                           f"model {loaded.label}", USAGE)


def _print_warnings(caught) -> None:
    for message in dict.fromkeys(str(w.message) for w in caught):
        print(f"warning: {message}", file=sys.stderr)


def _fmt(value: float | None) -> str:
    return "nan" if value is None else f"{value:.6g}"


def simplified(estimator) -> str:
    """The selected formula as sympy folds it, constants to 6 digits (for reading only);
    a polynomial is shown expanded, the form it is usually read in."""
    import sympy

    expr = estimator.sympy()
    if expr.is_polynomial(*expr.free_symbols):
        expr = sympy.expand(expr)
    return str(sympy.N(expr, 6))


def summary(estimator, args, messages: list[str]) -> dict:
    """Everything ``--json`` prints."""
    return {
        "data": args.data, "target": args.target, "model": estimator.model_label_,
        "untrained": estimator.fit_info_["untrained"],
        "features": list(estimator.variable_names_),
        "best": {**estimator._rows()[estimator.best_index_], "simplified": simplified(estimator)},
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
    best = estimator._rows()[estimator.best_index_]
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
