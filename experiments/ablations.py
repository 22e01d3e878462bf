"""Ablations: the paper's Figure 4 panels and two it lacks (candidates refined, decoding).

On the in-domain validation set (see ``evaluation.py``), accuracy (Acc_0.1, as in the paper's
figure; R2 and the other taus are in the CSVs) against:

- ``unary_operators``, ``binary_operators``, ``input_dimension``: the same fits (N = 200),
  grouped by the true function's number of unary operators, binary operators (of the skeleton)
  and input dimension;
- ``points``: the number of fit points N;
- ``extrapolation``: the same fits scored on test points scaled by sigma = 1 .. 32;
- ``noise``: multiplicative noise on the fit targets, y (1 + eps xi) with xi ~ N(0, 1);
- ``candidates``: accuracy and time per problem against the number of candidates decoded and
  refined (one bag of ``n_candidates`` samples, every unique one refined), 10 to 10,000;
- ``decoding``: accuracy and time for greedy, beam search and sampling.

The last two run on the first ``timed_problems`` functions, each configuration twice: the
second, timed pass reuses the compiled code, so time per problem excludes compilation.

Each panel writes ``<panel>.csv`` and ``<panel>.png``; ``ablations.md`` holds every table, and
``provenance.json`` the command, settings, model and versions.

    python experiments/ablations.py --model tiny --out results/ablations --quick
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `experiments` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from experiments import common
from experiments.evaluation import (
    MODEL_INIT,
    NO_REFINEMENT,
    VARIANTS,
    Task,
    fit_subset,
    run_tasks,
    sample_labels,
    summarise,
    validation_samples,
)

SIGMAS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
# (x-axis label, column of the results that is the x value) of each panel.
PANELS = {
    "unary_operators": ("number of unary operators", "unary_ops"),
    "binary_operators": ("number of binary operators", "binary_ops"),
    "input_dimension": ("input dimension", "dimension"),
    "points": ("number of fit points N", "n_points"),
    "extrapolation": ("extrapolation scale sigma", "sigma"),
    "noise": ("multiplicative noise eps", "noise"),
    "candidates": ("candidates decoded and refined", "n_candidates"),
    "decoding": ("decoding strategy", "decoding"),
}
PLOTTED_METRIC = "acc_0.1"
TIMED_VARIANTS = (NO_REFINEMENT, MODEL_INIT)


@dataclasses.dataclass(frozen=True)
class Settings:
    """What an ablation run does; ``quick()`` is the CI-sized version."""

    n_problems: int = 1000
    fit: common.FitSettings = dataclasses.field(
        default_factory=lambda: common.FitSettings(max_number_bags=1, n_candidates=10))
    point_counts: tuple[int, ...] = (20, 50, 100, 150, 200)
    noise_levels: tuple[float, ...] = (0.0, 0.01, 0.03, 0.1)
    candidate_counts: tuple[int, ...] = (10, 100, 1000, 10_000)
    decodings: tuple[str, ...] = ("greedy", "beam", "sampling")
    timed_problems: int = 100         # problems of the candidates and decoding panels
    batch_size: int = 256

    @classmethod
    def quick(cls) -> Settings:
        return cls(n_problems=2, point_counts=(50, 200), noise_levels=(0.0, 0.1),
                   candidate_counts=(2, 8), decodings=("greedy", "beam", "sampling"),
                   fit=common.FitSettings(max_number_bags=1, n_candidates=2, max_iter=10))


# ---------------------------------------------------------------------------- tasks


def with_noise(y: np.ndarray, eps: float, rng: np.random.Generator) -> np.ndarray:
    """y (1 + eps xi), xi ~ N(0, 1): the paper's multiplicative noise (docs/anchors.md 1.3)."""
    return y * (1.0 + eps * rng.standard_normal(len(y)))


def make_task(sample, seed: int, *, n_points: int = 200, noise: float = 0.0,
              sigmas=(1.0,)) -> Task:
    x, y = fit_subset(sample, n_points, seed)
    if noise:
        y = with_noise(y, noise, np.random.default_rng([seed, sample.index]))
    tests = {f"sigma={sigma:g}": sample.prediction[sigma] for sigma in sigmas}
    return Task(x, y, tests, {**sample_labels(sample), "n_points": n_points, "noise": noise})


def _sigma(test_name: pd.Series) -> pd.Series:
    return test_name.str.removeprefix("sigma=").astype(float)


# ---------------------------------------------------------------------------- panels


def run_panels(samples, model: str, settings: Settings, seed: int, log=print) -> dict:
    """Every panel's table: {panel: DataFrame with columns variant, x, metrics, problems,
    seconds_per_problem}."""
    run = lambda tasks, fit=settings.fit, variants=VARIANTS: run_tasks(
        tasks, model, fit, seed=seed, variants=variants, batch_size=settings.batch_size, log=log)

    log("base fits: N = 200, every sigma")
    base = run([make_task(s, seed, sigmas=SIGMAS) for s in samples])
    base = base.assign(sigma=_sigma(base["test"]))
    in_domain = base[base["sigma"] == 1.0]
    panels = {
        "unary_operators": _panel(in_domain, "unary_ops"),
        "binary_operators": _panel(in_domain, "binary_ops"),
        "input_dimension": _panel(in_domain, "dimension"),
        "extrapolation": _panel(base, "sigma"),
    }

    log("points")
    extra = [make_task(s, seed, n_points=n) for n in settings.point_counts if n != 200
             for s in samples]
    panels["points"] = _panel(pd.concat([in_domain, run(extra)]), "n_points")

    log("noise")
    extra = [make_task(s, seed, noise=eps) for eps in settings.noise_levels if eps
             for s in samples]
    panels["noise"] = _panel(pd.concat([in_domain, run(extra)]), "noise")

    # The two panels the paper lacks: the model's own variants on fewer problems, timed on a
    # second pass so that compilation (once per new shape) is not counted.
    tasks = [make_task(s, seed) for s in samples[: settings.timed_problems]]

    def timed(fit: common.FitSettings) -> pd.DataFrame:
        run(tasks, fit, TIMED_VARIANTS)  # warm-up: compiles this configuration
        return run(tasks, fit, TIMED_VARIANTS)

    log("candidates")
    panels["candidates"] = _panel(pd.concat([
        timed(settings.fit.replace(n_candidates=k)).assign(n_candidates=k)
        for k in settings.candidate_counts]), "n_candidates")
    log("decoding")
    panels["decoding"] = _panel(pd.concat([
        timed(settings.fit.replace(decoding=d)).assign(decoding=d)
        for d in settings.decodings]), "decoding")
    return panels


def _panel(results: pd.DataFrame, column: str) -> pd.DataFrame:
    table = summarise(results, ["variant", column])
    seconds = results.groupby(["variant", column], sort=False)["seconds"].mean().to_numpy()
    return table.assign(seconds_per_problem=seconds).rename(columns={column: "x"})


# ---------------------------------------------------------------------------- output


def plot_panel(name: str, table: pd.DataFrame, path: Path, model_label: str) -> None:
    """Acc_0.1 against the panel's variable, one line per variant; the candidates and
    decoding panels add time per problem on a second axis."""
    label, _ = PANELS[name]
    timed = name in ("candidates", "decoding")
    fig, axes = plt.subplots(1, 2 if timed else 1, figsize=(9 if timed else 5, 3.6),
                             squeeze=False)
    categorical = not pd.api.types.is_numeric_dtype(table["x"])
    for variant, rows in table.groupby("variant", sort=False):
        x = np.arange(len(rows)) if categorical else rows["x"].astype(float)
        axes[0, 0].plot(x, rows[PLOTTED_METRIC], marker="o", label=variant)
        if timed:
            axes[0, 1].plot(x, rows["seconds_per_problem"], marker="o", label=variant)
    for ax, ylabel in zip(axes[0], ["Acc_0.1", "seconds per problem"]):
        ax.set_xlabel(label)
        ax.set_ylabel(ylabel)
        if categorical:
            ax.set_xticks(range(table["x"].nunique()), table["x"].unique())
        elif name in ("extrapolation", "candidates"):
            ax.set_xscale("log", base=2 if name == "extrapolation" else 10)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylim(-0.02, 1.02)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{label} ({model_label})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__.splitlines()[0])
    parser.add_argument("--n-problems", type=int, default=None,
                        help="validation functions (default 1,000; 2 with --quick)")
    args = parser.parse_args(argv)
    settings = common.experiment_settings(Settings, args)
    if args.n_problems is not None:
        settings = dataclasses.replace(settings, n_problems=args.n_problems)
    out, clock = common.start(args)

    print(f"ablations: {settings.n_problems} validation functions, model {args.model}")
    samples = list(validation_samples(args.seed, settings.n_problems, sigmas=SIGMAS))
    panels = run_panels(samples, args.model, settings, args.seed)
    model_label = f"jaxsr: {common.model_label(args.model)}"
    texts = []
    for name, table in panels.items():
        texts.append(common.write_table(table, out, name, title=PANELS[name][0]))
        plot_panel(name, table, out / f"{name}.png", model_label)
    header = (f"# Ablations ({model_label}, {settings.n_problems} validation functions)\n\n"
              "Paper trends to compare (docs/anchors.md 1.3; figure values not available): "
              "accuracy falls with more unary/binary operators and dimensions, rises with N, "
              "falls with sigma but stays decent up to 32; without refinement E2E is not robust "
              "to noise, refinement restores it.\n")
    (out / "ablations.md").write_text(header + "\n" + "\n".join(texts))
    common.write_provenance(out, "ablations", args, dataclasses.asdict(settings),
                            wall_seconds=clock.seconds)
    print(f"wrote {len(panels)} panels to {out} in {clock.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
