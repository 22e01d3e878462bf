"""Batching: size limits, bounded shapes, exact resume, host shards, workers, bad arguments."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from jaxsr.data import Generator, GeneratorConfig, StreamState, batches
from jaxsr.expr.tokens import Vocab, encode_points

TOKENS = 1200  # points per batch: small, so that a batch is a few dozen samples
CONFIG = GeneratorConfig(seed=5)


def _stream(**kw):
    kw = {"tokens_per_batch": TOKENS, "workers": 0, "process_index": 0, "process_count": 1,
          **kw}
    return batches(CONFIG, **kw)


@pytest.fixture(scope="module")
def first_batches():
    with _stream() as stream:
        return stream, list(itertools.islice(stream, 16))


def _same(a, b) -> bool:
    return all(np.array_equal(getattr(a, k), getattr(b, k))
               for k in ("points", "n_points", "tokens", "n_tokens", "dimension", "indices"))


def test_batches_respect_the_point_budget_and_buckets(first_batches):
    stream, drawn = first_batches
    shapes = set(stream.shapes)
    assert len(shapes) <= len(stream.plan.point_buckets) * len(stream.plan.token_buckets)
    for batch in drawn:
        rows, n_pad, t_pad = batch.shape
        assert rows * n_pad <= TOKENS, "more points than tokens_per_batch"
        assert batch.shape in shapes
        assert np.all(batch.n_points <= n_pad) and np.all(batch.n_tokens <= t_pad)
        # Samples of a batch are of similar size: all within one point bucket.
        smaller = [b for b in stream.plan.point_buckets if b < n_pad]
        assert np.all(batch.n_points > (smaller[-1] if smaller else 0))


def test_batch_contents_are_the_samples(first_batches):
    _, drawn = first_batches
    gen = Generator(CONFIG)
    enc_pad, dec = Vocab.encoder().pad, Vocab.decoder()
    batch = drawn[3]
    for row in (0, len(batch.indices) - 1):
        s = gen.sample(int(batch.indices[row]))
        n, t = len(s.y), len(s.tokens) + 2
        assert batch.n_points[row] == n and batch.n_tokens[row] == t
        assert batch.dimension[row] == s.info.dimension
        np.testing.assert_array_equal(batch.points[row, :n], encode_points(s.x, s.y))
        assert np.all(batch.points[row, n:] == enc_pad)
        assert batch.tokens[row, 0] == batch.tokens[row, t - 1] == dec.eos
        np.testing.assert_array_equal(batch.tokens[row, 1:t - 1], s.tokens)
        assert np.all(batch.tokens[row, t:] == dec.pad)


def test_every_sample_is_used_once(first_batches):
    _, drawn = first_batches
    used = np.concatenate([b.indices for b in drawn])
    assert len(np.unique(used)) == len(used)
    # Scanning is in index order: the early indices are all placed in a batch or pending.
    state = drawn[-1].state
    pending_from = min((i for _, _, i in state.pending_from), default=state.position)
    assert set(range(min(pending_from, 50))) <= set(used.tolist())


def test_resume_gives_exactly_the_next_batch(first_batches):
    _, drawn = first_batches
    for k in (0, 6, 11):
        saved = json.loads(json.dumps(drawn[k].state.to_dict()))  # as a checkpoint stores it
        with _stream(state=saved) as resumed:
            for expected in drawn[k + 1:k + 4]:
                got = next(resumed)
                assert _same(got, expected)
                assert got.state == expected.state


def test_resume_rejects_a_state_of_another_stream(first_batches):
    _, drawn = first_batches
    with pytest.raises(ValueError, match="state"):
        _stream(state=drawn[2].state, tokens_per_batch=2 * TOKENS)
    with pytest.raises(ValueError, match="state"):
        batches(GeneratorConfig(seed=6), tokens_per_batch=TOKENS, workers=0, process_index=0,
                process_count=1, state=drawn[2].state)
    with pytest.raises(ValueError, match="version"):
        StreamState.from_dict({"version": 99})


def test_hosts_get_disjoint_shards_with_the_same_shapes():
    streams = [_stream(process_index=p, process_count=3) for p in range(3)]
    seen = set()
    for _ in range(6):
        got = [next(s) for s in streams]
        assert len({b.shape for b in got}) == 1, "hosts disagree on the batch shape"
        for b in got:
            assert b.shape[0] * b.shape[1] <= TOKENS
            assert np.all(b.n_tokens <= b.shape[2])
            indices = set(b.indices.tolist())
            assert not indices & seen
            seen |= indices
    for s in streams:
        s.close()


def test_workers_give_the_same_batches(first_batches):
    _, drawn = first_batches
    with _stream(workers=2, prefetch=3) as stream:
        for expected in drawn[:5]:
            got = next(stream)
            assert _same(got, expected) and got.state == expected.state


def test_reference_batch_size_by_default():
    with batches(workers=0, process_index=0, process_count=1) as stream:
        assert stream.plan.rows[200] == 50  # 10,000 points at N = 200, as the reference
        assert all(rows * n <= 10_000 for n, rows in stream.plan.rows.items())
        assert len(stream.shapes) <= 32
    with batches(workers=0, process_index=0, process_count=1, tokens_per_batch=80_000,
                 batch_multiple=8) as stream:
        assert all(rows % 8 == 0 for rows in stream.plan.rows.values())


@pytest.mark.parametrize("kw, field", [
    (dict(tokens_per_batch=100), "tokens_per_batch"),
    (dict(tokens_per_batch=0), "tokens_per_batch"),
    (dict(point_buckets=(50, 100)), "point_buckets"),
    (dict(token_buckets=(32, 64)), "token_buckets"),
    (dict(process_index=2, process_count=2), "process_index"),
    (dict(workers=-1), "workers"),
    (dict(batch_multiple=0), "batch_multiple"),
])
def test_bad_arguments_name_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        _stream(**kw)
