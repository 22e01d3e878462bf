"""Write numpy arrays in PyTorch's zip checkpoint format, without torch.

``torch.save`` writes a zip archive whose records all sit in one folder (``archive/``):

- ``data.pkl``: a protocol-2 pickle of the object, where each tensor is a call of
  ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)``
  and each storage a persistent id ``("storage", torch.FloatStorage, key, "cpu", numel)``;
- ``data/<key>``: the raw little-endian bytes of each storage, starting at a multiple of 64
  bytes in the file (torch pads the local header's extra field), so that ``mmap`` loading
  gets aligned arrays;
- ``version`` (required by the reader), ``byteorder``, ``.format_version`` and
  ``.storage_alignment``.

The pickle names torch's globals as text (the GLOBAL opcode); nothing here imports torch.
Only what ``torch.load(..., weights_only=True)`` accepts is written: dicts, OrderedDicts,
strings, ints, tuples and tensors of the dtypes in ``STORAGE_NAMES``.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from typing import BinaryIO

import numpy as np

from jaxsr.weights.convert import _STORAGE_DTYPES

ARCHIVE = "archive"  # the records' folder; the reader takes whatever the first record's is
ALIGNMENT = 64
# numpy dtype -> torch storage class name (the reader's table, inverted; UntypedStorage
# holds raw bytes, and ByteStorage is the typed name for uint8).
STORAGE_NAMES = {np.dtype(dtype): name for name, dtype in _STORAGE_DTYPES.items()
                 if name != "UntypedStorage"}
_PADDING_FIELD = b"FB"  # extra-field id of the alignment padding, as torch writes it
_LOCAL_HEADER_SIZE = 30  # fixed part of a zip local file header
_FIXED_DATE = (1980, 1, 1, 0, 0, 0)  # the same arrays give the same bytes


class _Global:
    """A module-level name that the pickle refers to (GLOBAL opcode) without it being
    imported here: the reader resolves it. Callable only so that pickle accepts it as the
    function of a reduce."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):
        raise TypeError(f"{self.module}.{self.name} is a name written into a pickle")


_REBUILD_TENSOR = _Global("torch._utils", "_rebuild_tensor_v2")
_STORAGE_TYPES = {dtype: _Global("torch", name) for dtype, name in STORAGE_NAMES.items()}


class _Storage:
    """One storage record: a C-contiguous little-endian array and its key in ``data/``."""

    def __init__(self, key: str, array: np.ndarray):
        self.key, self.array = key, array


class _Tensor:
    """A whole storage viewed with its own shape (offset 0, C-contiguous strides)."""

    def __init__(self, storage: _Storage):
        self.storage = storage

    def __reduce__(self):
        shape = self.storage.array.shape
        strides = tuple(s // self.storage.array.itemsize for s in self.storage.array.strides)
        return _REBUILD_TENSOR, (self.storage, 0, tuple(shape), strides, False,
                                 collections.OrderedDict())


class _TorchPickler(pickle._Pickler):
    """The pure-Python pickler (the C one would import every global it writes), with
    storages as persistent ids and ``_Global`` written as a bare name."""

    dispatch = dict(pickle._Pickler.dispatch)

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            array = obj.array
            return ("storage", _STORAGE_TYPES[array.dtype.newbyteorder("=")], obj.key, "cpu",
                    array.size)
        return None

    def _save_global_name(self, obj: _Global) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("utf-8"))
        self.memoize(obj)

    dispatch[_Global] = _save_global_name


def _tensors(tree, storages: dict[int, _Storage]):
    """``tree`` with every numpy array replaced by a ``_Tensor``; the same array object
    (e.g. a tied weight) shares one storage, as in a module's state dict."""
    if isinstance(tree, dict):
        return type(tree)((key, _tensors(value, storages)) for key, value in tree.items())
    if isinstance(tree, np.ndarray):
        if tree.dtype.newbyteorder("=") not in STORAGE_NAMES:
            raise TypeError(f"no torch storage type for arrays of dtype {tree.dtype}")
        if id(tree) not in storages:
            little = np.array(tree, tree.dtype.newbyteorder("<"), order="C")  # keeps 0-d
            storages[id(tree)] = _Storage(str(len(storages)), little)
        return _Tensor(storages[id(tree)])
    if isinstance(tree, (str, int, float, bool, type(None))):
        return tree
    raise TypeError(f"cannot write a {type(tree).__name__} into a torch checkpoint")


def torch_pickle(tree) -> tuple[bytes, list[_Storage]]:
    """The ``data.pkl`` bytes of ``tree`` (dicts of arrays) and its storages, in key order."""
    storages: dict[int, _Storage] = {}
    converted = _tensors(tree, storages)
    out = io.BytesIO()
    _TorchPickler(out, protocol=2).dump(converted)  # torch.save's protocol
    return out.getvalue(), list(storages.values())


def write_torch_zip(f: BinaryIO, tree) -> None:
    """Writes ``tree`` (nested dicts/OrderedDicts of numpy arrays, strings and numbers) to the
    seekable binary file ``f`` as ``torch.save`` would."""
    data_pkl, storages = torch_pickle(tree)
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as archive:
        _record(archive, "data.pkl", data_pkl)
        _record(archive, ".format_version", b"1")  # storages numbered, not sorted as text
        _record(archive, ".storage_alignment", str(ALIGNMENT).encode())
        _record(archive, "byteorder", b"little")
        for storage in storages:
            _record(archive, f"data/{storage.key}", storage.array.tobytes(), aligned=True)
        _record(archive, "version", b"3\n")


def _record(archive: zipfile.ZipFile, name: str, data: bytes, aligned: bool = False) -> None:
    info = zipfile.ZipInfo(f"{ARCHIVE}/{name}", date_time=_FIXED_DATE)
    info.compress_type = zipfile.ZIP_STORED
    if aligned:
        # zipfile appends a 20-byte zip64 field to the local header of a record this large.
        zip64 = 20 if len(data) * 1.05 > zipfile.ZIP64_LIMIT else 0
        info.extra = _padding(archive.fp.tell(), len(info.filename.encode("utf-8")) + zip64)
    archive.writestr(info, data)


def _padding(header_offset: int, header_extra: int) -> bytes:
    """An extra field that makes the record's data start at a multiple of ALIGNMENT;
    ``header_extra``: the name and other extra bytes of the local header."""
    start = header_offset + _LOCAL_HEADER_SIZE + header_extra + 4  # 4: this field's header
    size = -start % ALIGNMENT
    return _PADDING_FIELD + struct.pack("<H", size) + b"Z" * size
