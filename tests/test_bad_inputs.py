"""Every documented bad input (docs/errors.md) and what it gets: the message names the file,
column, row, option or field at fault, and the command line ends with one line on stderr and
the exit status of its kind. The table in docs/errors.md names each test here."""

from __future__ import annotations

import gzip
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jaxsr import cli, errors
from jaxsr.model import get_config, init_params
from jaxsr.regressor import SymbolicTransformerRegressor, inputs
from jaxsr.weights import (
    ParamsMismatchError,
    WeightsChecksumError,
    WeightsFormatError,
    load_weights,
    save_weights,
)

FAST = ["--model", "tiny", "--n-candidates", "2", "--max-bags", "1"]
GOOD = "a,b,y\n1,2,3\n2,3,5\n3,4,7\n4,5,9\n"


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    status = cli.main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert "Traceback" not in err
    return err


# ---------------------------------------------------------------------------- jaxsr fit: data


def _zip_two(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.csv", GOOD)
        archive.writestr("b.csv", GOOD)


def _text(text: str):
    return lambda path: path.write_text(text)


def _raw(data: bytes):
    return lambda path: path.write_bytes(data)


# case: (file name, writer, target, message); every message also names the file.
DATA_CASES = {
    "missing file": ("nope.csv", None, "y", "nope.csv: no such file"),
    "a directory": ("folder", lambda p: p.mkdir(), "y", "is a directory, not a data file"),
    "empty file": ("empty.csv", _text(""), "y", "is empty"),
    "blank lines only": ("blank.csv", _text("\n  \n\n"), "y", "is empty"),
    "header only": ("header.csv", _text("a,b,y\n"), "y", "has a header but no data rows"),
    "not gzip": ("bad.csv.gz", _raw(b"\x00\x01 not gzip"), "y",
                 "cannot read it as gzip-compressed data"),
    "not UTF-8": ("latin.csv", _raw("a,b,y\n1,2,caf\xe9\n".encode("latin-1")), "y",
                  "is not UTF-8 text (byte 0xe9 at offset 13)"),
    "zip of two files": ("two.csv.zip", _zip_two, "y", "a .zip must hold exactly one file"),
    "row with extra fields": ("ragged.csv", _text("a,b,y\n1,2,3\n1,2,3,4\n"), "y",
                              "line 3 has 4 fields but the header (line 1) has 3"),
    "first row longer than the header": ("wide.csv", _text("a,b,y\n1,2,3,4\n2,3,4\n"), "y",
                                         "line 2 has 4 fields but the header (line 1) has 3"),
    "row with missing fields": ("short.csv", _text("a,b,y\n1,2,3\n4,5\n6,7,8\n"), "y",
                                "row 2 has 2 field(s) but the header has 3"),
    "non-numeric cell": ("text.csv", _text("a,b\n1,2\n2,3\n3,4\n4,5\n5,6\n6,7\n7,abc\n"),
                         "b", "column 'b' has a non-numeric value 'abc' at row 7"),
    "empty cell": ("hole.csv", _text("a,b,y\n1,2,3\n2,,5\n3,4,7\n"), "y",
                   "column 'b' has an empty cell at row 2"),
    "missing marker": ("na.csv", _text("a,b,y\n1,2,3\n2,NA,5\n3,4,7\n"), "y",
                       "column 'b' has a missing value 'NA' at row 2"),
    "infinite value": ("inf.csv", _text("a,b,y\n1,2,3\n2,3,inf\n3,4,7\n"), "y",
                       "column 'y' has an infinite value 'inf' at row 2"),
    "decimal comma": ("euro.csv", _text("a;b;y\n1;2,5;3\n2;3;5\n3;4;7\n"), "y",
                      "'2,5' (a decimal comma: write 1.5, not 1,5) at row 1"),
    "several bad cells": ("many.csv", _text("a,b,y\n1,x,3\n2,x,5\n3,x,7\n"), "y",
                          "at row 1 (2 more bad cell(s) in this column)"),
    "repeated column name": ("dup.csv", _text("a,b,a,y\n1,2,3,4\n2,3,4,5\n"), "y",
                             "the column name 'a' appears 2 times in the header "
                             "(columns 1, 3)"),
    "unnamed column": ("unnamed.csv", _text("a,,y\n1,2,3\n2,3,4\n"), "y",
                       "column 2 has no name in the header (line 1)"),
    "unknown target": ("data.csv", _text(GOOD), "power",
                       "no column 'power' in the data; columns: a, b, y"),
    "target in another case": ("data.csv", _text(GOOD), "Y", "(did you mean 'y'?)"),
    "no header line": ("numbers.csv", _text("1,2,3\n2,3,5\n3,4,7\n"), "y",
                       "(the first line is read as the header)"),
    "target alone": ("alone.csv", _text("y\n1\n2\n3\n"), "y",
                     "the data has no column besides the target 'y'"),
    "one data row": ("row.csv", _text("a,y\n1,2\n"), "y",
                     "X has 1 sample(s) (rows); at least 2 are needed"),
    "target beyond 1e103": ("huge.csv", _text("a,y\n1,1e104\n2,3\n3,4\n"), "y",
                            "y reaches 1e+104; the model's float encoding stops near 1e+103"),
    "not a regular file": (os.devnull, None, "y", "is not a regular file"),
}


@pytest.mark.parametrize("case", DATA_CASES)
def test_fit_names_the_bad_data(tmp_path, capsys, case):
    name, write, target, message = DATA_CASES[case]
    path = Path(name) if os.path.isabs(name) else tmp_path / name
    if write is not None:
        write(path)
    status, out, err = _run(["fit", str(path), "--target", target, *FAST], capsys)
    assert status == errors.DATA and out == ""
    assert message in _one_line(err) and str(path) in err


def test_fit_names_an_unknown_bundled_dataset(capsys):
    status, _, err = _run(["fit", "strogatz:nope", "--target", "label"], capsys)
    assert status == errors.DATA
    assert "strogatz:nope: unknown Strogatz system 'nope'; known: bacres1" in _one_line(err)


@pytest.mark.parametrize("limit, value, message", [
    ("MAX_ROWS", 3, "has more than 3 data rows"),
    ("MAX_FEATURES", 1, "has 3 columns; at most 2 are read (the target and 1 features"),
    ("MAX_VALUES", 4, "has more than 2 data rows, the most read with 2 feature(s)"),
])
def test_fit_names_the_size_limit_it_exceeds(tmp_path, capsys, monkeypatch, limit, value,
                                             message):
    monkeypatch.setattr(inputs, limit, value)
    (tmp_path / "data.csv").write_text(GOOD)
    status, _, err = _run(["fit", str(tmp_path / "data.csv"), "--target", "y"], capsys)
    assert status == errors.DATA and message in _one_line(err)


def test_fit_reads_a_semicolon_file_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.replace(",", ";").encode())
    X, y = cli_load(path)
    assert list(X.columns) == ["a", "b"] and y.tolist() == [3, 5, 7, 9]


@pytest.mark.parametrize("sep", ["\t", " ", "   ", ", "])
def test_fit_sniffs_tab_and_whitespace_separators(tmp_path, sep):
    path = tmp_path / "data.dat"
    path.write_text(GOOD.replace(",", sep))
    X, y = cli_load(path)
    assert list(X.columns) == ["a", "b"] and X["b"].tolist() == [2, 3, 4, 5]


def test_fit_reads_compressed_tables(tmp_path):
    path = tmp_path / "data.csv.gz"
    path.write_bytes(gzip.compress(GOOD.replace(",", "\t").encode()))
    X, y = cli_load(path)
    assert X.shape == (4, 2) and y.tolist() == [3, 5, 7, 9]


def cli_load(path: Path):
    from jaxsr.regressor.command import load_data

    return load_data(str(path), "y")


# ---------------------------------------------------------------------------- usage (2)

USAGE_CASES = {
    "no target": (["fit", "data.csv"], "the following arguments are required: --target"),
    "negative --top": (["fit", "data.csv", "--target", "y", "--top", "-1"],
                       "argument --top: must be at least 0, got -1"),
    "zero candidates": (["fit", "data.csv", "--target", "y", "--n-candidates", "0"],
                        "argument --n-candidates: must be at least 1, got 0"),
    "text for a number": (["fit", "data.csv", "--target", "y", "--max-bags", "many"],
                          "argument --max-bags: expected an integer, got 'many'"),
    "NaN seconds": (["fit", "data.csv", "--target", "y", "--max-time", "nan"],
                    "argument --max-time: must be a finite number >= 0, got 'nan'"),
    "seed too large": (["fit", "data.csv", "--target", "y", "--seed", str(2**32)],
                       "argument --seed: must be below 2**32"),
    "unknown command": (["fitt"], "argument command: invalid choice: 'fitt'"),
    "unknown option": (["info", "--verbose"], "unrecognized arguments: --verbose"),
    "convert without OUT_DIR": (["convert", "model1.pt"],
                                "the following arguments are required: OUT_DIR"),
}


@pytest.mark.parametrize("case", USAGE_CASES)
def test_usage_errors_name_the_option(capsys, case):
    argv, message = USAGE_CASES[case]
    status, out, err = _run(argv, capsys)
    assert status == errors.USAGE and out == "" and message in _one_line(err)
    assert "--help" in err


def test_max_len_beyond_the_model_s_positions_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "data.csv").write_text(GOOD)
    status, _, err = _run(["fit", str(tmp_path / "data.csv"), "--target", "y", "--model",
                           "tiny", "--max-len", "5000"], capsys)
    positions = get_config("tiny").max_positions
    assert status == errors.USAGE
    assert f"--max-len 5000 exceeds the {positions} positions of the model tiny" in \
        _one_line(err)


# ---------------------------------------------------------------------------- models (4)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    config = get_config("tiny")
    return save_weights(tmp_path_factory.mktemp("w") / "tiny", init_params(config, 1), config)


def _edited_copy(weights: Path, folder: Path, edit) -> Path:
    folder.mkdir()
    for name in ("model.json", "params.npz"):
        (folder / name).write_bytes((weights / name).read_bytes())
    edit(folder)
    return folder


def _edit_json(change):
    def edit(folder: Path):
        meta = json.loads((folder / "model.json").read_text())
        change(meta)
        (folder / "model.json").write_text(json.dumps(meta))
    return edit


def _flip_params(folder: Path) -> None:
    data = bytearray((folder / "params.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "params.npz").write_bytes(bytes(data))


WEIGHTS_CASES = {
    "not JSON": (lambda f: (f / "model.json").write_text("{oops"), WeightsFormatError,
                 "model.json is not valid JSON"),
    "another format": (_edit_json(lambda m: m.update(format="other")), WeightsFormatError,
                       "model.json is not a jaxsr-weights file"),
    "newer version": (_edit_json(lambda m: m.update(version=2)), WeightsFormatError,
                      "has format version 2; this jaxsr reads 1"),
    "entry missing": (_edit_json(lambda m: m.pop("decoding")), WeightsFormatError,
                      "lacks the entries ['decoding']"),
    "entry of the wrong type": (_edit_json(lambda m: m.update(config=[1, 2])),
                                WeightsFormatError, "config must be a JSON object, got list"),
    "bad decoding default": (_edit_json(lambda m: m["decoding"].update(beam_temperature="hot")),
                             WeightsFormatError,
                             "decoding.beam_temperature must be a positive number, got 'hot'"),
    "edited vocabulary": (_edit_json(lambda m: m["decoder_vocab"].__setitem__(74, "<END>")),
                          WeightsFormatError,
                          "the decoder vocabulary is not jaxsr's (10292 words, jaxsr has "
                          "10292; first difference at id 74)"),
    "invalid config": (_edit_json(lambda m: m["config"].update(decoder_heads=5)),
                       WeightsFormatError, "decoder_dim 64 is not a multiple of decoder_heads 5"),
    "config that does not fit the arrays": (
        _edit_json(lambda m: m["config"].update(decoder_layers=3)), ParamsMismatchError,
        "missing: decoder/attentions_2/q_lin/kernel"),
    "edited arrays": (_flip_params, WeightsChecksumError, "params.npz has sha256"),
    "arrays missing": (lambda f: (f / "params.npz").unlink(), WeightsFormatError,
                       "params.npz is missing (model.json refers to it)"),
}


@pytest.mark.parametrize("case", WEIGHTS_CASES)
def test_bad_weights_get_named_errors(tmp_path, weights, case):
    edit, kind, message = WEIGHTS_CASES[case]
    folder = _edited_copy(weights, tmp_path / "w", edit)
    with pytest.raises(kind) as caught:
        load_weights(folder)
    assert message in str(caught.value)


def test_fit_with_bad_weights_exits_with_the_model_status(tmp_path, weights, capsys):
    folder = _edited_copy(weights, tmp_path / "w", _flip_params)
    (tmp_path / "data.csv").write_text(GOOD)
    status, out, err = _run(["fit", str(tmp_path / "data.csv"), "--target", "y", "--model",
                             str(folder)], capsys)
    assert status == errors.MODEL and out == ""
    assert f"cannot use --model '{folder}'" in _one_line(err) and "sha256" in err


MODEL_CASES = {
    "fit --model that does not exist": (["fit", "DATA", "--target", "y", "--model", "nowhere"],
                                        "neither a model config name"),
    "info --config that does not exist": (["info", "--config", "nowhere"],
                                          "--config 'nowhere' is neither a config"),
    "convert a file that is not a checkpoint": (["convert", "DATA", "OUT"],
                                                "is not a PyTorch zip checkpoint"),
    "convert a missing file": (["convert", "missing.pt", "OUT"], "does not exist"),
}


@pytest.mark.parametrize("case", MODEL_CASES)
def test_model_errors_exit_with_the_model_status(tmp_path, capsys, case):
    argv, message = MODEL_CASES[case]
    (tmp_path / "data.csv").write_text(GOOD)
    names = {"DATA": str(tmp_path / "data.csv"), "OUT": str(tmp_path / "out"),
             "missing.pt": str(tmp_path / "missing.pt")}
    status, _, err = _run([names.get(a, a) for a in argv], capsys)
    assert status == errors.MODEL and message in _one_line(err)


def test_convert_into_a_file_exits_with_the_output_status(tmp_path, capsys):
    (tmp_path / "taken").write_text("a file, not a folder")
    status, _, err = _run(["convert", "model1.pt", str(tmp_path / "taken")], capsys)
    assert status == errors.OUTPUT
    assert f"cannot create OUT_DIR {tmp_path / 'taken'}" in _one_line(err)


# ---------------------------------------------------------------------------- jaxsr train

TRAIN_CASES = {
    "no checkpoint and no --config": ([], "has no checkpoint to take the config from"),
    "unknown recipe": (["--config", "huge"], "--config 'huge' is neither a recipe"),
    "bad value": (["--config", "tiny", "--set", "lr=-1"], "TrainConfig.lr"),
    "unknown field": (["--config", "tiny", "--set", "learning_rate=1"],
                      "unknown TrainConfig fields: ['learning_rate']"),
    "not FIELD=VALUE": (["--config", "tiny", "--set", "lr"], "override 'lr' is not FIELD=VALUE"),
    "negative --steps": (["--config", "tiny", "--steps", "-3"], "TrainConfig.steps"),
}


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_train_configuration_errors_are_usage_errors(tmp_path, capsys, case):
    options, message = TRAIN_CASES[case]
    status, _, err = _run(["train", "--workdir", str(tmp_path / "run"), *options], capsys)
    assert status == errors.USAGE and message in _one_line(err)


def test_a_diverging_run_exits_with_the_training_status(tmp_path, capsys, monkeypatch):
    from jaxsr.train import command
    from jaxsr.train.loop import NonFiniteLossError

    def diverge(args):
        raise NonFiniteLossError("non-finite training loss at step 3; the last checkpoint "
                                 "(step 2) is intact")

    monkeypatch.setattr(command, "run", diverge)
    status, _, err = _run(["train", "--config", "tiny", "--workdir", str(tmp_path)], capsys)
    assert status == errors.TRAINING and "non-finite training loss at step 3" in _one_line(err)


# ---------------------------------------------------------------------------- --debug, bugs


def test_debug_prints_the_traceback_and_keeps_the_status(tmp_path, capsys):
    (tmp_path / "data.csv").write_text("a,y\n1,x\n2,3\n")
    status, _, err = _run(["--debug", "fit", str(tmp_path / "data.csv"), "--target", "y"],
                          capsys)
    assert status == errors.DATA
    assert err.startswith("Traceback") and "DataError" in err
    assert err.rstrip().splitlines()[-1].startswith("error: ")
    status, _, err = _run(["fit", str(tmp_path / "data.csv"), "--target", "y", "--debug"],
                          capsys)
    assert status == errors.DATA and err.startswith("Traceback")


def test_a_bug_is_one_line_with_the_internal_status(capsys, monkeypatch):
    def broken(args):
        raise TypeError("unsupported operand")

    monkeypatch.setitem(cli.HANDLERS, "info", broken)
    status, _, err = _run(["info"], capsys)
    assert status == errors.INTERNAL
    assert "internal error: TypeError: unsupported operand" in _one_line(err)
    assert "--debug" in err


def test_ctrl_c_is_one_line_with_the_interrupted_status(capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.HANDLERS, "info", interrupted)
    status, _, err = _run(["info"], capsys)
    assert status == errors.INTERRUPTED and _one_line(err) == "error: interrupted\n"


def test_a_multi_line_message_is_joined_into_one_line(capsys, monkeypatch):
    def listing(args):
        raise errors.CommandError("3 problems:\n  first\n  second\n  third", errors.MODEL)

    monkeypatch.setitem(cli.HANDLERS, "info", listing)
    status, _, err = _run(["info"], capsys)
    assert status == errors.MODEL and "3 problems:; first; second; third" in _one_line(err)


# ---------------------------------------------------------------------------- the regressor


def _frame(**columns):
    return pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], **columns})


Y4 = np.array([1.0, 2.0, 3.0, 4.0])
REGRESSOR_CASES = {
    "text cell": (lambda: (_frame(city=["Oslo", "Rome", "Paris", "Bern"]), Y4, None),
                  "X column 'city' has a non-numeric value 'Oslo' at row 0"),
    "missing cell in an object column": (
        lambda: (_frame(b=pd.Series([1.0, None, 2.0, 3.0], dtype=object)), Y4, None),
        "X column 'b' has a missing value (None) at row 1"),
    "complex cell": (lambda: (_frame(b=pd.Series([1, 2j, 3, 4], dtype=object)), Y4, None),
                     "X column 'b' has a non-numeric value 2j at row 1"),
    "complex column": (lambda: (_frame(b=np.array([1, 2j, 3, 4])), Y4, None),
                       "X column 'b' holds complex numbers (dtype complex128)"),
    "mixed column names": (lambda: (pd.DataFrame({"a": [1.0, 2.0], 0: [3.0, 4.0]}),
                                    Y4[:2], None),
                           "X's column names mix strings with int (0)"),
    "NaN in X": (lambda: (_frame(b=[1.0, np.nan, 2.0, 3.0]), Y4, None),
                 "X contains NaN (1 value(s)) at rows 1, columns b"),
    "inf in y": (lambda: (_frame(), np.array([1.0, np.inf, 2.0, 3.0]), None),
                 "y contains inf (1 value(s)) at rows 1"),
    "y of another length": (lambda: (_frame(), Y4[:3], None), "X has 4 rows but y has 3"),
    "weights of another length": (lambda: (_frame(), Y4, np.ones(3)),
                                  "X has 4 rows but sample_weight has 3"),
    "negative weight": (lambda: (_frame(), Y4, np.array([1.0, -1.0, 1.0, 1.0])),
                        "sample_weight must be finite and non-negative"),
    "one weighted row": (lambda: (_frame(), Y4, np.array([1.0, 0.0, 0.0, 0.0])),
                         "at least 2 samples need a non-zero weight"),
    "y beyond 1e103": (lambda: (_frame(), Y4 * 1e103, None), "y reaches 4e+103"),
}


@pytest.mark.parametrize("case", REGRESSOR_CASES)
def test_the_regressor_names_bad_input(case):
    make, message = REGRESSOR_CASES[case]
    X, y, weight = make()
    with pytest.raises(ValueError) as caught:
        # Every check of fit, without loading a model (fit calls this first).
        SymbolicTransformerRegressor("tiny")._prepare(X, y, weight, 10, 0)
    assert message in str(caught.value)


@pytest.mark.parametrize("limit, value, shape, message", [
    ("MAX_ROWS", 10, (11, 2), "X has 11 rows; the limit is 10 (inputs.MAX_ROWS)"),
    ("MAX_FEATURES", 3, (5, 4), "X has 4 features; the limit is 3 (inputs.MAX_FEATURES)"),
    ("MAX_VALUES", 20, (7, 3), "7 rows x 3 features = 21 values; the limit is 20"),
])
def test_the_regressor_names_the_size_limit_it_exceeds(monkeypatch, limit, value, shape,
                                                       message):
    monkeypatch.setattr(inputs, limit, value)
    X = np.random.default_rng(0).normal(size=shape)
    with pytest.raises(ValueError) as caught:
        SymbolicTransformerRegressor("tiny")._prepare(X, X[:, 0], None, 10, 0)
    assert message in str(caught.value)


# ---------------------------------------------------------------------------- experiments


def test_the_harness_names_a_bad_fit_setting():
    from experiments import common

    base = common.FitSettings()
    with pytest.raises(SystemExit, match="--fit expects FIELD=VALUE, got 'n_candidates'"):
        common.fit_settings(base, ["n_candidates"])
    with pytest.raises(SystemExit, match="--fit: .*unexpected keyword argument 'beams'"):
        common.fit_settings(base, ["beams=3"])


def test_the_harness_names_an_output_folder_it_cannot_create(tmp_path):
    from experiments import common

    (tmp_path / "taken").write_text("a file")
    args = common.parser("test").parse_args(["--out", str(tmp_path / "taken")])
    with pytest.raises(SystemExit, match=f"--out {tmp_path / 'taken'}: cannot create"):
        common.start(args)


# ---------------------------------------------------------------------------- the docs


def _documented_tests() -> list[tuple[str, str, str | None]]:
    """(file, function, case or None) of every test docs/errors.md names; a row written
    ``...[case]`` continues the test named above it."""
    import re

    text = (Path(__file__).resolve().parents[1] / "docs" / "errors.md").read_text()
    found, last = [], None
    for match in re.finditer(r"`(?:(test_\w+\.py)::(\w+)|\.\.\.)(?:\[([^\]]+)\])?`", text):
        if match.group(1):
            last = match.group(1), match.group(2)
        assert last is not None, f"{match.group(0)} continues no test"
        found.append((*last, match.group(3)))
    return found


def test_every_test_docs_errors_names_exists():
    documented = _documented_tests()
    assert len({(f, name, case) for f, name, case in documented}) >= 40
    here = Path(__file__).resolve().parent
    for file, name, case in documented:
        source = (here / file).read_text()
        assert f"def {name}(" in source, f"{file}::{name}"
        if case is not None:
            assert f'"{case}"' in source, f"{file}::{name}[{case}]"
