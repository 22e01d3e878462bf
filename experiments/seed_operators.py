"""Do the model's seeds know which operators a problem uses?

The evolutionary search (``search="evolve"``) starts from the model's samples. If the model
reads a problem well, its samples favour the operators of the true formula even when no
sample is right, and that knowledge would be worth passing to the search (as operator
weights for its random trees and mutations). This measures it on SRBench's ground-truth
problems that the model can read (no more variables than it was trained on): the seeds are
sampled exactly as a fit samples them (``evolution.ModelSeeder``: the training rows, the
regressor's bags and seed settings), and for every problem whose true formula holds one of
the search's transcendental unary operators (sqrt, exp, log, sin, cos), the share of the
seeds' unary nodes that are among those operators is compared with the share a uniform draw
from the search's unary operators gives. (pow2 and inv are left out of the truth's set:
squares and quotients are in almost every formula, written as powers or as division.)

    python experiments/seed_operators.py --out results/seed_operators
    python experiments/seed_operators.py --out /tmp/so --quick    # 3 problems, as in CI

``--fit FIELD=VALUE`` changes the regressor's sampling settings (e.g. ``temperature=0.5``).

Writes ``seed_operators.csv`` (one row per problem), ``summary.md`` and ``provenance.json``.
"""

from __future__ import annotations

import collections
import dataclasses
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``experiments`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd
import sympy

from experiments import common
from experiments.problems import load_problems
from jaxsr import SymbolicTransformerRegressor
from jaxsr.expr import operators
from jaxsr.regressor import evolution, models, pipeline
from jaxsr.search.engine import DEFAULT_OPERATORS

# The search's unary operators whose presence in a true formula the seeds could reveal.
TELLING = ("sqrt", "exp", "log", "sin", "cos")
ROWS = 4000        # rows generated per Feynman problem, as in the peer runs
QUICK_PROBLEMS = ("feynman_I_26_2", "feynman_II_15_4", "strogatz_lv1")


def truth_unaries(expr: sympy.Expr) -> set[str]:
    """The ``TELLING`` operators a sympy formula uses (a power of +-1/2 counts as sqrt)."""
    found = set()
    functions = {sympy.sin: "sin", sympy.cos: "cos", sympy.exp: "exp", sympy.log: "log"}
    for node in sympy.preorder_traversal(expr):
        for kind, name in functions.items():
            if isinstance(node, kind):
                found.add(name)
        if isinstance(node, sympy.Pow) and abs(node.exp) == sympy.Rational(1, 2):
            found.add("sqrt")
    return found


def unary_counts(exprs) -> collections.Counter:
    """Unary operator nodes over ``exprs`` (``jaxsr.expr.Expr`` trees), by name."""
    counts = collections.Counter()
    stack = list(exprs)
    while stack:
        node = stack.pop()
        if len(node.children) == 1:
            counts[node.token] += 1
        stack.extend(node.children)
    return counts


def search_unaries() -> tuple[str, ...]:
    return tuple(n for n in DEFAULT_OPERATORS if operators.BY_NAME[n].arity == 1)


def measure(problem, loaded: models.LoadedModel, regressor, seed: int) -> dict | None:
    """One problem's row (None when the model cannot read it)."""
    settings = regressor._settings(loaded, seed)
    fit = regressor._prepare(problem.X_train, problem.y_train, None, loaded.max_features, seed)
    training = dataclasses.replace(fit, fit_rows=evolution.Rows.split(fit).train)
    if not evolution.readable([training], loaded):
        return None
    seeds = evolution.ModelSeeder([training], loaded, settings, pipeline.Clock(None, 0))([0])
    # Each seed appears twice (in the user's units, then as the model wrote it): count the
    # written half, the model's own operators.
    written = seeds[0][len(seeds[0]) // 2:]
    counts = unary_counts(written)
    alphabet = search_unaries()
    in_alphabet = sum(counts[n] for n in alphabet)
    truth = truth_unaries(problem.truth)
    return {
        "problem": problem.name,
        "n_variables": problem.X_train.shape[1],
        "truth_unaries": " ".join(sorted(truth)),
        "seeds": len(written),
        "unary_nodes": in_alphabet,
        "seed_share": (sum(counts[n] for n in truth) / in_alphabet) if in_alphabet else 0.0,
        "uniform_share": len(truth) / len(alphabet),
        "top_unaries": " ".join(f"{n}:{c}" for n, c in counts.most_common(4)),
    }


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    telling = rows[rows.truth_unaries != ""]
    return pd.DataFrame([{
        "problems read": len(rows),
        "with sqrt/exp/log/sin/cos": len(telling),
        "mean seed share": telling.seed_share.mean(),
        "mean uniform share": telling.uniform_share.mean(),
        "seeds above uniform": int((telling.seed_share > telling.uniform_share).sum()),
        "seeds with none of them": int((telling.seed_share == 0).sum()),
    }])


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__.split("\n")[0], data=True)
    parser.add_argument("--problems", nargs="+", default=None, metavar="PATTERN",
                        help="problem names or shell patterns (default: all 133; those the "
                             "model can read are measured)")
    args = parser.parse_args(argv)
    out, clock = common.start(args)
    patterns = list(QUICK_PROBLEMS) if args.quick else args.problems
    loaded = models.resolve(args.model)
    # The regressor's own defaults (a fit's seeds), with any --fit overrides.
    overrides = common.assignments("--fit", args.fit, common.FitSettings)
    regressor = SymbolicTransformerRegressor(
        args.model, random_state=args.seed, **{**overrides, "search": "evolve"})
    rows = []
    for problem in load_problems(args.data, seed=args.seed, patterns=patterns, n_rows=ROWS):
        row = measure(problem, loaded, regressor, args.seed)
        if row is not None:
            rows.append(row)
            print(f"{row['problem']}: truth {row['truth_unaries'] or '-'}, seed share "
                  f"{row['seed_share']:.2f} (uniform {row['uniform_share']:.2f})", flush=True)
    if not rows:
        raise SystemExit("no selected problem has few enough variables for the model")
    frame = pd.DataFrame(rows)
    common.write_csv(frame, out / "seed_operators.csv")
    table = summary(frame)
    title = (f"Unary operators of the model's seeds ({common.model_label(args.model)}, seed "
             f"{args.seed}); shares of the seeds' unary nodes ({', '.join(search_unaries())}) "
             f"that are the truth's {'/'.join(TELLING)} operators")
    common.write_table(table, out, "summary", title=title)
    print(common.markdown_table(table))
    common.write_provenance(out, "seed_operators", args,
                            {"rows": ROWS, "telling": TELLING, "alphabet": search_unaries()},
                            wall_seconds=clock.seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
