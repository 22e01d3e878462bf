"""jaxsr.shapes: size buckets and padding up to them."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxsr.expr.tokens import Vocab, encode_point_sets, encode_points
from jaxsr.shapes import bucket, next_power_of_two, pad_point_sets, pad_to


@pytest.mark.parametrize("n, minimum, expected", [
    (0, 1, 1), (1, 1, 1), (2, 1, 2), (3, 1, 4), (64, 1, 64), (65, 1, 128), (3, 16, 16),
    (17, 16, 32),
])
def test_next_power_of_two(n, minimum, expected):
    assert next_power_of_two(n, minimum) == expected


def test_buckets_alternate_halves_and_thirds_with_at_most_half_padding():
    sizes = sorted({bucket(n) for n in range(1, 200)})
    assert sizes == [8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256]
    assert all(n <= bucket(n) <= max(8, 1.5 * n) for n in range(1, 1000))


def test_pad_to_repeats_the_last_item_or_fills():
    assert pad_to(["a", "b"], 4) == ["a", "b", "b", "b"]
    assert pad_to(("a",), 2, "z") == ["a", "z"]
    x = np.arange(6, dtype=np.int16).reshape(3, 2)
    np.testing.assert_array_equal(pad_to(x, 5)[3:], [[4, 5], [4, 5]])
    filled = pad_to(x, 4, -1)
    assert filled.dtype == np.int16 and filled[3].tolist() == [-1, -1]
    on_device = pad_to(jnp.asarray(x), 4)
    assert isinstance(on_device, jnp.ndarray) and on_device[3].tolist() == [4, 5]
    assert pad_to(x, 3) is x
    with pytest.raises(ValueError, match="do not fit"):
        pad_to(x, 2)


def test_point_sets_pad_with_the_encoder_pad_id_and_a_mask():
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(n, d)) for n, d in ((3, 1), (5, 2))]
    ys = [rng.normal(size=n) for n in (3, 5)]
    sets = encode_point_sets(xs, ys)
    for ids, x, y in zip(sets, xs, ys):
        np.testing.assert_array_equal(ids, encode_points(x, y))
    ids, mask = pad_point_sets(sets, 6)
    assert ids.shape == (2, 6, 33) and ids.dtype == np.int32
    np.testing.assert_array_equal(mask.sum(axis=1), [3, 5])
    assert np.all(ids[0, 3:] == Vocab.encoder().pad) and np.all(ids[1, 5:] == Vocab.encoder().pad)
    np.testing.assert_array_equal(ids[1, :5], sets[1])


def test_no_point_sets_keep_the_width():
    ids, mask = pad_point_sets([], 0, max_dimension=2)
    assert ids.shape == (0, 0, 9) and mask.shape == (0, 0)
    assert encode_point_sets([], []) == []
