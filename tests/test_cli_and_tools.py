"""The command line, metrics, bundled data and the benchmark's JSON contract."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxsr import cli, datasets
from jaxsr.expr import Expr, compile_programs, evaluate_programs
from jaxsr.metrics import accuracy_tau, r2_score

from helpers import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


def test_info_lists_the_shipped_model(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "jaxsr " in out and "device 0" in out
    # The figures are read from the shipped files themselves, so retraining the default
    # model does not break the test, but a stale "none shipped" line does.
    shipped = ROOT / "jaxsr" / "weights" / "default"
    n_params = json.loads((shipped / "model.json").read_text())["n_parameters"]
    size = sum(f.stat().st_size for f in shipped.iterdir() if f.is_file())
    line = next(line for line in out.splitlines() if line.strip().startswith("default:"))
    assert f"{n_params:,} parameters" in line and f"{size / 1e6:.1f} MB" in line, line
    assert "docs/model_card.md" in out and "none shipped" not in out


def test_demo_refines_every_strogatz_formula(capsys):
    assert cli.main(["demo", "--max-iter", "300"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(rows) == set(datasets.STROGATZ)
    refined = np.array([float(row[2]) for row in rows.values()])
    assert np.all(refined > 0.99), refined


def test_strogatz_formulas_match_their_data():
    for name in datasets.STROGATZ:
        problem = datasets.strogatz(name)
        truth = Expr.from_sympy(problem.formula, problem.feature_names)
        assert r2_score(problem.y, truth.evaluate(problem.X)) > 0.999999, name
    with pytest.raises(ValueError, match="unknown Strogatz system"):
        datasets.strogatz("nope")


def test_feynman_lists_are_bundled():
    table = datasets.feynman_equations()
    assert len(table) == 120 and {"Formula", "v1_low", "v1_high"} <= set(table.columns)


def test_metrics():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    assert r2_score(y, y) == 1.0
    assert r2_score(y, np.full(4, 2.5)) == 0.0
    assert r2_score(y, -y) < 0 and r2_score(y, -y, clip=True) == 0.0
    assert np.isnan(r2_score(y, np.array([1.0, np.nan, 3.0, 4.0])))
    assert accuracy_tau(y, y * 1.05, 0.1) == 1.0
    assert accuracy_tau(y, y * 1.2, 0.1) == 0.0
    # 3 of 4 points within 10% is below the 95% rule.
    assert accuracy_tau(y, y * np.array([1, 1, 1, 2.0]), 0.1) == 0.0


def test_evaluate_benchmark_times_the_same_values_on_both_sides():
    """The speed-up compares like with like: a fixed workload of the promised sizes, which
    the batched interpreter and the numpy loop evaluate to the same values."""
    bench = load_benchmark("evaluate")
    pool = bench.skeleton_mix(16)
    assert [e.prefix() for e in pool] == [e.prefix() for e in bench.skeleton_mix(16)]
    assert all(15 <= len(e.prefix()) <= 30 for e in pool)
    X = np.random.default_rng(1).standard_normal((bench.N_POINTS, 5))
    with jax.enable_x64(True):  # float64 on both sides: the loop evaluates in float64
        batched = np.asarray(evaluate_programs(compile_programs(pool), X))
    loop = np.stack([np.broadcast_to(e.evaluate(X), len(X)) for e in pool])
    assert np.isfinite(loop).mean() > 0.5
    np.testing.assert_allclose(batched, loop, rtol=1e-9, atol=1e-12)
    result = bench.measure([16], repeats=1, baseline_size=16)
    rate = result["programs_per_second"]["16"] / result["numpy_loop_programs_per_second"]
    assert result["speedup_vs_numpy_loop"] == pytest.approx(rate, abs=0.006)  # 2 decimals
