"""Atomic file writes: a reader (or a run resumed after a crash) sees the old file or the new
one, never half of one.

The bytes go to a temporary file in the target's own directory (a rename is atomic only
within one file system), are flushed to disk, and ``os.replace`` then swaps the name over.
``atomic_files`` does this for several files that belong together (weights and the JSON that
records their checksum): every file is complete on disk before the first rename, so a crash
can only fall between renames, where a checksum check catches the mismatch.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

TEMP_PREFIX = ".tmp-"  # leftovers of a killed writer start with this (and are never read)

Data = bytes | str | Callable[[BinaryIO], object]


class _PendingFiles:
    """Temporary files written so far, and the names they will take."""

    def __init__(self):
        self.pending: list[tuple[str, Path]] = []

    def write(self, path: str | os.PathLike, data: Data, *, encoding: str = "utf-8") -> Path:
        """Writes ``data`` (bytes, text, or a function writing to a binary file object) to a
        temporary file beside ``path``; returns the temporary file's path (readable now,
        renamed to ``path`` when the block ends without an error)."""
        path = Path(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{path.name}.")
        self.pending.append((tmp, path))
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode(encoding) if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())  # on disk before any name points at it
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would differ from a plain open()
        return Path(tmp)


@contextlib.contextmanager
def atomic_files() -> Iterator[_PendingFiles]:
    """``with atomic_files() as files: files.write(path, data); ...``: all files are written
    in full first, then renamed into place in the order written; on an error none is."""
    files = _PendingFiles()
    try:
        yield files
        for tmp, path in files.pending:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in files.pending:
            _remove_quietly(tmp)
        raise


def atomic_write(path: str | os.PathLike, data: Data, *, encoding: str = "utf-8") -> Path:
    """Writes ``data`` (bytes, text, or a function writing to a binary file object) to
    ``path`` atomically; returns ``path``. The parent directory must exist."""
    with atomic_files() as files:
        files.write(path, data, encoding=encoding)
    return Path(path)


@functools.cache
def _umask() -> int:
    """The process's umask, read once (reading it means setting it, which is not safe to
    repeat while other threads create files)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
