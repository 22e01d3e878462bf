"""Runs a decoding function over bags on every local device: jit on one, pmap on several.

A decoding function has the signature ``fn(params, shared, *per_bag) -> pytree`` where
``shared`` is a pytree every device gets whole (temperature, ...) and each array of
``per_bag`` and each output leaf has the bag axis first. Bags are split into equal slices,
the last bag repeated to fill the last slice; the repeats are dropped from the result.
Results do not depend on the split, because every strategy treats bags independently
(sampling keys are per bag, beam search freezes a finished bag).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp


@functools.lru_cache(maxsize=64)
def _jitted(fn):
    return jax.jit(fn)


@functools.lru_cache(maxsize=64)
def _pmapped(fn, num_per_bag: int, devices: tuple):
    return jax.pmap(fn, in_axes=(None, None) + (0,) * num_per_bag, devices=list(devices))


def map_over_bags(fn, params, shared, *per_bag, devices=None):
    """``fn(params, shared, *per_bag)``, bags spread over ``devices`` (default: all local)."""
    devices = tuple(jax.local_devices() if devices is None else devices)
    if len(devices) == 1:
        return _jitted(fn)(params, shared, *per_bag)
    num_bags = per_bag[0].shape[0]
    per_device = math.ceil(num_bags / len(devices))
    sharded = [_split(_pad_bags(x, per_device * len(devices)), len(devices)) for x in per_bag]
    out = _pmapped(fn, len(per_bag), devices)(params, shared, *sharded)
    return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:])[:num_bags], out)


def _pad_bags(x, total: int):
    """Repeats the last bag (a real one, so no empty point set reaches the model)."""
    missing = total - x.shape[0]
    if missing == 0:
        return x
    return jnp.concatenate([x, jnp.repeat(x[-1:], missing, axis=0)], axis=0)


def _split(x, num_devices: int):
    return x.reshape(num_devices, -1, *x.shape[1:])
