"""The research harness (experiments/): ground-truth problems, tables, the SRBench module and
the three experiments' --quick runs."""

import importlib.resources
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `experiments` is a folder of the repository, not installed
    sys.path.insert(0, str(ROOT))

from experiments import common, problems
from experiments.problems import evaluate_formula, load_problems, select_names


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A copy of the bundled data in a folder of its own, so these tests exercise ``--data``
    (any folder laid out as feynman/ and strogatz/), not only the default."""
    bundled = importlib.resources.files("jaxsr.datasets")
    root = tmp_path_factory.mktemp("data")
    for family in ("feynman", "strogatz"):
        (root / family).mkdir()
        for item in bundled.joinpath(family).iterdir():
            (root / family / item.name).write_bytes(item.read_bytes())
    return root


# ---------------------------------------------------------------------------- problems


def test_the_ground_truth_set_is_srbench_s_133_problems(data_dir):
    names = problems.all_problem_names(data_dir)
    assert len(names) == 133 and len(set(names)) == 133
    assert sum(n.startswith("feynman_") for n in names) == 119
    assert sum(n.startswith("strogatz_") for n in names) == 14
    # PMLB's naming: I.15.1 is feynman_I_15_10; II.11.17 has no PMLB table
    assert "feynman_I_15_10" in names and "feynman_II_11_17" not in names
    assert {"feynman_I_6_2a", "feynman_test_20", "strogatz_vdp2"} <= set(names)


def test_feynman_regeneration_split_cap_and_noise(data_dir):
    clean, = load_problems(data_dir, patterns=["feynman_I_12_1"], n_rows=2000, train_cap=1000)
    noisy, = load_problems(data_dir, patterns=["feynman_I_12_1"], n_rows=2000, train_cap=1000,
                           noise=0.1)
    # 2000 rows: 1500 for training capped to 1000, 500 for testing
    assert clean.X_train.shape == (1000, 2) and clean.X_test.shape == (500, 2)
    assert clean.feature_names == ("mu", "Nn") and clean.formula == "mu*Nn"
    # uniform in the CSV's ranges (mu, Nn in [1, 5])
    assert clean.X_train.min() >= 1 and clean.X_train.max() <= 5
    truth = lambda X: evaluate_formula("mu*Nn", clean.feature_names, X)
    np.testing.assert_allclose(clean.y_train, truth(clean.X_train))
    # noise: same rows, targets moved by about 0.1 * RMS(y_train), on training targets only
    np.testing.assert_array_equal(noisy.X_train, clean.X_train)
    np.testing.assert_array_equal(noisy.y_test, clean.y_test)
    np.testing.assert_allclose(noisy.y_test, truth(noisy.X_test))
    rms = np.sqrt(np.mean(clean.y_train ** 2))
    assert np.std(noisy.y_train - clean.y_train) == pytest.approx(0.1 * rms, rel=0.1)


def test_problems_are_deterministic_in_the_seed(data_dir):
    load = lambda seed: load_problems(
        data_dir, seed=seed, patterns=["feynman_I_6_2a", "strogatz_lv1"], n_rows=400)
    first, again, other = load(0), load(0), load(1)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.X_train, b.X_train)
        np.testing.assert_array_equal(a.y_test, b.y_test)
    # the table is fixed per problem (like a PMLB file); the seed changes the split
    assert not np.array_equal(first[0].X_train, other[0].X_train)
    assert np.array_equal(np.sort(np.concatenate([first[0].y_train, first[0].y_test])),
                          np.sort(np.concatenate([other[0].y_train, other[0].y_test])))


def test_strogatz_problems_read_the_real_files(data_dir):
    lv1, = load_problems(data_dir, patterns=["strogatz_lv1"])
    table = pd.read_csv(data_dir / "strogatz" / "d_lv1.txt")
    assert len(lv1.y_train) + len(lv1.y_test) == len(table)
    assert lv1.formula == "3*x - 2*x*y - x**2"
    np.testing.assert_allclose(lv1.y_test, evaluate_formula(lv1.formula, ("x", "y"), lv1.X_test),
                               atol=1e-6)


def test_source_quirks_are_handled(data_dir):
    specs = {s.name: s for s in problems.read_feynman_specs(data_dir)}
    # '~' is unary minus: test_9's radiated power is negative everywhere
    test_9, = load_problems(data_dir, patterns=["feynman_test_9"], n_rows=200)
    assert np.all(test_9.y_test < 0)
    # test_12 says "4 variables" but names 5 (epsilon)
    assert specs["feynman_test_12"].variables[-1] == "epsilon"
    # the truth is written over x_0.. (the regressor's names), even for names like I or gamma
    assert {str(s) for s in test_9.truth.free_symbols} == {f"x_{k}" for k in range(5)}


def test_problem_selection(data_dir):
    names = problems.all_problem_names(data_dir)
    assert select_names(names, ["strogatz_*"]) == problems.strogatz_names()
    assert select_names(names, ["strogatz_lv1", "feynman_I_6_2a"]) == [
        "feynman_I_6_2a", "strogatz_lv1"]
    with pytest.raises(ValueError, match="match no problem"):
        select_names(names, ["feynman_nope"])


NARROW = (("max_binary_ops_offset", 3), ("max_input_dimension", 3), ("max_unary_ops", 2))


def test_generated_problems_are_the_generator_s_functions(data_dir):
    generated = problems.GeneratedSet(4, NARROW)
    names = problems.all_problem_names(data_dir, generated)
    assert names[133:] == ["generated_000", "generated_001", "generated_002", "generated_003"]
    assert select_names(names, ["generated_*"]) == names[133:]
    found = load_problems(data_dir, patterns=["generated_*"], generated=generated, noise=0.01)
    assert [p.family for p in found] == ["generated"] * 4
    for p in found:
        # the generator's 400 rows, split 75/25; at most 3 variables, named x_0, x_1, ...
        assert len(p.y_train) == 300 and len(p.y_test) == 100
        assert 1 <= len(p.feature_names) <= 3 and p.X_train.shape[1] == len(p.feature_names)
        assert p.feature_names == tuple(f"x_{k}" for k in range(len(p.feature_names)))
        # the formula is the truth: it gives the noise-free test targets
        np.testing.assert_allclose(evaluate_formula(p.formula, p.feature_names, p.X_test),
                                   p.y_test, rtol=1e-9, atol=1e-9)
        assert {str(s) for s in p.truth.free_symbols} <= set(p.feature_names)
    # a function's table depends on its index alone, not on how many are generated
    again, = load_problems(data_dir, patterns=["generated_002"],
                           generated=problems.GeneratedSet(10, NARROW), noise=0.01)
    np.testing.assert_array_equal(again.X_train, found[2].X_train)
    np.testing.assert_array_equal(again.y_train, found[2].y_train)
    # the ranges narrow the set: the reference's ranges give other functions
    wide, = load_problems(data_dir, patterns=["generated_002"],
                          generated=problems.GeneratedSet(3))
    assert wide.formula != found[2].formula
    # none unless asked for
    assert len(problems.all_problem_names(data_dir)) == 133
    with pytest.raises(ValueError, match="match no problem"):
        load_problems(data_dir, patterns=["generated_000"])


def test_the_default_data_are_the_bundled_copies():
    # A fresh clone has nothing beside it: without --data the harness must find every
    # problem inside the package.
    args = common.parser("test", data=True).parse_args(["--out", "unused"])
    assert args.data == common.DEFAULT_DATA
    assert common.DEFAULT_DATA == Path(importlib.resources.files("jaxsr.datasets"))
    assert len(problems.all_problem_names(args.data)) == 133


def test_a_missing_data_folder_is_named_in_the_error(tmp_path):
    with pytest.raises(common.DataNotFoundError, match="--data") as err:
        problems.read_feynman_specs(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere" / "feynman" / "FeynmanEquations.csv") in str(err.value)


def test_srbench_cli_reports_missing_data(tmp_path, capsys):
    from experiments import srbench

    code = srbench.main(["--model", "tiny", "--out", str(tmp_path / "out"), "--quick",
                         "--data", str(tmp_path / "missing")])
    assert code == 2
    assert "benchmark data not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # stopped before writing anything


def test_srbench_cli_rejects_unknown_problems(tmp_path, data_dir, capsys):
    from experiments import srbench

    code = srbench.main(["--model", "tiny", "--out", str(tmp_path / "out"), "--data",
                         str(data_dir), "--problems", "feynman_I_6_2a", "nonsense_*"])
    assert code == 2 and "['nonsense_*'] match no problem" in capsys.readouterr().err


# ---------------------------------------------------------------------------- tables


def test_markdown_table_and_failures():
    frame = pd.DataFrame({"row": ["a", "b"], "R2": [0.5, float("nan")]})
    assert common.markdown_table(frame, digits=2).splitlines() == [
        "| row | R2 |", "|---|---|", "| a | 0.50 |", "| b | – |"]
    np.testing.assert_array_equal(common.failures_as_zero([0.5, np.nan]), [0.5, 0.0])


def test_describe_model_hashes_a_weights_directory(tmp_path):
    (tmp_path / "params.npz").write_bytes(b"arrays")
    (tmp_path / "model.json").write_text(json.dumps({"sha256": "recorded", "config": {}}))
    info = common.describe_model(str(tmp_path))
    assert info["sha256"] == common.sha256_file(tmp_path / "params.npz")
    assert info["recorded_sha256"] == "recorded"
    assert common.describe_model("tiny")["kind"].startswith("config with random weights")


# ---------------------------------------------------------------------------- refinement variants


def test_refine_candidates_from_model_and_random_constants():
    from types import SimpleNamespace

    from experiments.evaluation import Task, refine_candidates
    from jaxsr.expr import Expr

    rng = np.random.default_rng(0)
    x1 = rng.uniform(-2, 2, size=(60, 1))
    x2 = rng.uniform(-2, 2, size=(40, 2))  # another width and length: padded in one call
    tasks = [Task(x1, 2.5 * x1[:, 0] + 1.0, {}, {}), Task(x2, x2[:, 1] ** 2, {}, {})]
    # (a * b) x + c: many optima (a b = 2.5), so where refinement ends shows where it began
    scale = Expr.op("mul", Expr.const(2.0), Expr.const(1.1))
    right = Expr.op("add", Expr.op("mul", scale, Expr.var(0)), Expr.const(0.5))
    wrong = Expr.op("sin", Expr.op("mul", Expr.const(1.0), Expr.var(0)))
    fallback = Expr.const(1.3)
    fitted = [SimpleNamespace(fallback_=None, expressions_=[wrong, right], best_index_=0),
              SimpleNamespace(fallback_="linear fit", expressions_=[fallback], best_index_=0)]

    ends = {}
    for init in ("model", "random"):
        first, second = refine_candidates(fitted, tasks, init=init, seed=0, max_iter=50)
        # the right skeleton wins once its constants are fitted, from either start
        a, b, c = first.tree.constants()
        assert a * b == pytest.approx(2.5) and c == pytest.approx(1.0)
        assert second.tree is fallback  # a fallback is kept as the regressor gave it
        assert first.seconds >= 0
        ends[init] = a
    assert ends["model"] != pytest.approx(ends["random"], rel=1e-3)


# ---------------------------------------------------------------------------- SRBench module


def test_srbench_module_interface_on_a_tiny_fit():
    import sympy
    from sklearn.base import clone

    from experiments.srbench_method import regressor as method

    X = pd.DataFrame({"a": np.linspace(1, 3, 40), "b": np.linspace(-1, 1, 40) ** 2})
    y = 2.0 * X["a"] - X["b"]
    est = clone(method.est).set_params(model="tiny", random_state=0, **method.eval_kwargs[
        "test_params"])
    est.fit(X, y)
    assert method.get_best_solution(est) is est
    assert method.hyper_params == [{}]
    assert {"scale_x", "scale_y", "test_params"} <= set(method.eval_kwargs)
    symbols = sympy.symbols("a b")
    for candidate in [est, *method.get_population(est)]:
        text = method.model(candidate, X)
        formula = sympy.lambdify(symbols, sympy.sympify(text, locals=dict(zip("ab", symbols))))
        np.testing.assert_allclose(formula(X["a"].to_numpy(), X["b"].to_numpy()),
                                   candidate.predict(X), rtol=1e-9)
        assert method.complexity(candidate) >= 1
    assert 1 <= len(method.get_population(est)) <= 100
    # fitted on an array, the formula's x_k are renamed to the columns given
    est.fit(X.to_numpy(), y.to_numpy())
    assert {str(s) for s in sympy.sympify(method.model(est, X)).free_symbols} <= {"a", "b"}


# ---------------------------------------------------------------------------- the --quick runs


def _provenance(out: Path) -> dict:
    record = json.loads((out / "provenance.json").read_text())
    assert record["command"] and record["libraries"]["jax"] and record["devices"]
    assert record["model"]["spec"] == "tiny" and "untrained" in record["model"]["label"]
    return record


def test_in_domain_quick(tmp_path):
    from experiments import in_domain

    out = tmp_path / "in_domain"
    assert in_domain.main(["--model", "tiny", "--out", str(out), "--quick"]) == 0
    results = pd.read_csv(out / "in_domain_results.csv")
    quick = in_domain.Settings.quick()
    assert len(results) == quick.n_problems * len(quick.point_counts) * 3
    assert set(results["n_points"]) == set(quick.point_counts)
    table = pd.read_csv(out / "table2.csv")
    ours = table[table["source"].str.startswith("jaxsr")]
    assert list(ours["row"]) == list(in_domain.PAPER_ROW)
    assert ours[["R2", "Acc_0.1", "Acc_0.01", "Acc_0.001"]].stack().between(0, 1).all()
    assert "E2E + BFGS model init" in set(table["row"])  # the paper's figures beside ours
    assert "| row | source | R2 |" in (out / "table2.md").read_text()
    assert (out / "table2_by_points.md").is_file()
    assert _provenance(out)["settings"]["n_problems"] == quick.n_problems


@pytest.mark.slow
def test_ablations_quick(tmp_path):
    from experiments import ablations

    out = tmp_path / "ablations"
    assert ablations.main(["--model", "tiny", "--out", str(out), "--quick"]) == 0
    for panel in ablations.PANELS:
        table = pd.read_csv(out / f"{panel}.csv")
        assert {"variant", "x", "acc_0.1", "seconds_per_problem"} <= set(table.columns), panel
        assert (out / f"{panel}.png").read_bytes()[:4] == b"\x89PNG"
    assert set(pd.read_csv(out / "extrapolation.csv")["x"]) == set(ablations.SIGMAS)
    assert set(pd.read_csv(out / "decoding.csv")["x"]) == {"greedy", "beam", "sampling"}
    assert "## " not in (out / "ablations.md").read_text().split("\n")[0]
    _provenance(out)


def test_srbench_quick(tmp_path, data_dir):
    from experiments import srbench

    out = tmp_path / "srbench"
    assert srbench.main(["--model", "tiny", "--out", str(out), "--quick",
                         "--data", str(data_dir)]) == 0
    results = pd.read_csv(out / "srbench_results.csv")
    assert list(results["problem"]) == list(srbench.QUICK_PROBLEMS)
    assert {"r2_test", "solved_0.99", "solved_0.999", "symbolic_solution", "complexity",
            "seconds", "model", "truth"} <= set(results.columns)
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["family"]) == {"feynman", "strogatz"}
    assert "Operon (SRBench v2.0)" in set(pd.read_csv(out / "anchors.csv")["method"])
    assert _provenance(out)["problems"] == sorted(srbench.QUICK_PROBLEMS)


def test_in_domain_generator_overrides_narrow_the_validation_set():
    from experiments.evaluation import validation_samples
    from jaxsr.data import GeneratorConfig

    overrides = common.assignments("--generator", ["max_input_dimension=1", "max_unary_ops=0"],
                                   GeneratorConfig)
    assert overrides == {"max_input_dimension": 1, "max_unary_ops": 0}
    narrow = list(validation_samples(0, 4, generator_overrides=overrides))
    assert all(s.info.dimension == 1 and s.info.n_unary_ops == 0 for s in narrow)
    full = list(validation_samples(0, 4))
    assert any(s.info.dimension > 1 for s in full)
    with pytest.raises(SystemExit, match="--generator.*bogus"):
        common.assignments("--generator", ["bogus=3"], GeneratorConfig)
    with pytest.raises(SystemExit, match="FIELD=VALUE"):
        common.assignments("--generator", ["max_unary_ops"], GeneratorConfig)


def test_fit_option_overrides_the_search_settings_by_name():
    base = common.FitSettings(max_number_bags=10, n_candidates=10)
    changed = common.fit_settings(base, ["n_candidates=50", "temperature=0.5",
                                         "decoding=beam"])
    assert (changed.n_candidates, changed.temperature, changed.decoding) == (50, 0.5, "beam")
    assert changed.max_number_bags == 10  # untouched fields keep the experiment's value
    assert common.fit_settings(base, []) == base
    with pytest.raises(SystemExit, match="--fit.*n_candidate"):
        common.fit_settings(base, ["n_candidate=5"])


def test_truth_unaries_and_unary_counts():
    import sympy

    from experiments import seed_operators
    from jaxsr.expr import Expr

    x, y = sympy.symbols("x_0 x_1")
    assert seed_operators.truth_unaries(sympy.sin(x) * sympy.sqrt(y)) == {"sin", "sqrt"}
    assert seed_operators.truth_unaries(1 / sympy.sqrt(x) + sympy.exp(-y ** 2)) == {"sqrt", "exp"}
    assert seed_operators.truth_unaries(x ** 2 / y) == set()  # squares and quotients tell nothing
    tree = Expr.op("add", Expr.op("sin", Expr.var(0)), Expr.op("sin", Expr.op("sqrt", Expr.var(1))))
    assert seed_operators.unary_counts([tree, Expr.op("cos", Expr.var(0))]) == {
        "sin": 2, "sqrt": 1, "cos": 1}


def test_seed_operators_quick(tmp_path):
    """The default model's seeds on three problems: one row each, shares in [0, 1]. One bag
    per problem (``--fit``) halves the run."""
    from experiments import seed_operators

    out = tmp_path / "out"
    assert seed_operators.main(["--out", str(out), "--quick", "--fit", "max_number_bags=1"]) == 0
    rows = pd.read_csv(out / "seed_operators.csv", keep_default_na=False)
    assert list(rows.problem) == list(seed_operators.QUICK_PROBLEMS)
    assert dict(zip(rows.problem, rows.truth_unaries)) == {
        "feynman_I_26_2": "sin", "feynman_II_15_4": "cos", "strogatz_lv1": ""}
    assert (rows.seeds > 0).all()
    assert rows.seed_share.between(0, 1).all() and rows.uniform_share.between(0, 1).all()
    assert (out / "summary.md").read_text().count("|") > 10
    record = json.loads((out / "provenance.json").read_text())
    assert record["experiment"] == "seed_operators"
    assert record["arguments"]["fit"] == ["max_number_bags=1"]
