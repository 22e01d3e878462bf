"""Bundled ground-truth problems: Strogatz ODE systems and the Feynman formula lists.

Sources and quirks are described in docs/data.md ("Bundled ground-truth data"); the files are
unmodified copies of the public data used by SRBench.
"""

from __future__ import annotations

import dataclasses
import importlib.resources

import numpy as np
import pandas as pd

# Right-hand sides of the Strogatz systems (PMLB metadata); variables x, y.
STROGATZ = {
    "bacres1": "20 - x - x*y/(1+0.5*x**2)",
    "bacres2": "10 - x*y/(1+0.5*x**2)",
    "barmag1": "0.5*sin(x-y) - sin(x)",
    "barmag2": "0.5*sin(y-x) - sin(y)",
    "glider1": "-0.05*x**2 - sin(y)",
    "glider2": "x - cos(y)/x",
    "lv1": "3*x - 2*x*y - x**2",
    "lv2": "2*y - x*y - y**2",
    "predprey1": "x*(4 - x - y/(1+x))",
    "predprey2": "y*(x/(1+x) - 0.075*y)",
    "shearflow1": "cos(x)/tan(y)",
    "shearflow2": "(cos(y)**2 + 0.1*sin(y)**2)*sin(x)",
    "vdp1": "10*(y - (x**3 - x)/3)",
    "vdp2": "-x/10",
}


@dataclasses.dataclass(frozen=True)
class BundledProblem:
    """A bundled regression problem with its known formula."""

    name: str
    X: np.ndarray         # (N, D)
    y: np.ndarray         # (N,)
    feature_names: tuple[str, ...]
    formula: str          # the true formula, sympy syntax, in terms of feature_names


def _file(*parts: str):
    return importlib.resources.files(__package__).joinpath(*parts)


def strogatz(name: str) -> BundledProblem:
    """One Strogatz system, e.g. ``strogatz("lv1")``: about 400 points of (x, y) -> x'."""
    if name not in STROGATZ:
        raise ValueError(f"unknown Strogatz system {name!r}; known: {', '.join(STROGATZ)}")
    with _file("strogatz", f"d_{name}.txt").open() as f:
        table = pd.read_csv(f)
    return BundledProblem(name, table[["x", "y"]].to_numpy(np.float64),
                   table["label"].to_numpy(np.float64), ("x", "y"), STROGATZ[name])


def feynman_equations() -> pd.DataFrame:
    """The 100 AI Feynman equations and 20 bonus ones, with variable names and ranges."""
    frames = []
    for filename in ("FeynmanEquations.csv", "BonusEquations.csv"):
        with _file("feynman", filename).open() as f:
            frames.append(pd.read_csv(f))
    return pd.concat(frames, ignore_index=True)
