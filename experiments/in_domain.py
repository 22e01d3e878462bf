"""In-domain evaluation: the paper's Table 2 (docs/reference.md 6.2, docs/anchors.md 1.1).

A seeded validation set from jaxsr's generator; each function is fitted with N = 50, 100, 150
and 200 points and scored on 200 fresh test points from the same input distribution. Columns:
R2 (the mean of R2 clipped at 0), Acc_0.1, Acc_0.01, Acc_0.001; rows: no refinement,
refinement from the model's constants, refinement from random constants.

    python experiments/in_domain.py --model tiny --out results/in_domain --quick
    python experiments/in_domain.py --model path/to/weights --out results/in_domain

Writes ``in_domain_results.csv`` (one row per problem, N and variant), ``table2.csv``/``.md``
(averaged over N, beside the paper's figures), ``table2_by_points.csv``/``.md`` and
``provenance.json``.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `experiments` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd

from experiments import common
from experiments.evaluation import (
    MODEL_INIT,
    NO_REFINEMENT,
    RANDOM_INIT,
    Task,
    fit_subset,
    run_tasks,
    sample_labels,
    summarise,
    validation_samples,
)
from jaxsr.data import GeneratorConfig

POINT_COUNTS = (50, 100, 150, 200)
# docs/anchors.md 1.1: Table 2 of the paper (metrics over its 10,000 validation examples).
PAPER_TABLE2 = pd.DataFrame(
    [("Skeleton + BFGS", 0.43, 0.40, 0.27, 0.17),
     ("E2E no BFGS", 0.62, 0.51, 0.27, 0.09),
     ("E2E + BFGS random init", 0.44, 0.44, 0.30, 0.19),
     ("E2E + BFGS model init", 0.68, 0.61, 0.44, 0.29)],
    columns=["row", "R2", "Acc_0.1", "Acc_0.01", "Acc_0.001"])
# Our rows and the paper's row each one reproduces.
PAPER_ROW = {NO_REFINEMENT: "E2E no BFGS", MODEL_INIT: "E2E + BFGS model init",
             RANDOM_INIT: "E2E + BFGS random init"}
COLUMNS = {"r2_zero": "R2", "acc_0.1": "Acc_0.1", "acc_0.01": "Acc_0.01",
           "acc_0.001": "Acc_0.001"}


@dataclasses.dataclass(frozen=True)
class Settings:
    """What an in-domain run does; ``quick()`` is the CI-sized version."""

    n_problems: int = 10_000          # the paper's validation set size (docs/anchors.md 1.1)
    point_counts: tuple[int, ...] = POINT_COUNTS
    fit: common.FitSettings = dataclasses.field(
        default_factory=lambda: common.FitSettings(max_number_bags=1, n_candidates=10))
    batch_size: int = 256             # fits per fit_many call
    # GeneratorConfig fields that narrow the validation set (e.g. to a model's training
    # ranges); empty: the reference's full ranges, as in the paper.
    generator: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def quick(cls) -> Settings:
        return cls(n_problems=3,
                   fit=common.FitSettings(max_number_bags=1, n_candidates=4, max_iter=10))


def build_tasks(seed: int, settings: Settings) -> list[Task]:
    tasks = []
    for sample in validation_samples(seed, settings.n_problems,
                                     generator_overrides=settings.generator):
        test = sample.prediction[1.0]
        for n_points in settings.point_counts:
            x, y = fit_subset(sample, n_points, seed)
            tasks.append(Task(x, y, {"sigma=1": test},
                              {**sample_labels(sample), "n_points": n_points}))
    return tasks


def table2(results: pd.DataFrame) -> pd.DataFrame:
    """Our three rows (averaged over problems and N) with the paper's row beside each."""
    ours = summarise(results, ["variant"]).set_index("variant")
    rows = []
    for variant, paper_row in PAPER_ROW.items():
        if variant not in ours.index:
            continue
        rows.append({"row": variant, "source": "jaxsr",
                     **{COLUMNS[m]: ours.at[variant, m] for m in COLUMNS},
                     "fits": int(ours.at[variant, "fits"])})
        paper = PAPER_TABLE2.set_index("row").loc[paper_row]
        rows.append({"row": paper_row, "source": "paper (Table 2)", **paper.to_dict(),
                     "fits": math.nan})
    skeleton = PAPER_TABLE2.iloc[0]
    rows.append({"row": skeleton["row"], "source": "paper (Table 2)",
                 **skeleton.drop("row").to_dict(), "fits": math.nan})
    return pd.DataFrame(rows).astype({"fits": "Int64"})


def table_by_points(results: pd.DataFrame) -> pd.DataFrame:
    table = summarise(results, ["variant", "n_points"])
    return table.rename(columns={**COLUMNS, "n_points": "N"})


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__.splitlines()[0])
    parser.add_argument("--n-problems", type=int, default=None,
                        help="validation functions (default 10,000 as in the paper; 3 with "
                             "--quick)")
    parser.add_argument("--generator", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="GeneratorConfig fields narrowing the validation set, e.g. "
                             "max_input_dimension=3 (default: the reference's ranges)")
    args = parser.parse_args(argv)
    settings = common.experiment_settings(Settings, args)
    if args.n_problems is not None:
        settings = dataclasses.replace(settings, n_problems=args.n_problems)
    if args.generator:
        settings = dataclasses.replace(
            settings, generator=common.assignments("--generator", args.generator, GeneratorConfig))
    out, clock = common.start(args)

    print(f"in-domain evaluation: {settings.n_problems} functions x N in "
          f"{settings.point_counts}, model {args.model}")
    tasks = build_tasks(args.seed, settings)
    results = run_tasks(tasks, args.model, settings.fit, seed=args.seed,
                        batch_size=settings.batch_size)
    results.to_csv(out / "in_domain_results.csv", index=False)

    label = common.model_label(args.model)
    note = (f"{settings.n_problems} validation functions x N in {settings.point_counts}, 200 "
            f"test points each; R2 is the mean of R2 clipped at 0, a failed fit counting 0. "
            f"Model: {label}. Paper: docs/anchors.md 1.1 (its 10,000 validation examples, the "
            f"released 86M-parameter model).")
    text = common.write_table(table2(results), out, "table2",
                              title="In-domain accuracy (paper Table 2 protocol)", note=note)
    text += "\n" + common.write_table(table_by_points(results), out, "table2_by_points",
                                      title="By number of fit points N")
    print(text)
    common.write_provenance(out, "in_domain", args, dataclasses.asdict(settings),
                            wall_seconds=clock.seconds)
    print(f"wrote {out} in {clock.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
