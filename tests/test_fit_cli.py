"""``jaxsr fit DATA --target COLUMN``: file formats, output, and clear errors."""

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from jaxsr import cli

# The paper's protocol: these tests check the command's mechanics (the search's own CLI test
# is test_the_search_prints_the_selected_front_member).
FAST = ["--model", "tiny", "--n-candidates", "2", "--max-bags", "1", "--search", "sample"]
RNG = np.random.default_rng(0)
TABLE = pd.DataFrame({"mass": RNG.uniform(1, 2, 50), "speed": RNG.uniform(0, 3, 50)})
TABLE["energy"] = 0.5 * TABLE["mass"] * TABLE["speed"] ** 2


@pytest.mark.parametrize("name, sep", [("data.csv", ","), ("data.tsv", "\t"),
                                       ("data.csv.gz", ","), ("data.tsv.gz", "\t"),
                                       ("data.txt", ";")])
def test_reads_csv_tsv_and_compressed_tables(tmp_path, capsys, name, sep):
    path = tmp_path / name
    TABLE.to_csv(path, sep=sep, index=False)
    assert cli.main(["fit", str(path), "--target", "energy", *FAST]) == 0
    out = capsys.readouterr().out
    assert "model: tiny (random weights, untrained)" in out
    assert "data: " in out and "50 rows, target 'energy', features mass, speed" in out
    assert "best formula: " in out and "R2 = " in out and "top 2" in out
    best = out.split("best formula: ")[1].splitlines()[0]
    values = eval(best, {}, {c: TABLE[c].to_numpy() for c in ("mass", "speed")})
    r2 = float(out.split("R2 = ")[1].split(",")[0])
    residual = np.sum((TABLE["energy"] - values) ** 2)
    assert r2 == pytest.approx(1 - residual / np.sum((TABLE["energy"] - TABLE["energy"].mean()) ** 2),
                               rel=1e-5)


def test_the_search_prints_the_selected_front_member(tmp_path, capsys):
    path = tmp_path / "data.csv"
    TABLE.to_csv(path, index=False)
    argv = ["fit", str(path), "--target", "energy", "--model", "tiny", "--n-candidates", "2",
            "--max-bags", "1", "--max-time", "8", "--json", "--top", "50"]
    assert cli.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    chosen = [row for row in result["candidates"] if row["formula"] == result["best"]["formula"]]
    assert chosen and result["best"]["r2"] > 0.99  # 0.5 m v^2: found, or the linear fit's
    sources = {row["source"] for row in result["candidates"]}
    assert sources <= {"model sample", "model proposal", "evolved", "random tree", "baseline"}
    assert result["fit"]["stopped"] in ("target_r2", "max_time", "generations")


def test_json_output_is_one_object_for_machines(tmp_path, capsys):
    path = tmp_path / "data.csv"
    TABLE.to_csv(path, index=False)
    assert cli.main(["fit", str(path), "--target", "energy", "--json", "--top", "3", *FAST]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "tiny (random weights, untrained)" and result["untrained"]
    assert result["features"] == ["mass", "speed"] and result["target"] == "energy"
    assert {**result["best"], "simplified": None} == {**result["candidates"][0],
                                                      "simplified": None}
    assert "mass" in result["best"]["simplified"]
    assert {"formula", "r2", "mse", "complexity", "refined", "source"} <= set(result["best"])
    assert result["fallback"].startswith("no sampled sequence")
    assert set(result["seconds"]) >= {"decode", "refine", "total"}
    assert result["fit"]["rows"] == 50


def test_bundled_strogatz_data(capsys):
    assert cli.main(["fit", "strogatz:lv1", "--target", "label", *FAST]) == 0
    assert "400 rows, target 'label', features x, y" in capsys.readouterr().out


def _garbage_gzip(path):
    path.write_bytes(b"\x00\x01 definitely not gzip")


def _empty(path):
    path.write_text("")


def _header_only(path):
    path.write_text("a,b,energy\n")


def _text_columns(path):
    path.write_text("city,energy\nParis,1\nRome,2\nOslo,3\n")


ERRORS = {
    "missing file": ("nope.csv", None, "energy", "no such file"),
    "empty file": ("empty.csv", _empty, "energy", "is empty"),
    "header only": ("header.csv", _header_only, "energy", "has a header but no data rows"),
    "not gzip": ("bad.csv.gz", _garbage_gzip, "energy", "cannot read it as gzip-compressed"),
    "unknown target": ("data.csv", lambda p: TABLE.to_csv(p, index=False), "power",
                       "no column 'power' in the data; columns: mass, speed, energy"),
    "text column": ("text.csv", _text_columns, "energy",
                    "column 'city' has a non-numeric value 'Paris' at row 1"),
}


@pytest.mark.parametrize("case", ERRORS)
def test_unusable_data_gets_a_clear_error(tmp_path, capsys, case):
    name, write, target, message = ERRORS[case]
    if write is not None:
        write(tmp_path / name)
    assert cli.main(["fit", str(tmp_path / name), "--target", target, *FAST]) == 3  # DATA
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err
    assert captured.err.count("\n") == 1 and str(tmp_path / name) in captured.err


def test_simplified_shows_polynomials_expanded():
    import sympy

    from jaxsr.regressor.command import simplified

    x, y = sympy.symbols("x y")
    shown = lambda e: simplified(SimpleNamespace(sympy=lambda: e))
    assert shown(3.0 * x - 1.0 * ((x + y + y) * x)) == "-1.0*x**2 - 2.0*x*y + 3.0*x"
    assert shown(sympy.sin(x) * (x + 1)) == "(x + 1.0)*sin(x)"  # not a polynomial: as is
