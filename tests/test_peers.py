"""experiments/peers.py: jobs and shards, merging, summaries, skipped methods, the adapters and
the --quick run."""

import importlib.resources
import json
import os
import random
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sympy

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `experiments` is a folder of the repository, not installed
    sys.path.insert(0, str(ROOT))

from experiments import peers, threads  # noqa: E402


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A data folder for ``--data``, copied from the data bundled with jaxsr."""
    bundled = importlib.resources.files("jaxsr.datasets")
    root = tmp_path_factory.mktemp("data")
    for family in ("feynman", "strogatz"):
        (root / family).mkdir()
        for item in bundled.joinpath(family).iterdir():
            (root / family / item.name).write_bytes(item.read_bytes())
    return root


class MeanMethod(peers.Method):
    """A stand-in method, deterministic and instant: the mean of y."""

    name = "mean"

    def fit(self, X, y, seed, run):
        mean = float(np.mean(y))
        return peers.Fitted(lambda X: np.full(len(X), mean), sympy.Float(mean))


class LinearMethod(peers.Method):
    """Another stand-in: least squares on the columns."""

    name = "linear"

    def fit(self, X, y, seed, run):
        coefficients, *_ = np.linalg.lstsq(np.c_[X, np.ones(len(X))], y, rcond=None)
        formula = sum(float(c) * sympy.Symbol(f"x_{k}") for k, c in enumerate(coefficients[:-1]))
        return peers.Fitted(lambda X: np.c_[X, np.ones(len(X))] @ coefficients,
                            formula + float(coefficients[-1]))


FAKES = peers.method_table(MeanMethod(), LinearMethod())
FAKE_PROBLEMS = ["feynman_I_6_2a", "strogatz_lv1"]


def _fake_run(out: Path, data_dir: Path, *extra: str) -> int:
    return peers.main(["--model", "tiny", "--quick", "--out", str(out), "--data", str(data_dir),
                       "--problems", *FAKE_PROBLEMS, "--seeds", "0", "1", *extra])


# ---------------------------------------------------------------------------- jobs and shards


def test_shards_cover_every_job_exactly_once_and_are_balanced():
    jobs = peers.job_list(["gplearn", "jaxsr-sample", "pyoperon"], [f"p{i}" for i in range(7)],
                          [0.0, 0.1], [0, 1])
    assert len(jobs) == 3 * 7 * 2 * 2 == len(set(jobs))
    shuffled = random.Random(0).sample(jobs, len(jobs))
    for count in (1, 2, 5, 64, 100):
        slices = [peers.shard(jobs, i, count) for i in range(count)]
        assert sorted(j for s in slices for j in s) == sorted(jobs)  # each job exactly once
        sizes = [len(s) for s in slices]
        assert max(sizes) - min(sizes) <= 1
        for method in ("gplearn", "jaxsr-sample", "pyoperon"):  # each method spread evenly
            per_method = [sum(j.method == method for j in s) for s in slices]
            assert max(per_method) - min(per_method) <= 1
        # the slice depends only on the job set, not on the order it was listed in
        assert [peers.shard(shuffled, i, count) for i in range(count)] == slices


def test_shard_option_is_checked():
    assert peers.parse_shard("3/64") == (3, 64)
    for bad in ("64/64", "-1/4", "a/b", "3"):
        with pytest.raises(Exception, match="I/N"):
            peers.parse_shard(bad)


# ---------------------------------------------------------------------------- tables


def _row(method, family, n_variables, r2, symbolic, complexity, seconds, error=""):
    return {"method": method, "problem": f"{family}_{n_variables}_{r2}", "family": family,
            "n_variables": n_variables, "noise": 0.0, "seed": 0, "r2_test": r2,
            "solved_0.99": r2 > 0.99, "solved_0.999": r2 > 0.999,
            "symbolic_solution": symbolic, "symbolic_reason": "", "complexity": complexity,
            "seconds": seconds, "formula": "x_0", "truth": "x_0", "budget": 5.0, "threads": 1,
            "error": error}


def _hand_made_results() -> pd.DataFrame:
    return pd.DataFrame([
        _row("A", "feynman", 1, 0.9999, True, 5, 1.0),
        _row("A", "feynman", 2, 0.995, None, 9, 2.0),      # undecided: not a solution
        _row("A", "feynman", 4, 0.5, False, 20, 4.0),
        _row("A", "strogatz", 2, float("nan"), False, float("nan"), 5.0, "ValueError: x"),
        _row("B", "feynman", 7, 0.9995, True, 3, 0.5),
        _row("B", "strogatz", 2, 0.98, False, 7, 0.7),
    ])


def _check_hand_made_summary(table: pd.DataFrame) -> None:
    def get(method, grouping, group, column):
        rows = table[(table["method"] == method) & (table["grouping"] == grouping)
                     & (table["group"].astype(str) == group)]
        assert len(rows) == 1, (method, grouping, group)
        return rows.iloc[0][column]

    assert get("A", "all", "all", "runs") == 4
    assert get("A", "all", "all", "% R2>0.99") == pytest.approx(50.0)
    assert get("A", "all", "all", "% R2>0.999") == pytest.approx(25.0)
    assert get("A", "all", "all", "symbolic") == 1
    assert get("A", "all", "all", "% symbolic") == pytest.approx(25.0)
    assert get("A", "all", "all", "symbolic undecided") == 1
    assert get("A", "all", "all", "errors") == 1
    assert get("A", "all", "all", "median complexity") == pytest.approx(9.0)  # NaN left out
    assert get("A", "all", "all", "median seconds") == pytest.approx(3.0)
    assert get("A", "all", "all", "max seconds") == pytest.approx(5.0)
    assert get("A", "family", "feynman", "% R2>0.99") == pytest.approx(200 / 3)
    assert get("A", "family", "strogatz", "% R2>0.99") == 0.0
    assert get("A", "variables", "2", "runs") == 2
    assert get("A", "variables", "2", "% R2>0.99") == pytest.approx(50.0)
    assert get("A", "variables", "4-5", "runs") == 1
    assert get("B", "variables", "6+", "% R2>0.999") == pytest.approx(100.0)
    assert get("B", "all", "all", "% R2>0.99") == pytest.approx(50.0)
    assert set(table.loc[table["grouping"] == "variables", "group"].astype(str)) == {
        "1", "2", "4-5", "6+"}


def test_summary_fractions_on_a_hand_made_frame(tmp_path):
    results = _hand_made_results()
    _check_hand_made_summary(peers.summary(results))
    # the same once written and read back, as a merge reads shard results
    results.to_csv(tmp_path / peers.RESULTS, index=False)
    _check_hand_made_summary(peers.summary(peers.read_results(tmp_path)))
    assert [peers.variable_group(n) for n in (1, 2, 3, 4, 5, 6, 10)] == [
        "1", "2", "3", "4-5", "4-5", "6+", "6+"]


def test_merge_of_shards_equals_a_one_shot_run(tmp_path, data_dir, monkeypatch):
    monkeypatch.setattr(peers, "METHODS", FAKES)
    assert _fake_run(tmp_path / "all", data_dir) == 0
    for i in range(2):
        assert _fake_run(tmp_path / f"shard{i}", data_dir, "--shard", f"{i}/2") == 0
    shard_rows = [len(pd.read_csv(tmp_path / f"shard{i}" / peers.RESULTS)) for i in range(2)]
    assert shard_rows == [4, 4]  # 2 methods x 2 problems x 2 seeds, balanced
    # a folder given twice (a rerun shard) is counted once
    assert peers.main(["--model", "tiny", "--out", str(tmp_path / "merged"), "--merge",
                       str(tmp_path / "shard0"), str(tmp_path / "shard1"),
                       str(tmp_path / "shard0")]) == 0

    def table(name, stem, key):
        frame = pd.read_csv(tmp_path / name / f"{stem}.csv")
        frame = frame.drop(columns=[c for c in frame.columns if "seconds" in c])
        return frame.sort_values(key, kind="stable").reset_index(drop=True)

    pd.testing.assert_frame_equal(table("merged", "peers_results", peers.JOB_KEY),
                                  table("all", "peers_results", peers.JOB_KEY))
    summary_key = ["method", "noise", "grouping", "group"]
    pd.testing.assert_frame_equal(table("merged", "summary", summary_key),
                                  table("all", "summary", summary_key))
    record = json.loads((tmp_path / "merged" / "provenance.json").read_text())
    assert record["duplicates_dropped"] == shard_rows[0]
    assert (tmp_path / "merged" / peers.FIGURE).read_bytes()[:4] == b"\x89PNG"


def test_generated_problems_run_beside_srbench_s(tmp_path, data_dir, monkeypatch):
    monkeypatch.setattr(peers, "METHODS", FAKES)
    out = tmp_path / "generated"
    assert peers.main(["--model", "tiny", "--quick", "--out", str(out), "--data", str(data_dir),
                       "--problems", "strogatz_lv1", "generated_*", "--generated", "2",
                       "--generator", "max_input_dimension=2", "--methods", "linear"]) == 0
    results = pd.read_csv(out / peers.RESULTS).set_index("problem")
    assert dict(results["family"]) == {"strogatz_lv1": "strogatz", "generated_000": "generated",
                                       "generated_001": "generated"}
    assert (results["n_variables"] <= 2).all() and results["r2_test"].notna().all()
    summary = pd.read_csv(out / "summary.csv")
    assert "generated" in set(summary.loc[summary["grouping"] == "family", "group"])
    settings = json.loads((out / "provenance.json").read_text())["settings"]
    assert settings["generated"] == {"count": 2, "generator": [["max_input_dimension", 2]]}


@pytest.mark.parametrize("arguments, message", [
    (["--generated", "-1"], "--generated must be between 0 and 999"),
    (["--generator", "max_input_dimension=2"], "give --generated N too"),
    (["--generated", "2", "--problems", "generated_002"], "match no problem"),
])
def test_generated_options_are_checked(arguments, message, tmp_path, data_dir, capsys):
    assert peers.main(["--out", str(tmp_path / "o"), "--data", str(data_dir),
                       *arguments]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_the_summary_shows_noise_levels_as_given(tmp_path, data_dir, monkeypatch):
    monkeypatch.setattr(peers, "METHODS", FAKES)
    out = tmp_path / "noisy"
    assert peers.main(["--model", "tiny", "--quick", "--out", str(out), "--data", str(data_dir),
                       "--problems", "strogatz_lv1", "--noise", "0", "0.001", "0.01"]) == 0
    rows = [line for line in (out / "summary.md").read_text().splitlines()
            if line.startswith("| mean |")]
    assert [row.split(" | ")[1] for row in rows[:3]] == ["0", "0.001", "0.01"]


def test_merge_names_a_missing_shard(tmp_path, capsys):
    assert peers.main(["--out", str(tmp_path / "m"), "--merge", str(tmp_path / "none")]) == 2
    assert "peers_results.csv does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------------------- skipped methods


@pytest.mark.parametrize("peer", ["pyoperon", "gplearn"])
def test_a_missing_peer_is_skipped_with_a_note(peer, tmp_path, data_dir, monkeypatch, capsys):
    for module in (peer, f"{peer}.sklearn", f"{peer}.genetic"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    monkeypatch.setattr(peers, "METHODS", {peer: peers.METHODS[peer], **FAKES})
    out = tmp_path / "out"
    assert peers.main(["--model", "tiny", "--quick", "--out", str(out), "--data", str(data_dir),
                       "--problems", "strogatz_lv1", "--methods", peer, "mean"]) == 0
    note = f"{peer} skipped: {peer} is not installed"
    assert f"note: {note}" in capsys.readouterr().out
    assert note in (out / "summary.md").read_text()
    assert "not installed" in json.loads((out / "provenance.json").read_text())["skipped"][peer]
    assert set(pd.read_csv(out / peers.RESULTS)["method"]) == {"mean"}


def test_jaxsr_methods_need_the_regressor_keywords_they_set(monkeypatch):
    import jaxsr

    class WithoutSearch:
        def __init__(self, model="default", *, max_time=None, random_state=None):
            pass

    class WithSeeds:
        def __init__(self, model="default", *, search="sample", seeds="model", max_time=None,
                     random_state=None):
            pass

    run = peers.RunSettings(budget=3.0)
    monkeypatch.setattr(jaxsr, "SymbolicTransformerRegressor", WithoutSearch)
    assert peers.METHODS["jaxsr-sample"].unavailable() is None
    assert "search" not in peers.METHODS["jaxsr-sample"].settings(run)  # sampling only
    assert "no search keyword" in peers.METHODS["jaxsr-evolve"].unavailable()
    assert all(m.unavailable() for m in peers.ABLATION.values())

    monkeypatch.setattr(jaxsr, "SymbolicTransformerRegressor", WithSeeds)
    assert peers.METHODS["jaxsr-evolve"].settings(run) == {
        "model": "default", "max_time": 3.0, "search": "evolve"}
    assert peers.ABLATION["evolve"].unavailable() is None
    assert peers.ABLATION["evolve-random-seeds"].settings(run)["seeds"] == "random"
    assert peers.ABLATION["evolve-seeds-deferred"].settings(run)["seeds"] == "model-deferred"
    assert "model_proposals" in peers.ABLATION["evolve-no-proposals"].unavailable()


class BrokenMethod(peers.Method):
    name = "broken"

    def fit(self, X, y, seed, run):
        raise RuntimeError("boom")


def test_a_failing_fit_is_recorded_and_the_run_goes_on(tmp_path, data_dir, monkeypatch):
    monkeypatch.setattr(peers, "METHODS", peers.method_table(BrokenMethod(), MeanMethod()))
    out = tmp_path / "out"
    assert peers.main(["--model", "tiny", "--quick", "--out", str(out), "--data", str(data_dir),
                       "--problems", "strogatz_lv1"]) == 0
    results = pd.read_csv(out / peers.RESULTS).set_index("method")
    assert results.loc["broken", "error"] == "RuntimeError: boom"
    assert np.isnan(results.loc["broken", "r2_test"]) and not results.loc["broken", "solved_0.99"]
    assert np.isfinite(results.loc["mean", "r2_test"])
    summary = pd.read_csv(out / "summary.csv").set_index(["method", "grouping"])
    assert summary.loc[("broken", "all"), "errors"] == 1
    assert summary.loc[("mean", "all"), "errors"] == 0


def test_unknown_methods_are_rejected(tmp_path, data_dir, capsys):
    assert peers.main(["--out", str(tmp_path / "o"), "--data", str(data_dir), "--methods",
                       "nonesuch"]) == 2
    assert "nonesuch" in capsys.readouterr().err and not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------- adapters


def _formula_values(formula, X):
    symbols = [sympy.Symbol(f"x_{k}") for k in range(X.shape[1])]
    return np.broadcast_to(sympy.lambdify(symbols, formula, "numpy")(*X.T), (len(X),))


@pytest.mark.parametrize("name", ["pyoperon", "gplearn"])
def test_peer_formulas_are_their_models_in_the_columns_names(name):
    method = peers.METHODS[name]
    if method.unavailable():
        pytest.skip(method.unavailable())
    rng = np.random.default_rng(0)
    X = rng.uniform(1, 3, size=(200, 3))
    y = X[:, 0] * X[:, 2] + 1.0
    run = peers.RunSettings(budget=1.0)
    start = peers.time.perf_counter()
    fitted = method.fit(X, y, 0, run)
    # The budget stops the run: without it gplearn would evolve 100,000 generations. The
    # margin is wide so that a loaded machine does not fail it (speed lives in benchmarks/).
    assert peers.time.perf_counter() - start < 3 * run.budget + 3
    assert {str(s) for s in fitted.formula.free_symbols} <= {"x_0", "x_1", "x_2"}
    np.testing.assert_allclose(_formula_values(fitted.formula, X), fitted.predict(X),
                               rtol=1e-4, atol=1e-6)


def test_gplearn_programs_read_as_sympy():
    functions = pytest.importorskip("gplearn.functions")
    f = functions._function_map
    program = [f["add"], f["mul"], 0, f["log"], 1, f["div"], 2, 0.5]
    x0, x1, x2 = sympy.symbols("x_0 x_1 x_2")
    assert peers.gplearn_sympy(program) == x0 * sympy.log(sympy.Abs(x1)) + x2 / 0.5


def test_threads_are_pinned_and_released():
    before = {tid: os.sched_getaffinity(tid) for tid in threads._thread_ids()}
    variable = os.environ.get("OMP_NUM_THREADS")
    with threads.pinned(1) as pinning:
        assert len(pinning.cores) == 1
        assert all(os.sched_getaffinity(tid) == set(pinning.cores)
                   for tid in threads._thread_ids() if tid in before)
        assert os.environ["OMP_NUM_THREADS"] == "1"
    assert all(os.sched_getaffinity(tid) == mask for tid, mask in before.items()
               if tid in threads._thread_ids())
    assert os.environ.get("OMP_NUM_THREADS") == variable
    with pytest.raises(ValueError, match="--threads"):
        threads.pin(len(os.sched_getaffinity(0)) + 1)


# ---------------------------------------------------------------------------- --quick


@pytest.mark.smoke
@pytest.mark.slow  # about 25 s (a jaxsr warm-up and fits of every method), 30+ s when busy
def test_quick_end_to_end(tmp_path, data_dir, capsys):
    out = tmp_path / "quick"
    # --budget 1 keeps this test short; the --quick default is 2 s
    assert peers.main(["--quick", "--out", str(out), "--data", str(data_dir),
                       "--budget", "1"]) == 0
    printed = capsys.readouterr().out
    results = pd.read_csv(out / peers.RESULTS)
    available = [n for n, m in peers.METHODS.items() if not m.unavailable()]
    assert "jaxsr-sample" in available
    assert sorted(zip(results["method"], results["problem"])) == sorted(
        (m, p) for m in available for p in peers.QUICK_PROBLEMS)
    assert set(results.columns) == set(peers.RESULT_COLUMNS)
    assert (results["error"].isna() | (results["error"] == "")).all(), results["error"]
    assert results["r2_test"].notna().all() and (results["seconds"] > 0).all()
    text = (out / "summary.md").read_text()
    for name in set(peers.METHODS) - set(available):
        assert f"note: {name} skipped" in printed and f"{name} skipped" in text
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["grouping"]) == {"all", "family", "variables"}
    assert set(summary["method"]) == set(available)
    assert (out / peers.FIGURE).read_bytes()[:4] == b"\x89PNG"
    record = json.loads((out / "provenance.json").read_text())
    assert record["threads"]["cores"] and len(record["threads"]["cores"]) == 1
    assert record["settings"]["budget"] == 1.0 and "warm-up" not in record  # key is warm_up
    assert "untimed" in record["warm_up"]
