"""Data parallelism over this host's devices with ``jax.pmap``: the only module that knows.

Every array the train step sees has a leading device axis of length
``jax.local_device_count()``: the train state is replicated along it, a batch is split
along it. Collectives inside the step use ``AXIS``; with several hosts
(``jax.distributed.initialize``) they span every device of every host, and each host
passes only its own devices' slices. Switching to ``jit`` + ``NamedSharding`` later means
rewriting this file and the two ``pmean``/``psum`` calls of ``step.py``.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "devices"


def device_count() -> int:
    """Devices one host feeds: the length of the leading axis."""
    return jax.local_device_count()


def pmap(fn):
    """``fn(state, batch, shared)`` on every local device: ``state`` replicated and
    ``batch`` split along the device axis, ``shared`` (e.g. the learning rate) sent whole
    to every device. The state's buffers are reused for the new state (donated)."""
    return jax.pmap(fn, axis_name=AXIS, in_axes=(0, 0, None), donate_argnums=(0,))


def pmean(tree):
    return jax.lax.pmean(tree, AXIS)


def psum(tree):
    return jax.lax.psum(tree, AXIS)


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
    """Splits each leaf's first axis (host batch rows) into (devices, rows / devices)."""
    n = device_count()

    def split(x):
        if x.shape[0] % n:
            raise ValueError(f"a batch of {x.shape[0]} rows does not split over {n} devices")
        return x.reshape(n, x.shape[0] // n, *x.shape[1:])

    return jax.device_put(jax.tree.map(split, tree), _sharding())


def first_replica(tree):
    """Device 0's copy of a replicated tree, as device arrays (no host transfer)."""
    return jax.tree.map(lambda x: x.addressable_shards[0].data.reshape(x.shape[1:]), tree)


def to_host(tree):
    """Device 0's copy of a replicated tree, as numpy arrays."""
    return jax.device_get(first_replica(tree))
