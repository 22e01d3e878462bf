"""A minimal TensorBoard event-file writer for scalars: no TensorFlow, no tensorboardX.

An event file is a sequence of TFRecords (length, masked CRC32C of the length, payload,
masked CRC32C of the payload), each payload a serialized ``tensorflow.Event`` protobuf.
Only the fields TensorBoard's scalar dashboard reads are written, encoded by hand:

    Event      { double wall_time = 1; int64 step = 2; string file_version = 3;
                 Summary summary = 5; SessionLog session_log = 6; }
    Summary    { repeated Value value = 1; }   Value { string tag = 1; float simple_value = 2; }
    SessionLog { Status status = 1; }          (START = 1)

A ``SessionLog(START)`` at step s tells TensorBoard to drop the events of steps >= s written
before it: a resumed run sends one for the first step it redoes (tensorboardX's
``purge_step``). (tensorboardX would do the same, but it imports torch where torch is
installed, which costs seconds at every start.)
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

_CASTAGNOLI = 0x82F63B78  # CRC-32C polynomial, reflected


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (_CASTAGNOLI if crc & 1 else 0)
        table.append(crc)
    return tuple(table)


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _record(payload: bytes) -> bytes:
    length = struct.pack("<Q", len(payload))
    return (length + struct.pack("<I", _masked_crc(length)) + payload
            + struct.pack("<I", _masked_crc(payload)))


# ---------------------------------------------------------------------------- protobuf


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire_type) + payload


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _field(number, 2, _varint(len(payload)) + payload)


def _event(*, step: int | None = None, file_version: str | None = None,
           scalars: dict | None = None, session_start: bool = False) -> bytes:
    out = _field(1, 1, struct.pack("<d", time.time()))
    if step is not None:
        out += _field(2, 0, _varint(step))
    if file_version is not None:
        out += _bytes_field(3, file_version.encode())
    if scalars:
        values = b"".join(
            _bytes_field(1, _bytes_field(1, tag.encode()) + _field(2, 5, struct.pack("<f", v)))
            for tag, v in scalars.items())
        out += _bytes_field(5, values)
    if session_start:
        out += _bytes_field(6, _field(1, 0, _varint(1)))
    return out


# ---------------------------------------------------------------------------- writer


class EventWriter:
    """Appends scalars to a new event file in ``logdir``."""

    def __init__(self, logdir: str | Path, purge_step: int | None = None):
        logdir = Path(logdir)
        logdir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = logdir / name
        self._file = self.path.open("ab")
        self._file.write(_record(_event(file_version="brain.Event:2")))
        if purge_step is not None:
            self._file.write(_record(_event(step=purge_step, session_start=True)))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self._file.write(_record(_event(step=step, scalars=values)))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()
