"""Property-based tests of the readers of untrusted files and tables: the reference-checkpoint
converter, the weights loader, ``jaxsr fit``'s table reader and the regressor's input checks.
Whatever the bytes, each gives a valid result or its own named error, quickly and without
running code or allocating more than the input describes."""

from __future__ import annotations

import io
import json
import pickletools
import re
import struct
import sys
import time
import tracemalloc
import zipfile
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import event, given, note, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from hypothesis.extra import pandas as hpd

from jaxsr.regressor import SymbolicTransformerRegressor, inputs
from jaxsr.regressor.table import DataError, read_table
from jaxsr.weights import (
    CheckpointError,
    ParamsMismatchError,
    WeightsFormatError,
    check_vocabularies,
    config_from_reference,
    convert_reference,
    load_model,
    map_reference_state_dict,
    read_reference_checkpoint,
    unpickle_checkpoint,
)
from jaxsr.weights.format import DEFAULT_DECODING

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CHECKPOINT = FIXTURES / "reference_tiny.pt"
# Per example: a conversion takes ~0.3 s here; ten times that means something spins.
SECONDS_PER_FILE = 10.0
SLOW = settings(max_examples=max(5, settings.default.max_examples // 4))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hostile")


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------- checkpoints


@cache
def _entries() -> dict[str, bytes]:
    with zipfile.ZipFile(CHECKPOINT) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


@cache
def _pickle_name() -> str:
    return next(name for name in _entries() if name.endswith("/data.pkl"))


@cache
def _opcode_spans() -> list[tuple[int, int]]:
    """(start, end) bytes of every opcode with its argument in the checkpoint's pickle."""
    data = _entries()[_pickle_name()]
    starts = [pos for _, _, pos in pickletools.genops(data)] + [len(data)]
    return list(zip(starts[:-1], starts[1:]))


def _zip_bytes(entries: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return out.getvalue()


class Mutated(bytes):
    """Mutated file contents that print as their size and what was changed (hypothesis
    prints a failing example; megabytes of repr would bury it)."""

    def __new__(cls, data: bytes, edits: list[str]):
        obj = super().__new__(cls, data)
        obj.edits = edits
        return obj

    def __repr__(self) -> str:
        return f"<{len(self)} bytes after {'; '.join(self.edits)}>"


def _mutate(data: bytes, draw, start: int = 0, end: int | None = None) -> bytes:
    """One edit of ``data`` within [start, end): a byte changed, bytes deleted or inserted,
    a slice repeated, or the tail cut off."""
    end = len(data) if end is None else end
    i = draw(st.integers(start, max(start, end - 1)))
    kind = draw(st.sampled_from(["set", "delete", "insert", "repeat", "truncate"]))
    note(f"{kind} at byte {i}")
    if kind == "set":
        return data[:i] + bytes([draw(st.integers(0, 255))]) + data[i + 1:]
    if kind == "delete":
        return data[:i] + data[i + draw(st.integers(1, 16)):]
    if kind == "insert":
        return data[:i] + draw(st.binary(min_size=1, max_size=16)) + data[i:]
    if kind == "repeat":
        return data[:i] + data[i:i + draw(st.integers(1, 64))] * 2 + data[i + 1:]
    return data[:i]


@st.composite
def mutated_checkpoints(draw) -> bytes:
    entries = dict(_entries())
    where = draw(st.sampled_from(["pickle opcode", "pickle opcode", "pickle bytes", "storage",
                                  "zip bytes"]))
    event(where)
    name = _pickle_name()
    note(f"edit the {where}")
    if where == "pickle opcode":  # an opcode or its argument: the structure, not a word
        start, end = draw(st.sampled_from(_opcode_spans()))
        entries[name] = _mutate(entries[name], draw, start, end)
    elif where == "pickle bytes":
        entries[name] = _mutate(entries[name], draw)
    elif where == "storage":
        key = draw(st.sampled_from([n for n in entries if "/data/" in n]))
        entries[key] = _mutate(entries[key], draw)
    else:  # the archive itself: headers, offsets, CRCs
        return Mutated(_mutate(CHECKPOINT.read_bytes(), draw), [where])
    for _ in range(draw(st.integers(0, 2))):  # sometimes several edits
        start, end = draw(st.sampled_from(_opcode_spans()))
        if end <= len(entries[name]):
            entries[name] = _mutate(entries[name], draw, start, end)
    return Mutated(_zip_bytes(entries), [where])


def _convert_in_memory(path: Path) -> dict:
    """Everything ``convert_reference`` does but writing the result."""
    checkpoint = read_reference_checkpoint(path)
    check_vocabularies(checkpoint)
    config = config_from_reference(checkpoint)
    return map_reference_state_dict(checkpoint.state_dict, config)


@pytest.fixture(scope="module")
def converted_once() -> None:
    """One conversion of the intact file first: JAX imports modules lazily on first use,
    which the import check below must not mistake for the file's doing."""
    _convert_in_memory(CHECKPOINT)


@SLOW
@pytest.mark.filterwarnings("ignore:invalid escape sequence:DeprecationWarning")  # pickletools
@given(mutated_checkpoints())
def test_mutated_checkpoints_convert_or_raise_checkpoint_errors(scratch, converted_once, data):
    path = _write(scratch, "mutated.pt", data)
    modules = set(sys.modules)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        params = _convert_in_memory(path)
        event("converted")
        assert params["decoder"]["embeddings"]["embedding"].shape[0] == 10292
    except CheckpointError as err:
        event(type(err).__name__)
        assert str(err)
    finally:
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert seconds < SECONDS_PER_FILE
    # The archive's largest possible content, a few times over (copies), never more.
    assert peak < 8 * len(data) + (32 << 20), f"{peak / 1e6:.0f} MB for {len(data)} bytes"
    # Nothing named in the file was imported (zipfile may load a codec for odd names).
    assert {m for m in set(sys.modules) - modules if not m.startswith("encodings.")} == set()


def _tensor_pickle(size: tuple[int, ...], stride: tuple[int, ...], numel: int) -> bytes:
    """A protocol-2 pickle of one tensor as torch.save writes it (storage key "0")."""
    def text(s: str) -> bytes:
        return b"X" + struct.pack("<I", len(s)) + s.encode()

    def ints(values) -> bytes:
        return b"(" + b"".join(b"J" + struct.pack("<i", v) for v in values) + b"t"

    storage = (b"(" + text("storage") + b"ctorch\nFloatStorage\n" + text("0") + text("cpu")
               + b"J" + struct.pack("<i", numel) + b"tQ")
    return (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(" + storage + b"J\x00\x00\x00\x00"
            + ints(size) + ints(stride) + b"\x89}t" + b"R.")


def _torch_zip(path: Path, pickle_bytes: bytes, raw: bytes) -> Path:
    return _write(path.parent, path.name, _zip_bytes({
        "archive/data.pkl": pickle_bytes, "archive/byteorder": b"little",
        "archive/data/0": raw}))


def test_a_broadcast_tensor_cannot_ask_for_more_memory_than_its_storage(tmp_path):
    """Stride 0 repeats one element: 10**8 of them would be 400 MB from a 4-byte storage."""
    path = _torch_zip(tmp_path / "bomb.pt", _tensor_pickle((10**8,), (0,), 1),
                      np.ones(1, np.float32).tobytes())
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="more elements than its storage"):
            unpickle_checkpoint(path)
        assert tracemalloc.get_traced_memory()[1] < 16 << 20
    finally:
        tracemalloc.stop()


def test_a_memo_index_beyond_the_pickle_cannot_allocate_memory(tmp_path):
    """The C unpickler sizes its memo table by the largest index it sees: this 12-byte
    pickle would make it allocate 1 GB."""
    bomb = b"\x80\x02Nr" + (2**26).to_bytes(4, "little") + b"."
    path = _torch_zip(tmp_path / "memo.pt", bomb, b"")
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="memo entry 67108864 at byte 3, after only 3"):
            unpickle_checkpoint(path)
        assert tracemalloc.get_traced_memory()[1] < 16 << 20
    finally:
        tracemalloc.stop()


def test_a_damaged_zip_directory_is_a_checkpoint_error(tmp_path):
    data = bytearray(CHECKPOINT.read_bytes())
    with zipfile.ZipFile(CHECKPOINT) as archive:  # the entry read while opening the archive
        offset = next(i.header_offset for i in archive.infolist()
                      if i.filename.endswith("/byteorder"))
    data[offset:offset + 4] = b"JUNK"  # its local header's signature
    path = _write(tmp_path, "damaged.pt", bytes(data))
    with pytest.raises(CheckpointError, match="damaged zip archive: Bad magic number"):
        convert_reference(path, tmp_path / "out")
    assert not (tmp_path / "out" / "params.npz").exists()


# ---------------------------------------------------------------------------- weights


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    return convert_reference(CHECKPOINT, tmp_path_factory.mktemp("weights") / "w")


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.text(max_size=6),
              st.floats(allow_nan=False, allow_infinity=False)),
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.dictionaries(st.text(max_size=4), children, max_size=3)),
    max_leaves=6)


@st.composite
def json_edits(draw, meta: dict) -> dict:
    """``meta`` with one entry (top level, or one of config/decoding/metadata) replaced by a
    random JSON value, or deleted."""
    meta = json.loads(json.dumps(meta))
    parent = meta
    section = draw(st.sampled_from([None, "config", "decoding", "metadata"]))
    if section is not None and isinstance(meta.get(section), dict) and meta[section]:
        parent = meta[section]
    key = draw(st.sampled_from(sorted(parent)))
    if draw(st.integers(0, 4)) == 0:
        del parent[key]
    else:
        parent[key] = draw(json_values)
    return meta


def _check_loaded(weights) -> None:
    """A load that succeeded gave weights the regressor can use."""
    assert weights.params["decoder"]["embeddings"]["embedding"].shape == (
        weights.config.decoder_vocab_size, weights.config.decoder_dim)
    for key in ("beam_temperature", "max_generated_output_len"):
        value = weights.decoding.get(key, DEFAULT_DECODING[key])
        assert isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


@SLOW
@given(st.data())
def test_mutated_weights_load_or_raise_a_named_error(scratch, weights_dir, data):
    folder = scratch / "weights"
    folder.mkdir(exist_ok=True)
    meta_text = (weights_dir / "model.json").read_text()
    arrays = (weights_dir / "params.npz").read_bytes()
    target = data.draw(st.sampled_from(["params.npz", "model.json bytes", "model.json entry"]))
    event(target)
    if target == "params.npz":
        arrays = _mutate(arrays, data.draw)
    elif target == "model.json bytes":
        meta_text = _mutate(meta_text.encode(), data.draw).decode("utf-8", "replace")
    else:
        meta_text = json.dumps(data.draw(json_edits(json.loads(meta_text))))
    (folder / "model.json").write_text(meta_text)
    (folder / "params.npz").write_bytes(arrays)
    try:
        _check_loaded(load_model(str(folder)))
        event("loaded")
    except (WeightsFormatError, ParamsMismatchError) as err:
        event(type(err).__name__)
        assert str(folder) in str(err) or "config" in str(err) or "vocabulary" in str(err)
        if target == "params.npz" and arrays != (weights_dir / "params.npz").read_bytes():
            assert "sha256" in str(err)


# ---------------------------------------------------------------------------- tables

column_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.\-]{0,7}", fullmatch=True)
cell_values = st.one_of(st.floats(allow_nan=False, allow_infinity=False, width=64),
                        st.integers(-10**6, 10**6).map(float))


@st.composite
def numeric_tables(draw):
    names = draw(st.lists(column_names, min_size=2, max_size=4, unique=True))
    rows = draw(st.integers(1, 6))
    values = draw(hnp.arrays(np.float64, (rows, len(names)), elements=cell_values))
    return pd.DataFrame(values, columns=names)


def _table_text(table: pd.DataFrame, sep: str) -> str:
    header = sep.join(table.columns)
    lines = [sep.join(repr(float(v)) for v in row) for row in table.itertuples(index=False)]
    return "\n".join([header, *lines]) + "\n"


@settings(max_examples=max(10, settings.default.max_examples // 2))
@given(numeric_tables(), st.sampled_from([",", ";", "\t", " ", "  "]), st.booleans(),
       st.sampled_from(["data.csv", "data.tsv", "data.txt", "data"]))
def test_numeric_tables_read_back_exactly_whatever_the_separator(scratch, table, sep, bom,
                                                                   name):
    path = _write(scratch, name, (b"\xef\xbb\xbf" if bom else b"")
                  + _table_text(table, sep).encode())
    read = read_table(str(path))
    assert list(read.columns) == list(table.columns)
    np.testing.assert_array_equal(read.to_numpy(), table.to_numpy())


@settings(max_examples=max(10, settings.default.max_examples // 2))
@given(st.binary(max_size=300), st.sampled_from(["x.csv", "x.tsv", "x.csv.gz", "x.txt"]))
def test_arbitrary_bytes_read_as_a_table_or_a_data_error(scratch, data, name):
    path = _write(scratch, name, data)
    try:
        table = read_table(str(path))
    except DataError as err:
        assert str(path) in str(err)
        return
    assert len(table) >= 1 and all(dtype == np.float64 for dtype in table.dtypes)
    assert np.isfinite(table.to_numpy()).all()


@st.composite
def hostile_cells(draw):
    """A text table with one bad cell somewhere."""
    rows, columns = draw(st.integers(1, 8)), draw(st.integers(2, 4))
    cells = [[repr(draw(cell_values)) for _ in range(columns)] for _ in range(rows)]
    bad = draw(st.sampled_from(["abc", "", "NA", "nan", "inf", "-inf", "1,5", "1e999", "x1",
                                "True", "0x10"]))
    row, column = draw(st.integers(0, rows - 1)), draw(st.integers(0, columns - 1))
    cells[row][column] = bad
    return cells, (row, column, bad)


@given(hostile_cells(), st.sampled_from([",", ";", "\t"]))
def test_the_first_bad_cell_is_named_with_its_column_and_row(scratch, table, sep):
    cells, (row, column, bad) = table
    names = [f"c{j}" for j in range(len(cells[0]))]
    text = "\n".join(sep.join(line) for line in [names, *cells]) + "\n"
    path = _write(scratch, "cells.csv", text.encode())
    with pytest.raises(DataError) as caught:
        read_table(str(path))
    message = str(caught.value)
    if sep in bad:  # "1,5" in a comma-separated file: a row with one field too many
        assert f"line {row + 2} has {len(names) + 1} fields but the header (line 1)" in message
        return
    assert f"column '{names[column]}'" in message and f"at row {row + 1}" in message
    if bad.strip():
        assert repr(bad) in message
    kind = {"": "an empty cell", "NA": "a missing value", "nan": "a missing value",
            "inf": "an infinite value", "-inf": "an infinite value",
            "1e999": "an infinite value"}.get(bad, "a non-numeric value")
    assert kind in message


# ---------------------------------------------------------------------------- the regressor


frame_dtypes = st.sampled_from(["float64", "float32", "int64", "bool", "object", "str",
                                "category", "datetime64[ns]", "Int64", "Float64",
                                "complex128"])


@st.composite
def frames(draw):
    rows = draw(st.integers(0, 6))
    names = draw(st.lists(st.one_of(st.text(max_size=5), st.integers(-2, 2)), min_size=0,
                          max_size=4, unique_by=str))
    columns = [hpd.column(name, dtype=object, elements=st.one_of(
        st.floats(), st.integers(-5, 5), st.none(), st.text(max_size=3),
        st.booleans())) for name in names]
    frame = draw(hpd.data_frames(columns, index=hpd.range_indexes(rows, rows)))
    for name in names:
        dtype = draw(frame_dtypes)
        try:
            frame[name] = frame[name].astype(dtype)
        except (TypeError, ValueError, OverflowError):
            pass  # the column keeps dtype object
    return frame


@settings(max_examples=max(10, settings.default.max_examples // 2))
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # pandas casting random cells
@given(st.deferred(lambda: frames()), st.sampled_from([",", ";", "\t"]))
def test_any_frame_written_by_pandas_reads_back_or_gets_a_data_error(scratch, frame, sep):
    path = scratch / "frame.csv"
    frame.to_csv(path, sep=sep, index=False)
    try:
        table = read_table(str(path))
    except DataError as err:
        assert str(path) in str(err)
        event(re.sub(r"'[^']*'|\S*/\S*|\d+", "_", str(err))[:50])  # the kind of error
        return
    event("read")
    assert table.shape[0] == len(frame) and table.shape[1] <= max(frame.shape[1], 1) + 1
    assert np.isfinite(table.to_numpy()).all()


@pytest.mark.filterwarnings("ignore:column names changed:UserWarning",
                            "ignore::RuntimeWarning")  # pandas casting random cells
@given(frames(), st.data())
def test_the_regressor_checks_any_frame_with_named_errors(frame, data):
    """``_prepare`` (every input check of ``fit``, without a model) on frames of any dtypes,
    shapes and column names: a ValueError that names the problem, or valid prepared data."""
    y = data.draw(hnp.arrays(np.float64, len(frame), elements=st.floats(-1e3, 1e3)))
    estimator = SymbolicTransformerRegressor("tiny")
    try:
        problem = estimator._prepare(frame, y, None, 10, 0)
    except ValueError as err:
        event(" ".join(str(err).split()[:4]))
        assert len(str(err)) > 10
        return
    event("prepared")
    assert problem.X.shape == (len(y), frame.shape[1]) and np.isfinite(problem.X).all()
    assert len(problem.names) == len(set(problem.names)) == frame.shape[1]
    assert all(name.isidentifier() for name in problem.names)


@given(st.lists(st.text(max_size=6), max_size=6))
def test_any_column_names_become_distinct_plain_symbols(columns):
    """Names with characters that cannot continue an identifier ("²") or that Python
    normalises ("ﬁ" -> "fi") once made the renaming loop forever."""
    import sympy

    names, renamed = inputs.formula_names(columns, len(columns))
    assert len(names) == len(set(names)) == len(columns)
    for column, name in zip(columns, names):
        assert name.isidentifier() and sympy.Symbol(name).name == name
        assert sympy.sympify(name) == sympy.Symbol(name)
        assert name == column or renamed.get(column) is not None


def test_size_limits_are_named():
    with pytest.raises(ValueError, match=r"1,000,001 rows; the limit is 1,000,000"):
        inputs.check_size(inputs.MAX_ROWS + 1, 1)
    with pytest.raises(ValueError, match=r"1,001 features; the limit is 1,000"):
        inputs.check_size(10, inputs.MAX_FEATURES + 1)
    with pytest.raises(ValueError, match=r"values; the limit is 20,000,000"):
        inputs.check_size(100_000, 201)
    with pytest.raises(ValueError, match="1 sample"):
        inputs.check_size(1, 3)
    inputs.check_size(inputs.MAX_ROWS, inputs.MAX_VALUES // inputs.MAX_ROWS)  # at the limits
