"""jaxsr.parallel: the split over devices that training, decoding and refinement share."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jaxsr import parallel


def test_split_pads_with_copies_of_the_last_row_and_drops_them():
    split = parallel.Split.of(7, devices=3)
    assert (split.per_device, split.total) == (3, 9)
    x = np.arange(14).reshape(7, 2)
    sharded = split.shard(x)
    assert sharded.shape == (3, 3, 2)
    np.testing.assert_array_equal(sharded[2, 1:], [[12, 13], [12, 13]])
    np.testing.assert_array_equal(split.unshard({"a": sharded})["a"], x)


def test_split_fills_padding_and_keeps_the_dtype():
    split = parallel.Split.of(3, devices=2, per_device=4)
    sharded = split.shard(np.array([True, True, True]), False)
    assert sharded.dtype == bool
    np.testing.assert_array_equal(sharded, [[True, True, True, False], [False] * 4])


def test_split_refuses_rows_that_do_not_fit():
    with pytest.raises(ValueError, match="do not fit"):
        parallel.Split.of(9, devices=2, per_device=4)


def test_shard_refuses_a_batch_that_does_not_divide(monkeypatch):
    monkeypatch.setattr(parallel, "device_count", lambda: 2)
    with pytest.raises(ValueError, match="does not split over 2 devices"):
        parallel.shard({"rows": np.zeros((3, 4))})


_EIGHT_DEVICES = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jaxsr import parallel
    assert parallel.device_count() == 8

    def fn(scale, x, y):
        # Each row alone: a psum would make rows depend on each other.
        return {"sum": scale * x.sum(axis=1) + y, "rows": x}

    x = jnp.arange(11 * 3, dtype=jnp.float32).reshape(11, 3)
    y = jnp.arange(11, dtype=jnp.float32)
    many = parallel.map_rows(fn, (jnp.float32(2),), (x, y))
    one = parallel.map_rows(fn, (jnp.float32(2),), (x, y), devices=jax.local_devices()[:1])
    for key in ("sum", "rows"):
        assert many[key].shape == one[key].shape, key
        np.testing.assert_array_equal(many[key], one[key])

    def total(x):
        return parallel.psum(x.sum())

    split = parallel.Split.of(11)
    sharded = split.shard(np.ones(11), 0.0)
    assert float(parallel.pmap(total)(sharded)[0]) == 11.0
    print("ok")
""")


def test_eight_devices_split_and_join_as_one():
    """11 rows over 8 simulated CPU devices (the last five padded) against one device."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", _EIGHT_DEVICES], env=env, check=False,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
