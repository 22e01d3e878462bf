"""Reading a data table for ``jaxsr fit``: every problem becomes a ``DataError`` that names
the file and the line, row, column or cell at fault.

- Compression follows the suffix (.gz, .bz2, .xz, .zip; .zst with the zstandard package).
- The text is UTF-8; a byte-order mark is ignored.
- The separator is sniffed from the first lines: comma, semicolon or tab (the one that
  splits every line into the same number of fields, more than one), else runs of
  whitespace. The suffix (.csv, .tsv, .tab) only breaks ties.
- The first line names the columns; names must be unique and non-empty.
- Every cell must be a number: a non-numeric, empty, missing ("NA", "nan") or infinite cell
  is reported with its column, its row (data rows count from 1; the header is not a row)
  and its text. Rows and columns are bounded by ``inputs.MAX_ROWS``, ``MAX_FEATURES``,
  ``MAX_VALUES``.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import io
import lzma
import re
import warnings
import zipfile
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

from jaxsr.regressor import inputs

COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zip": "zip", ".zst": "zstd"}
SEPARATORS = (",", ";", "\t")
SUFFIX_SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
WHITESPACE = r"\s+"
SNIFF_BYTES = 1 << 16
SNIFF_LINES = 50
# Cells pandas reads as NaN; reported as missing rather than as non-numeric.
MISSING_WORDS = {"", "na", "n/a", "nan", "-nan", "null", "none", "<na>", "#n/a", "-1.#ind",
                 "1.#qnan", "nat"}
_DECIMAL_COMMA = re.compile(r"[+-]?\d+,\d+\Z")
_PARSER_FIELDS = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class DataError(ValueError):
    """The data file cannot be used; the message names the file and what is wrong."""


def read_table(spec: str):
    """A DataFrame of float64 columns named by the header, from a file path or
    ``strogatz:NAME``; DataError naming the problem."""
    if spec.startswith("strogatz:"):
        return _bundled_strogatz(spec.split(":", 1)[1])
    path = _existing_file(spec)
    compression = _compression(path)
    head = _head_lines(path, compression)
    sep = sniff_separator([line for _, line in head], SUFFIX_SEPARATORS.get(_plain_suffix(path)))
    names = _header_names(path, head[0], sep)
    table = _parse(path, compression, sep, names, head)
    return _numeric(path, compression, sep, table)


def _bundled_strogatz(name: str):
    import pandas as pd

    from jaxsr import datasets

    try:
        problem = datasets.strogatz(name)
    except ValueError as err:  # names the known systems
        raise DataError(f"strogatz:{name}: {err}") from None
    table = pd.DataFrame(problem.X, columns=list(problem.feature_names))
    table["label"] = problem.y
    return table


# ---------------------------------------------------------------------------- the file


def _existing_file(spec: str) -> Path:
    path = Path(spec)
    if not path.exists():
        raise DataError(f"{spec}: no such file")
    if path.is_dir():
        raise DataError(f"{spec} is a directory, not a data file")
    if not path.is_file():
        raise DataError(f"{spec} is not a regular file")
    return path


def _compression(path: Path) -> str | None:
    suffix = path.suffix.lower()
    return COMPRESSIONS.get(suffix)


def _plain_suffix(path: Path) -> str:
    """The suffix that says the format: "data.tsv.gz" -> ".tsv"."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _open_binary(path: Path, compression: str | None):
    if compression is None:
        return open(path, "rb")
    if compression == "gzip":
        return gzip.open(path, "rb")
    if compression == "bz2":
        return bz2.open(path, "rb")
    if compression == "xz":
        return lzma.open(path, "rb")
    if compression == "zip":
        return _zip_member(path)
    return _zstd_stream(path)


def _zip_member(path: Path):
    archive = zipfile.ZipFile(path)
    members = [n for n in archive.namelist() if not n.endswith("/")]
    if len(members) != 1:
        raise DataError(f"{path}: a .zip must hold exactly one file, it holds {len(members)}")
    return archive.open(members[0])


def _zstd_stream(path: Path):
    try:
        import zstandard
    except ImportError:
        raise DataError(f"{path}: reading .zst files needs the zstandard package "
                        "(pip install zstandard)") from None
    return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"))


# Errors a damaged compressed file or an unreadable file raise while being read.
_READ_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError, zipfile.BadZipFile,
                NotImplementedError)


def _head_lines(path: Path, compression: str | None) -> list[tuple[int, str]]:
    """The first non-blank lines (at most SNIFF_LINES) with their 1-based line numbers,
    decoded, without a byte-order mark."""
    try:
        with _open_binary(path, compression) as f:
            raw = f.read(SNIFF_BYTES + 1)
    except DataError:
        raise
    except _READ_ERRORS as err:
        raise DataError(f"{path}: cannot read it{_as_compressed(compression)}: "
                        f"{_reason(err)}") from None
    if not raw.strip():
        raise DataError(f"{path} is empty")
    truncated = len(raw) > SNIFF_BYTES
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    try:
        text = decoder.decode(raw[:SNIFF_BYTES], final=not truncated)
    except UnicodeDecodeError as err:
        raise DataError(_not_utf8(path, err)) from None
    lines = _LINE_BREAK.split(text)  # as pandas splits (str.splitlines also splits at \x1c)
    if truncated and len(lines) > 1:
        lines = lines[:-1]  # possibly cut in the middle
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()][:SNIFF_LINES]
    if not numbered:
        raise DataError(f"{path} is empty: it has only blank lines")
    return numbered


def _as_compressed(compression: str | None) -> str:
    return f" as {compression}-compressed data" if compression else ""


def _reason(err: BaseException) -> str:
    return str(err) or type(err).__name__


def _not_utf8(path: Path, err: UnicodeDecodeError) -> str:
    byte = err.object[err.start:err.start + 1].hex()
    return (f"{path} is not UTF-8 text (byte 0x{byte} at offset {err.start}); save it as "
            "UTF-8")


# ---------------------------------------------------------------------------- separator


def sniff_separator(lines: list[str], preferred: str | None = None) -> str:
    """The separator that splits every line into the same number (> 1) of fields: comma,
    semicolon or tab, the one giving the most fields (``preferred`` first on a tie), else
    runs of whitespace; ``preferred`` or a comma when nothing splits the lines."""
    candidates = list(dict.fromkeys([preferred, *SEPARATORS] if preferred else SEPARATORS))
    best, best_fields = None, 1
    for sep in candidates:
        fields = _consistent_fields(lines, lambda line, s=sep: _split(line, s))
        if fields > best_fields:
            best, best_fields = sep, fields
    if best is not None:
        return best
    if _consistent_fields(lines, str.split) > 1:
        return WHITESPACE
    return preferred or ","


def _fields(line: str, sep: str) -> list[str]:
    return line.split() if sep == WHITESPACE else _split(line, sep)


def _split(line: str, sep: str) -> list[str]:
    """The fields of one line as the csv module splits them (quotes respected); the whole
    line where it cannot (a NUL byte, a field over the csv module's size limit)."""
    try:
        return next(csv.reader([line], delimiter=sep), [])
    except csv.Error:
        return [line]


def _consistent_fields(lines: list[str], split) -> int:
    """Fields per line if every line has the same number, else 0."""
    counts = {len(split(line)) for line in lines}
    return counts.pop() if len(counts) == 1 else 0


# ---------------------------------------------------------------------------- header


def _header_names(path: Path, header: tuple[int, str], sep: str) -> list[str]:
    line, fields = header[0], _fields(header[1], sep)
    names = [field.strip() for field in fields]
    limit = inputs.MAX_FEATURES + 1
    if len(names) > limit:
        raise DataError(f"{path} has {len(names):,} columns; at most {limit:,} are read "
                        f"(the target and {inputs.MAX_FEATURES:,} features, "
                        "inputs.MAX_FEATURES)")
    for i, name in enumerate(names):
        if not name:
            raise DataError(f"{path}: column {i + 1} has no name in the header (line {line})")
    repeated = [name for name, n in Counter(names).items() if n > 1]
    if repeated:
        where = [i + 1 for i, name in enumerate(names) if name == repeated[0]]
        raise DataError(f"{path}: the column name {repeated[0]!r} appears {len(where)} times "
                        f"in the header (columns {', '.join(map(str, where))})")
    return names


# ---------------------------------------------------------------------------- parsing


def _parse(path: Path, compression: str | None, sep: str, names: list[str],
           head: list[tuple[int, str]]):
    """The table as pandas infers it (numbers as float/int columns), at most the row limit
    plus one row, so that a too-long file is detected without reading all of it."""
    import pandas as pd

    max_rows = inputs.max_rows_for(len(names) - 1)
    try:
        with warnings.catch_warnings():
            # A first data row longer than the header would silently lose its extra fields.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            table = pd.read_csv(
                path, sep=sep, header=0, names=names, compression=compression,
                encoding="utf-8-sig", nrows=max_rows + 1, skipinitialspace=True,
                engine="c", index_col=False)
    except pd.errors.ParserWarning:
        raise DataError(_longer_row_message(path, head, sep)) from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty") from None
    except pd.errors.ParserError as err:
        raise DataError(_parser_message(path, err, head[0][0])) from None
    except UnicodeDecodeError as err:
        raise DataError(_not_utf8(path, err)) from None
    except (*_READ_ERRORS, ValueError, ImportError) as err:
        raise DataError(f"{path}: cannot read it as a table: {_reason(err)}") from None
    if len(table) == 0:
        raise DataError(f"{path} has a header but no data rows")
    if len(table) > max_rows:
        raise DataError(f"{path} has more than {max_rows:,} data rows, the most read with "
                        f"{len(names) - 1} feature(s) ({inputs.limits_text()}): subsample "
                        "it first")
    return table


def _longer_row_message(path: Path, head: list[tuple[int, str]], sep: str) -> str:
    (header_line, header), *rows = head
    expected = len(_fields(header, sep))
    for number, line in rows:
        if len(_fields(line, sep)) != expected:
            return (f"{path}: line {number} has {len(_fields(line, sep))} fields but the "
                    f"header (line {header_line}) has {expected}")
    return f"{path}: a row has more fields than the header (line {header_line}) has names"


def _parser_message(path: Path, err: Exception, header_line: int) -> str:
    match = _PARSER_FIELDS.search(str(err))
    if match:
        expected, line, saw = match.groups()
        return (f"{path}: line {line} has {saw} fields but the header (line {header_line}) "
                f"has {expected}")
    return f"{path}: cannot read it as a table: {str(err).strip()}"


# ---------------------------------------------------------------------------- cells


def _numeric(path: Path, compression: str | None, sep: str, table):
    """``table`` as float64 columns; a DataError for the first bad cell of the first column
    that has one (the raw text is read again, for that column only, to quote it)."""
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    columns = {}
    for position, name in enumerate(table.columns):
        column = table[name]
        if is_numeric_dtype(column.dtype) and not is_bool_dtype(column.dtype):
            columns[name] = column.to_numpy(np.float64)
            if np.isfinite(columns[name]).all():
                continue
        raw = _raw_column(path, compression, sep, list(table.columns), position, len(table))
        try:
            columns[name] = _checked_values(path, name, raw)
        except DataError:
            _check_row_length(path, compression, sep, len(table.columns), _first_bad(raw))
            raise
    return type(table)(columns)


def _first_bad(cells: list[str]) -> int:
    import pandas as pd

    values = pd.to_numeric(pd.Series([c.strip() for c in cells], dtype=object),
                           errors="coerce").to_numpy(np.float64)
    return int(np.flatnonzero(~np.isfinite(values))[0])


def _check_row_length(path: Path, compression, sep: str, n_columns: int, row: int) -> None:
    """pandas pads a short row with empty cells; this tells the two apart by reading that
    row's line (data row ``row``, 0-based, blank lines skipped as pandas does)."""
    with _open_binary(path, compression) as f:
        lines = (line for line in io.TextIOWrapper(f, encoding="utf-8-sig") if line.strip())
        next(lines, None)  # the header
        for i, line in enumerate(lines):
            if i == row:
                line = line.rstrip("\r\n")
                fields = len(_fields(line, sep))
                if fields < n_columns:
                    raise DataError(f"{path}: row {row + 1} has {fields} field(s) but the "
                                    f"header has {n_columns}; rows count from 1 after the "
                                    "header")
                return


def _raw_column(path: Path, compression, sep, names, position: int, rows: int) -> list:
    """One column's cells as text ("" where a row has no such field, as pandas pads it)."""
    import pandas as pd

    raw = pd.read_csv(
        path, sep=sep, header=0, names=names, usecols=[position], compression=compression,
        encoding="utf-8-sig", nrows=rows, skipinitialspace=True, dtype=str,
        keep_default_na=False, na_filter=False, engine="c", index_col=False)
    return [cell if isinstance(cell, str) else "" for cell in raw.iloc[:, 0].tolist()]


def _checked_values(path: Path, name: str, cells: list) -> np.ndarray:
    """The cells of one column as float64, or a DataError naming its first bad cell (its
    row, 1-based after the header, and its text) and how many more there are."""
    import pandas as pd

    text = pd.Series([c.strip() for c in cells], dtype=object)
    values = pd.to_numeric(text, errors="coerce").to_numpy(np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if not bad.size:
        return values
    first = int(bad[0])
    more = f" ({len(bad) - 1:,} more bad cell(s) in this column)" if len(bad) > 1 else ""
    where, row = f"{path}: column {name!r}", f"row {first + 1}"
    raise DataError(f"{where} has {_describe(cells[first], values[first])} at {row}{more}; "
                    "rows count from 1 after the header")


def _describe(cell: str, value: float) -> str:
    stripped = cell.strip()
    if not stripped:
        return "an empty cell"
    if stripped.lower() in MISSING_WORDS:
        return f"a missing value {stripped!r}"
    if np.isinf(value):
        return f"an infinite value {stripped!r}"
    hint = " (a decimal comma: write 1.5, not 1,5)" if _DECIMAL_COMMA.match(stripped) else ""
    return f"a non-numeric value {stripped!r}{hint}"
