"""Padded shapes: the rules that round sizes up and fill arrays up to them.

A jitted function compiles once per input shape. Every path into one rounds its sizes up
to a few buckets and pads its inputs to them; the padding either copies a real item (so no
empty point set or invalid program reaches the model) or holds a neutral fill value, and
the results of padding rows are dropped. This module is numpy only: the data workers
import it without starting JAX.
"""

from __future__ import annotations

import numpy as np

from jaxsr.expr.tokens import MAX_INPUT_DIMENSION, Vocab, points_width


def next_power_of_two(n: int, minimum: int = 1) -> int:
    """The smallest power of two >= ``n`` and >= ``minimum`` (1 for ``n`` <= 1)."""
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def bucket(n: int, minimum: int = 8) -> int:
    """n rounded up to 8, 12, 16, 24, 32, 48, ...: at most 50% padding and few distinct
    sizes (each size compiles once)."""
    size = minimum
    while size < n:
        size = size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
    return size


def pad_to(items, size: int, fill=None):
    """``items`` (a list, numpy or JAX array) lengthened along its first axis to ``size``.

    Without ``fill`` the last item is repeated (a real item: its results are computed and
    dropped); with ``fill`` the new rows hold that value. Arrays keep their dtype.
    """
    missing = size - len(items)
    if missing < 0:
        raise ValueError(f"{len(items)} items do not fit in {size}")
    if missing == 0:
        return items
    if not hasattr(items, "shape"):  # a list or other sequence of Python objects
        return [*items, *[items[-1] if fill is None else fill] * missing]
    xp = np if isinstance(items, np.ndarray) else _jnp()
    tail = (xp.repeat(items[-1:], missing, axis=0) if fill is None
            else xp.full((missing, *items.shape[1:]), fill, items.dtype))
    return xp.concatenate([items, tail])


def pad_point_sets(sets, n_points: int | None = None,
                   max_dimension: int = MAX_INPUT_DIMENSION):
    """Encoded point sets (each ``(n_i, W)`` encoder ids, as ``encode_points`` writes them)
    as one ``(B, n_points, W)`` int32 array and its ``(B, n_points)`` mask of real points.

    Rows past a set's points hold the encoder's ``<PAD>`` (the model masks them out).
    ``n_points`` defaults to the largest set; ``max_dimension`` gives W when there are no
    sets (otherwise W is the sets' own).
    """
    n_points = max((len(s) for s in sets), default=0) if n_points is None else n_points
    width = sets[0].shape[1] if sets else points_width(max_dimension)
    ids = np.full((len(sets), n_points, width), Vocab.encoder().pad, np.int32)
    mask = np.zeros((len(sets), n_points), bool)
    for row, points in enumerate(sets):
        ids[row, :len(points)], mask[row, :len(points)] = points, True
    return ids, mask


def _jnp():
    # Only a JAX array reaches here, so JAX is loaded already.
    import jax.numpy as jnp

    return jnp
