"""What the three experiments share: the command line, the output folder and its provenance
record, result tables, the data path, and how a regressor is built from the command line.

Every experiment writes into one folder (``--out``): its CSV files, markdown tables, figures,
and ``provenance.json`` (the exact command, the settings, the model and its checksum, library
versions and devices), so a result can always be traced to what produced it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import math
import os
import platform
import shlex
import sys
import time
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

import jaxsr.datasets
from jaxsr.fileio import atomic_write
from jaxsr.machine import cpu_description
from jaxsr.weights import UntrainedModelWarning

REPO_ROOT = Path(__file__).resolve().parents[1]
# The Feynman lists and Strogatz files ship inside the package (jaxsr/datasets), laid out as
# --data expects (feynman/, strogatz/), so a fresh clone runs every experiment with nothing
# beside it; --data still points at another copy.
DEFAULT_DATA = Path(jaxsr.datasets.__file__).resolve().parent
# Distributions whose versions go into every provenance record.
LIBRARIES = ("jaxsr-e2e", "jax", "jaxlib", "flax", "optax", "jaxopt", "numpy", "scipy", "sympy",
             "scikit-learn", "pandas", "matplotlib")


class DataNotFoundError(FileNotFoundError):
    """The benchmark data are not where ``--data`` points."""


def data_file(data_dir: str | os.PathLike, *parts: str) -> Path:
    """``data_dir/parts...``, or a ``DataNotFoundError`` that says what is missing and how to
    point the harness at the data."""
    path = Path(data_dir).joinpath(*parts)
    if not path.exists():
        raise DataNotFoundError(
            f"benchmark data not found: {path} does not exist. The harness reads the data "
            f"folder given by --data (default: the copies bundled with jaxsr, {DEFAULT_DATA}), "
            f"which must hold feynman/FeynmanEquations.csv, feynman/BonusEquations.csv and "
            f"strogatz/d_*.txt (docs/data.md, section \"Bundled ground-truth data\"). Leave "
            f"--data out to use the bundled copies.")
    return path


# ---------------------------------------------------------------------------- command line


def parser(description: str, *, data: bool = False) -> argparse.ArgumentParser:
    """An argument parser with the options every experiment takes, ``--fit`` included: the
    regressor's search settings as FIELD=VALUE words (see ``FitSettings`` and
    ``fit_settings``)."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="default",
                   help="'default', a config name for random weights ('tiny', 'small', "
                        "'paper'), or a weights directory")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder: CSV, markdown tables, figures and provenance.json")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and of the model's "
                                                       "sampling")
    p.add_argument("--quick", action="store_true",
                   help="a tiny run (about a minute on CPU with --model tiny), as used in CI")
    p.add_argument("--fit", nargs="+", default=[], metavar="FIELD=VALUE",
                   help="override the regressor's search settings, e.g. n_candidates=100 "
                        "temperature=0.5 max_number_bags=4 (fields of FitSettings)")
    if data:
        p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                       help="the benchmark data folder (feynman/, strogatz/); default: the "
                            "copies bundled with jaxsr")
    return p


def assignments(option: str, pairs: list[str], cls) -> dict:
    """FIELD=VALUE words given to ``option`` -> keyword arguments of the dataclass ``cls``
    (values parsed as JSON, else kept as text); an unknown field or a bad value exits naming
    the option and the problem."""
    overrides = {}
    for pair in pairs:
        field, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"{option} expects FIELD=VALUE, got {pair!r}")
        try:
            overrides[field] = json.loads(value)
        except json.JSONDecodeError:
            overrides[field] = value
    try:
        cls(**overrides)  # unknown fields or bad values fail here, with their name
    except (TypeError, ValueError) as err:
        raise SystemExit(f"{option}: {err}") from None
    return overrides


# ---------------------------------------------------------------------------- the regressor


@dataclasses.dataclass(frozen=True)
class FitSettings:
    """The regressor's search settings an experiment uses (names as in
    ``jaxsr.SymbolicTransformerRegressor``)."""

    max_input_points: int | None = None  # None: the bag size the weights record
    max_number_bags: int = 10
    n_candidates: int = 10
    decoding: str = "sampling"
    temperature: float | None = None
    max_iter: int = 50
    max_time: float | None = None
    # These harnesses measure the paper's protocol; `--fit search=evolve` measures the
    # seeded search instead (experiments/peers.py compares both at equal time).
    search: str = "sample"

    def replace(self, **changes) -> FitSettings:
        return dataclasses.replace(self, **changes)


def fit_settings(base: FitSettings, pairs: list[str]) -> FitSettings:
    """``base`` with the ``--fit FIELD=VALUE`` overrides applied."""
    return base.replace(**assignments("--fit", pairs, FitSettings))


def experiment_settings(cls, args: argparse.Namespace):
    """An experiment's settings dataclass ``cls`` (with a ``fit`` field and a ``quick()``
    constructor) as the command line asks: CI-sized with ``--quick``, then ``--fit``."""
    settings = cls.quick() if args.quick else cls()
    return dataclasses.replace(settings, fit=fit_settings(settings.fit, args.fit))


def make_regressor(model: str, settings: FitSettings, *, refine: bool = True, seed: int = 0):
    """A ``SymbolicTransformerRegressor`` with these settings."""
    from jaxsr import SymbolicTransformerRegressor

    return SymbolicTransformerRegressor(model=model, refine=refine, random_state=seed,
                                        **dataclasses.asdict(settings))


def model_label(spec: str) -> str:
    """How the regressor names the model ``spec`` resolves to, e.g. "tiny (random weights,
    untrained)"; loads it once (the regressor keeps it for the fits that follow)."""
    from jaxsr.regressor.models import resolve

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the regressor warns at every fit anyway
        return resolve(spec).label


def fit_many(regressor, datasets: list[tuple[np.ndarray, np.ndarray]]) -> tuple[list, float]:
    """Fits one regressor per dataset in one batched pass; returns (fitted, seconds)."""
    start = time.perf_counter()
    fitted = regressor.fit_many(datasets)
    return list(fitted), time.perf_counter() - start


class Stopwatch:
    """Seconds since creation, for the provenance record."""

    def __init__(self):
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start


# ---------------------------------------------------------------------------- provenance


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def devices() -> list[str]:
    import jax

    return [f"{d.platform}:{d.id} {d.device_kind}" for d in jax.devices()]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def describe_model(spec: str) -> dict:
    """What ``--model`` refers to: a config with random weights, or a weights directory with
    the sha256 of its arrays (computed here, and the one its model.json records)."""
    from jaxsr.model import CONFIGS
    from jaxsr.weights.format import FALLBACK_CONFIG, default_model_path

    if spec == "default" and default_model_path() is None:
        return {"spec": spec, "kind": "the default model is missing: the regressor uses the "
                                      f"untrained {FALLBACK_CONFIG!r} config (random weights)"}
    if spec in CONFIGS:
        return {"spec": spec, "kind": "config with random weights (untrained)",
                "config": CONFIGS[spec].to_dict()}
    path = default_model_path() if spec == "default" else Path(spec)
    if not (path / "params.npz").is_file():
        return {"spec": spec, "kind": "not a weights directory (the regressor will say why)"}
    meta_file = path / "model.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    return {"spec": spec, "kind": "weights directory", "path": str(path.resolve()),
            "sha256": sha256_file(path / "params.npz"), "recorded_sha256": meta.get("sha256"),
            "config": meta.get("config"), "metadata": meta.get("metadata")}


def write_provenance(out_dir: Path, experiment: str, args: argparse.Namespace, settings: dict,
                     *, wall_seconds: float, extra: dict | None = None) -> Path:
    """``provenance.json``: how to reproduce the results beside it."""
    record = {
        "experiment": experiment,
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "cwd": os.getcwd(),
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "settings": settings,
        "model": {**describe_model(args.model), "label": model_label(args.model)},
        "libraries": library_versions(),
        "devices": devices(),
        "platform": platform.platform(),
        "cpu": cpu_description(),
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "wall_seconds": round(wall_seconds, 2),
        **(extra or {}),
    }
    return atomic_write(out_dir / "provenance.json",
                        json.dumps(record, indent=1, default=_json_default))


def _json_default(value):
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, (Path, tuple)):
        return str(value) if isinstance(value, Path) else list(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def start(args: argparse.Namespace) -> tuple[Path, Stopwatch]:
    """Begins a run: creates the output folder, shows the untrained-model warning once rather
    than at every fit (the model's label is in every table and in provenance.json), and
    starts the clock."""
    warnings.filterwarnings("once", category=UntrainedModelWarning)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a file of that name, no permission: one line, before any work
        raise SystemExit(f"--out {out}: cannot create the output folder: "
                         f"{err.strerror or err}") from None
    return out, Stopwatch()


# ---------------------------------------------------------------------------- tables


def failures_as_zero(values) -> np.ndarray:
    """Scores with NaN (no finite prediction) counted as 0: a failed problem is unsolved and has
    R2 0, as SRBench scores failures, rather than being left out of the mean."""
    values = np.asarray(values, np.float64)
    return np.where(np.isfinite(values), values, 0.0)


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub markdown table; floats with ``digits`` decimals, missing values as a dash."""
    def cell(value) -> str:
        if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
            return "–"
        if isinstance(value, (float, np.floating)):
            return f"{value:.{digits}f}"
        return str(value)

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def write_table(frame: pd.DataFrame, out_dir: Path, stem: str, *, title: str = "",
                note: str = "", digits: int = 3) -> str:
    """Writes ``stem.csv`` and ``stem.md`` (each atomically: an interrupted run leaves the
    previous version, never half a table); returns the markdown (title, table, note)."""
    write_csv(frame, out_dir / f"{stem}.csv")
    parts = [f"### {title}" if title else "", markdown_table(frame, digits), note]
    text = "\n\n".join(p for p in parts if p) + "\n"
    atomic_write(out_dir / f"{stem}.md", text)
    return text


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    """``frame`` as CSV at ``path``, atomically."""
    return atomic_write(path, frame.to_csv(index=False))


def write_text(path: Path, text: str) -> Path:
    """``text`` at ``path``, atomically (for the harness's markdown reports)."""
    return atomic_write(path, text)


def save_figure(fig, path: Path, **options) -> Path:
    """A matplotlib figure at ``path``, atomically (the format follows the suffix)."""
    fmt = Path(path).suffix.lstrip(".") or None
    return atomic_write(path, lambda f: fig.savefig(f, format=fmt, **options))
