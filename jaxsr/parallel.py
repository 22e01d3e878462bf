"""Data parallelism over this host's devices with ``jax.pmap``: the only module that knows.

Training, decoding and refinement all do the same thing: split a leading axis (batch rows,
bags, candidates) over the local devices, run one pmapped function, and join the results.
Their arrays then have a leading device axis of length ``device_count()``. Collectives
inside a pmapped function use ``AXIS``; with several hosts (``jax.distributed``) they span
every device of every host, and each host passes only its own devices' slices. Switching
to ``jit`` + ``NamedSharding`` later means rewriting this file and the ``pmean``/``psum``
calls of ``train/step.py``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxsr.shapes import pad_to

AXIS = "devices"


def device_count() -> int:
    """Devices one host feeds: the length of the leading axis."""
    return jax.local_device_count()


def pmap(fn, in_axes=0, *, donate_argnums=(), devices=None):
    """``jax.pmap`` over the local devices (or ``devices``), collectives named ``AXIS``.

    pmap caches compiled code by function identity: build it once per function."""
    return jax.pmap(fn, axis_name=AXIS, in_axes=in_axes, donate_argnums=donate_argnums,
                    devices=None if devices is None else list(devices))


def pmean(tree):
    return jax.lax.pmean(tree, AXIS)


def psum(tree):
    return jax.lax.psum(tree, AXIS)


@dataclasses.dataclass(frozen=True)
class Split:
    """``count`` rows spread over ``devices`` devices, ``per_device`` rows each; the rows
    past ``count`` are padding, whose results ``unshard`` drops."""

    count: int
    devices: int
    per_device: int

    @classmethod
    def of(cls, count: int, devices: int | None = None, per_device: int | None = None) -> Split:
        """The fewest rows per device (or ``per_device``, if it holds them all)."""
        devices = device_count() if devices is None else devices
        fewest = -(-count // devices)
        if per_device is not None and per_device < fewest:
            raise ValueError(f"{count} rows do not fit {devices} x {per_device}")
        return cls(count, devices, fewest if per_device is None else per_device)

    @property
    def total(self) -> int:
        return self.devices * self.per_device

    def shard(self, x, fill=None):
        """(count, ...) -> (devices, per_device, ...); padding rows copy the last row, or
        hold ``fill`` (see ``shapes.pad_to``)."""
        x = pad_to(x, self.total, fill)
        return x.reshape(self.devices, self.per_device, *x.shape[1:])

    def unshard(self, tree):
        """(devices, per_device, ...) -> (count, ...) for every leaf, padding dropped."""
        return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:])[: self.count], tree)


def map_rows(fn, whole: tuple, rows: tuple, devices=None):
    """``fn(*whole, *rows)`` with each array of ``rows`` split along its first axis over
    ``devices`` (default: all local) and the result joined: ``jit`` on one device, ``pmap``
    on several. Every leaf of the result has the row axis first. ``fn`` must treat rows
    independently, so that the result does not depend on the split."""
    devices = tuple(jax.local_devices() if devices is None else devices)
    if len(devices) == 1:
        return _jitted(fn)(*whole, *rows)
    split = Split.of(len(rows[0]), len(devices))
    mapped = _pmapped(fn, len(whole), len(rows), devices)
    return split.unshard(mapped(*whole, *(split.shard(x) for x in rows)))


@functools.lru_cache(maxsize=64)
def _jitted(fn):
    return jax.jit(fn)


@functools.lru_cache(maxsize=64)
def _pmapped(fn, n_whole: int, n_rows: int, devices: tuple):
    return pmap(fn, in_axes=(None,) * n_whole + (0,) * n_rows, devices=devices)


# --------------------------------------------------------------------- training's layout


def _sharding() -> NamedSharding:
    # The layout pmap itself gives its inputs: slice i of the leading axis on local device i.
    mesh = Mesh(np.array(jax.local_devices()), (AXIS,))
    return NamedSharding(mesh, PartitionSpec(AXIS))


def replicate(tree):
    """One copy of every leaf per local device (the leading axis added)."""
    n = device_count()
    return jax.device_put(
        jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n, *np.shape(x))), tree),
        _sharding())


def shard(tree):
    """Splits each leaf's first axis (host batch rows) into (devices, rows / devices), on
    the devices. No padding: a padded row would count in the loss, so rows must divide."""
    n = device_count()

    def split(x):
        if x.shape[0] % n:
            raise ValueError(f"a batch of {x.shape[0]} rows does not split over {n} devices")
        return Split.of(x.shape[0], n).shard(x)

    return jax.device_put(jax.tree.map(split, tree), _sharding())


def first_replica(tree):
    """Device 0's copy of a replicated tree, as device arrays (no host transfer)."""
    return jax.tree.map(lambda x: x.addressable_shards[0].data.reshape(x.shape[1:]), tree)


def to_host(tree):
    """Device 0's copy of a replicated tree, as numpy arrays."""
    return jax.device_get(first_replica(tree))
