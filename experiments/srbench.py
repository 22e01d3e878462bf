"""SRBench-style ground truth: 119 Feynman problems (regenerated) and 14 Strogatz systems.

Data and protocol: see ``problems.py`` (75/25 split, training capped at 10,000 rows, additive
noise on training targets only). Per problem: test R2, solved at R2 > 0.99 (the paper's
Figure 5) and R2 > 0.999 (SRBench's "accuracy solution"), symbolic solution (SRBench's check,
``jaxsr.metrics.check_symbolic_solution``), complexity and time. Problems are fitted in batches
with ``fit_many``, so a problem's time is its batch's wall time divided by the batch size.

    python experiments/srbench.py --model tiny --out results/srbench --quick
    python experiments/srbench.py --model path/to/weights --out results/srbench \\
        --noise 0 0.001 0.01 0.1 --trials 10 --problems 'feynman_*'

Writes ``srbench_results.csv`` (one row per problem, noise and seed), ``summary.csv``/``.md``
(per family and noise level) beside ``anchors.csv``/``.md`` (other methods' published
figures, docs/anchors.md 2.1 and 3), and ``provenance.json``.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `experiments` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd
import sympy

from experiments import common
from experiments.problems import (
    NOISE_LEVELS,
    PMLB_ROWS,
    GroundTruthProblem,
    all_problem_names,
    load_problems,
    select_names,
)
from jaxsr.metrics import check_symbolic_solution, complexity, r2_score

NAN = math.nan
# Published figures (docs/anchors.md): method, family, noise, R2>0.99, R2>0.999, symbolic %.
# TPSR (E2E + MCTS decoding): computed from its released per-problem CSVs (docs/anchors.md 3).
# SRBench v2.0: read from its ground-truth figures, about +-0.02 (docs/anchors.md 2.1).
ANCHORS = pd.DataFrame([
    ("TPSR (E2E + MCTS)", "feynman", 0.0, 0.950, 0.714, NAN),
    ("TPSR (E2E + MCTS)", "feynman", 0.001, 0.941, 0.697, NAN),
    ("TPSR (E2E + MCTS)", "feynman", 0.01, 0.941, 0.681, NAN),
    ("TPSR (E2E + MCTS)", "feynman", 0.1, 0.849, 0.395, NAN),
    ("TPSR (E2E + MCTS)", "strogatz", 0.0, 0.786, NAN, NAN),
    ("TPSR (E2E + MCTS)", "strogatz", 0.001, 0.786, NAN, NAN),
    ("TPSR (E2E + MCTS)", "strogatz", 0.01, 0.714, NAN, NAN),
    ("TPSR (E2E + MCTS)", "strogatz", 0.1, 0.500, NAN, NAN),
    ("Operon (SRBench v2.0)", "feynman", 0.0, NAN, 0.86, 16.5),
    ("Operon (SRBench v2.0)", "feynman", 0.1, NAN, 0.82, NAN),
    ("AIFeynman (SRBench v2.0)", "feynman", 0.0, NAN, 0.78, 55.8),
    ("AIFeynman (SRBench v2.0)", "feynman", 0.1, NAN, 0.10, NAN),
    ("SBP-GP (SRBench v2.0)", "feynman", 0.0, NAN, 0.74, 12.7),
    ("SBP-GP (SRBench v2.0)", "feynman", 0.1, NAN, 0.60, NAN),
    ("GP-GOMEA (SRBench v2.0)", "feynman", 0.0, NAN, 0.71, 26.8),
    ("GP-GOMEA (SRBench v2.0)", "feynman", 0.1, NAN, 0.72, NAN),
    ("AFP_FE (SRBench v2.0)", "feynman", 0.0, NAN, 0.59, 27.0),
    ("AFP_FE (SRBench v2.0)", "feynman", 0.1, NAN, 0.53, NAN),
    ("DSR (SRBench v2.0)", "feynman", 0.0, NAN, 0.25, 19.7),
    ("DSR (SRBench v2.0)", "feynman", 0.1, NAN, 0.26, NAN),
    ("Operon (SRBench v2.0)", "strogatz", 0.0, NAN, 0.93, 11.0),
    ("SBP-GP (SRBench v2.0)", "strogatz", 0.0, NAN, 0.79, 11.6),
    ("GP-GOMEA (SRBench v2.0)", "strogatz", 0.0, NAN, 0.71, 29.5),
    ("AIFeynman (SRBench v2.0)", "strogatz", 0.0, NAN, 0.36, 27.0),
    ("DSR (SRBench v2.0)", "strogatz", 0.0, NAN, 0.14, 19.6),
], columns=["method", "family", "noise", "R2>0.99", "R2>0.999", "symbolic %"])
ANCHOR_NOTE = ("E2E itself: the paper gives no numbers in its text; its Figure 5 ranks E2E 4th "
               "on Feynman accuracy (R2 > 0.99), behind Operon and SBP-GP (docs/anchors.md 1.4). "
               "SRBench 2025 measured E2E at median R2 about 0.30 on 12 black-box sets.")
QUICK_PROBLEMS = ("feynman_I_6_2a", "feynman_I_12_1", "strogatz_lv1")


@dataclasses.dataclass(frozen=True)
class Settings:
    """What a ground-truth run does; ``quick()`` is the CI-sized version."""

    # The authors' evaluate_pmlb: 10 bags of 200 points, 10 candidates (docs/reference.md 6.3).
    fit: common.FitSettings = dataclasses.field(
        default_factory=lambda: common.FitSettings(max_number_bags=10, n_candidates=10))
    n_rows: int = PMLB_ROWS           # Feynman rows generated per problem (PMLB: 100,000)
    batch_size: int = 32              # problems per fit_many call
    symbolic_timeout: float = 10.0    # seconds of sympy per problem at most
    warm_up: bool = True              # fit the first batch once untimed (compilation)

    @classmethod
    def quick(cls) -> Settings:
        return cls(fit=common.FitSettings(max_number_bags=1, n_candidates=4, max_iter=10),
                   n_rows=400, batch_size=8, symbolic_timeout=5.0, warm_up=False)


# ---------------------------------------------------------------------------- per problem


def evaluate_problem(problem: GroundTruthProblem, est, seconds: float,
                     symbolic_timeout: float) -> dict:
    """One result row: test R2, solved flags, symbolic check, complexity (nodes of the formula
    as returned, SRBench's model size; and of its sympy simplification where the symbolic
    check made one), formula, time."""
    r2 = r2_score(problem.y_test, est.predict(problem.X_test))
    # Fitted on arrays, the formula is over x_0, x_1, ... like problem.truth.
    check = check_symbolic_solution(est.sympy(), problem.truth,
                                    r2=r2 if math.isfinite(r2) else -math.inf,
                                    timeout=symbolic_timeout)
    return {
        "problem": problem.name, "family": problem.family, "noise": problem.noise,
        "seed": problem.seed, "n_train": len(problem.y_train), "n_test": len(problem.y_test),
        "r2_test": r2, "solved_0.99": bool(r2 > 0.99), "solved_0.999": bool(r2 > 0.999),
        "symbolic_solution": check.solution, "symbolic_reason": check.reason,
        "complexity": est.expressions_[est.best_index_].complexity(),
        "simplified_complexity": (complexity(sympy.sympify(check.simplified))
                                  if check.simplified else math.nan),
        "seconds": seconds,
        "model": est.best_, "truth": str(problem.truth), "fallback": est.fallback_ is not None,
        "model_label": est.model_label_,
    }


def run(problems: list[GroundTruthProblem], model: str, settings: Settings, seed: int, *,
        warm_up: bool = False, log=print) -> pd.DataFrame:
    """Fits and scores the problems, ``batch_size`` per ``fit_many`` call. With ``warm_up``
    the first batch is fitted once untimed first, so that its compilation is not counted in
    the time per problem."""
    rows = []
    for start in range(0, len(problems), settings.batch_size):
        batch = problems[start:start + settings.batch_size]
        regressor = common.make_regressor(model, settings.fit, seed=seed)
        if warm_up and start == 0:
            common.fit_many(regressor, [(p.X_train, p.y_train) for p in batch])
        fitted, seconds = common.fit_many(regressor, [(p.X_train, p.y_train) for p in batch])
        for problem, est in zip(batch, fitted):
            rows.append(evaluate_problem(problem, est, seconds / len(batch),
                                         settings.symbolic_timeout))
        log(f"  {start + len(batch)}/{len(problems)} problems ({seconds:.1f} s for this batch)")
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- tables


def summary(results: pd.DataFrame) -> pd.DataFrame:
    """Per family and noise level: fractions solved, symbolic %, complexity, time. A problem
    without a finite prediction counts as R2 0 and unsolved; an undecided symbolic check as
    not a solution (as SRBench scores its timeouts)."""
    frame = results.assign(
        r2_zero=common.failures_as_zero(results["r2_test"]).clip(min=0.0),
        symbolic=results["symbolic_solution"].fillna(False).astype(bool),
        undecided=results["symbolic_solution"].isna())
    groups = frame.groupby(["family", "noise"], sort=False)
    return pd.DataFrame({
        "runs": groups.size(),
        "mean R2 (clipped)": groups["r2_zero"].mean(),
        "R2>0.99": groups["solved_0.99"].mean(),
        "R2>0.999": groups["solved_0.999"].mean(),
        "symbolic %": 100 * groups["symbolic"].mean(),
        "symbolic undecided": groups["undecided"].sum(),
        "median complexity": groups["complexity"].median(),
        "mean seconds": groups["seconds"].mean(),
    }).reset_index()


def anchors_for(results: pd.DataFrame) -> pd.DataFrame:
    """The published rows for the families and noise levels of this run."""
    keys = set(zip(results["family"], results["noise"]))
    keep = [(f, n) in keys for f, n in zip(ANCHORS["family"], ANCHORS["noise"])]
    return ANCHORS[keep].sort_values(["family", "noise"], kind="stable")


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__.splitlines()[0], data=True)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0],
                        help=f"target noise levels (SRBench: {' '.join(map(str, NOISE_LEVELS))})")
    parser.add_argument("--trials", type=int, default=1,
                        help="seeds per problem and noise level: --seed .. --seed + trials - 1 "
                             "(SRBench: 10)")
    parser.add_argument("--problems", nargs="+", default=None, metavar="NAME_OR_PATTERN",
                        help="only these problems: PMLB names or shell patterns, e.g. "
                             "'feynman_I_*' strogatz_lv1 (default: all 133; 3 with --quick)")
    args = parser.parse_args(argv)
    settings = common.experiment_settings(Settings, args)
    patterns = args.problems or (list(QUICK_PROBLEMS) if args.quick else None)
    try:  # before any work: the data are there and every pattern names a problem
        select_names(all_problem_names(args.data), patterns)
    except (common.DataNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out, clock = common.start(args)

    results = []
    for noise in args.noise:
        for seed in range(args.seed, args.seed + args.trials):
            problems = load_problems(args.data, seed=seed, noise=noise, patterns=patterns,
                                     n_rows=settings.n_rows)
            print(f"noise {noise}, seed {seed}: {len(problems)} problems, model {args.model}")
            results.append(run(problems, args.model, settings, seed,
                               warm_up=settings.warm_up and not results))
    results = pd.concat(results, ignore_index=True)
    results.to_csv(out / "srbench_results.csv", index=False)

    seeds = f"{args.seed}..{args.seed + args.trials - 1}"
    note = (f"Model: {common.model_label(args.model)}; {settings.fit}. Seeds {seeds}. Mean "
            f"seconds: batch wall time / batch size ({settings.batch_size} problems per "
            f"fit_many call){', compilation excluded' if settings.warm_up else ''}.")
    text = common.write_table(summary(results), out, "summary",
                              title="jaxsr on SRBench ground-truth problems", note=note)
    text += "\n" + common.write_table(anchors_for(results), out, "anchors",
                                      title="Published figures for comparison", note=ANCHOR_NOTE)
    print(text)
    common.write_provenance(out, "srbench", args, dataclasses.asdict(settings),
                            wall_seconds=clock.seconds,
                            extra={"problems": sorted(results["problem"].unique())})
    print(f"wrote {out} in {clock.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
