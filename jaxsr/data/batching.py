"""An infinite, resumable stream of padded training batches: ``jaxsr.data.batches(...)``.

How samples are grouped
-----------------------
Like the reference, a batch holds samples of similar size and at most ``tokens_per_batch``
points, counting padding (batch size x padded N, the reference's ``collate_size_fn``). Unlike
the reference (a random window of a sorted queue, docs/reference.md 4.1) the padded shapes come
from a small fixed set, so the train step compiles a bounded number of times:

* every sample falls in a bucket (N_pad, T_pad): N_pad the smallest point bucket holding its
  N, T_pad the smallest token bucket holding an upper bound on its target length (from its
  dimension and unary budget, ``trees.max_prefix_length``). Both are known from the sample's
  *header* (``Generator.headers``), before the sample is generated;
* global sample indices are scanned in order; each goes to its bucket's pending list, and a
  bucket whose list reaches B(N_pad) x process_count samples ships as one global batch, with
  B(N_pad) = tokens_per_batch // N_pad (rounded down to ``batch_multiple``). Every sample is
  used once, in index order within its bucket, and batches never need row padding;
* host p takes rows [p*B, (p+1)*B) of each global batch: disjoint shards, and every host sees
  the same sequence of shapes (what a multi-host ``pmap`` needs). With one host the target
  padding shrinks to the smallest token bucket holding the batch's longest target.

Resuming
--------
Because the plan depends only on headers, the stream's position is two things: the next
index to scan and, for each bucket with pending samples, its oldest pending index. Each
``Batch`` carries that ``StreamState`` (as of right after the batch); pass it back as
``batches(..., state=...)`` to continue with exactly the next batch.

Workers
-------
Samples are generated and tokenised in ``workers`` spawned processes, ``prefetch`` batches
ahead, so the accelerator does not wait. The batches are the same for any number of workers.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import multiprocessing
import os
from typing import Iterator, Sequence

import numpy as np

from jaxsr.checks import check_int
from jaxsr.data import trees
from jaxsr.data.config import GeneratorConfig
from jaxsr.data.generator import Generator
from jaxsr.expr import tokens
from jaxsr.shapes import pad_point_sets

_SCAN_BLOCK = 4096
_STATE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class StreamState:
    """Where a stream stands: the next global index to scan and, per bucket (N_pad, T_pad)
    with pending samples, the oldest pending index. ``fingerprint`` identifies the generator
    and batching configuration the state belongs to."""

    position: int = 0
    pending_from: tuple[tuple[int, int, int], ...] = ()  # (N_pad, T_pad, oldest index)
    fingerprint: str = ""

    def to_dict(self) -> dict:
        """Plain ints and strings, for a checkpoint's JSON/metadata."""
        return {"version": _STATE_VERSION, "position": self.position,
                "pending_from": [list(p) for p in self.pending_from],
                "fingerprint": self.fingerprint}

    @staticmethod
    def from_dict(data: dict) -> StreamState:
        if data.get("version") != _STATE_VERSION:
            raise ValueError(f"state: unsupported version {data.get('version')!r}")
        return StreamState(int(data["position"]),
                           tuple(tuple(int(v) for v in p) for p in data["pending_from"]),
                           str(data["fingerprint"]))


@dataclasses.dataclass(frozen=True, eq=False)
class Batch:
    """One padded batch for this host.

    Attributes:
      points: (B, N_pad, 33) int32 encoder ids; rows past a sample's N are ``<PAD>``.
      n_points: (B,) int32, the number of real points of each sample.
      tokens: (B, T_pad) int32 decoder ids ``<EOS> prefix <EOS>``, then ``<PAD>``.
      n_tokens: (B,) int32, target lengths including both ``<EOS>``.
      dimension: (B,) int32, input dimension of each sample.
      indices: (B,) int64, the sample indices (``Generator.sample(i)`` rebuilds one).
      state: the stream state right after this batch.
    """

    points: np.ndarray
    n_points: np.ndarray
    tokens: np.ndarray
    n_tokens: np.ndarray
    dimension: np.ndarray
    indices: np.ndarray
    state: StreamState

    @property
    def shape(self) -> tuple[int, int, int]:
        """(B, N_pad, T_pad)."""
        return self.points.shape[0], self.points.shape[1], self.tokens.shape[1]


@dataclasses.dataclass(frozen=True)
class BucketPlan:
    """The bucket grid and batch sizes of a stream."""

    point_buckets: tuple[int, ...]
    token_buckets: tuple[int, ...]
    rows: dict  # N_pad -> rows per host batch

    def shapes(self) -> list[tuple[int, int, int]]:
        """Every (B, N_pad, T_pad) a batch can have: at most one per pair of buckets."""
        return sorted({(self.rows[n], n, t) for n in self.point_buckets
                       for t in self.token_buckets})


def default_point_buckets(max_points: int, count: int = 8) -> tuple[int, ...]:
    """``count`` evenly spaced point buckets up to max_points (25, 50, ..., 200 by default)."""
    return tuple(sorted({max(1, -(-max_points * k // count)) for k in range(1, count + 1)}))


def default_token_buckets(config: GeneratorConfig, step: int = 32) -> tuple[int, ...]:
    """Multiples of ``step`` from 2*step up to the longest possible target (+2 for <EOS>)."""
    longest = 2 + trees.max_prefix_length(config, config.max_input_dimension,
                                          config.max_unary_ops)
    top = -(-longest // step) * step
    return tuple(range(2 * step, max(top, 2 * step) + 1, step))


# ---------------------------------------------------------------------------- the stream


def batches(generator: Generator | GeneratorConfig | None = None, *,
            tokens_per_batch: int = 10_000,
            point_buckets: Sequence[int] | None = None,
            token_buckets: Sequence[int] | None = None,
            batch_multiple: int = 1,
            state: StreamState | dict | None = None,
            workers: int | None = None,
            prefetch: int | None = None,
            process_index: int | None = None,
            process_count: int | None = None,
            synchronized_shapes: bool | None = None) -> BatchStream:
    """An infinite iterator of training ``Batch``es for this host.

    Args:
      generator: a ``Generator`` or its config (default: the reference's defaults, seed 0).
      tokens_per_batch: most points per host batch, padding included (reference: 10,000).
        For the reference's per-GPU batches with L local devices, pass 10_000 * L and
        ``batch_multiple=L``.
      point_buckets, token_buckets: padded N and target lengths (defaults: 8 point buckets
        up to max_points; multiples of 32 covering the longest possible target).
      batch_multiple: the rows of every batch are a multiple of this (e.g. local devices).
      state: a ``Batch.state`` (or its ``to_dict()``) to resume after that batch.
      workers: generator processes; 0 generates in this process (default: cores - 1).
      prefetch: batches generated ahead (default: 2 * workers + 2).
      process_index, process_count: this host's shard (default: ``jax.process_index()``,
        ``jax.process_count()``).
      synchronized_shapes: pad targets by the header bound so every host has the same
        shapes (default: True when process_count > 1).
    """
    gen = generator if isinstance(generator, Generator) else Generator(generator)
    if process_index is None or process_count is None:
        import jax  # only to learn this host's place; no device work

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    return BatchStream(gen, tokens_per_batch=tokens_per_batch, point_buckets=point_buckets,
                       token_buckets=token_buckets, batch_multiple=batch_multiple, state=state,
                       workers=workers, prefetch=prefetch, process_index=process_index,
                       process_count=process_count, synchronized_shapes=synchronized_shapes)


class BatchStream:
    """The iterator ``batches`` returns. ``state`` is the position after the last batch
    returned; ``shapes`` lists every batch shape it can produce. Close it (or use ``with``)
    to stop the workers."""

    def __init__(self, generator: Generator, *, tokens_per_batch, point_buckets, token_buckets,
                 batch_multiple, state, workers, prefetch, process_index, process_count,
                 synchronized_shapes):
        cfg = generator.config
        check_int("tokens_per_batch", tokens_per_batch)
        check_int("batch_multiple", batch_multiple)
        check_int("process_count", process_count)
        if not (isinstance(process_index, int) and 0 <= process_index < process_count):
            raise ValueError(f"process_index must be in [0, {process_count}), "
                             f"got {process_index!r}")
        self.generator = generator
        self.process_index, self.process_count = process_index, process_count
        self.synchronized = process_count > 1 if synchronized_shapes is None else bool(
            synchronized_shapes)
        self.plan = _make_plan(cfg, tokens_per_batch, batch_multiple,
                               point_buckets, token_buckets)
        self.fingerprint = _fingerprint(cfg, self.plan, process_count, self.synchronized)
        if isinstance(state, dict):
            state = StreamState.from_dict(state)
        if state is not None and state.fingerprint != self.fingerprint:
            raise ValueError("state: it was saved by a stream with a different generator "
                             "config, buckets, batch size or host count")
        self.state = state or StreamState(fingerprint=self.fingerprint)
        self._planner = _Planner(generator, self.plan, process_count, self.state,
                                 self.fingerprint)
        self.workers = max(1, (os.cpu_count() or 2) - 1) if workers is None else workers
        if not (isinstance(self.workers, int) and self.workers >= 0):
            raise ValueError(f"workers must be an int >= 0, got {workers!r}")
        self.prefetch = 2 * self.workers + 2 if prefetch is None else prefetch
        check_int("prefetch", self.prefetch)
        self._pool = _start_pool(cfg, self.workers) if self.workers > 0 else None
        self._inflight: collections.deque = collections.deque()

    @property
    def shapes(self) -> list[tuple[int, int, int]]:
        return self.plan.shapes()

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if self._pool is None:
            job = self._next_job()
            arrays = build_batch(self.generator, *job[:-1])
        else:
            while len(self._inflight) < self.prefetch:
                job = self._next_job()
                self._inflight.append((self._pool.submit(_worker_build, *job[:-1]), job))
            pending, job = self._inflight.popleft()
            arrays = pending.result()  # a dead worker raises BrokenProcessPool, not a hang
        self.state = job[-1]
        return Batch(**arrays, state=self.state)

    def _next_job(self):
        """(indices for this host, N_pad, T_pad or None, token buckets, state after)."""
        (n_pad, t_pad), indices, after = self._planner.next_batch()
        rows = self.plan.rows[n_pad]
        mine = indices[self.process_index * rows:(self.process_index + 1) * rows]
        return (mine, n_pad, t_pad if self.synchronized else None,
                self.plan.token_buckets, after)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._inflight.clear()

    def __enter__(self) -> BatchStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to clean
            pass


# ---------------------------------------------------------------------------- planning


class _Planner:
    """Scans global indices in order and ships a bucket as soon as it is full."""

    def __init__(self, generator: Generator, plan: BucketPlan, process_count: int,
                 state: StreamState, fingerprint: str):
        self._generator = generator
        self._fingerprint = fingerprint
        self._points = np.asarray(plan.point_buckets)
        self._targets = np.asarray(plan.token_buckets)
        self._bounds = _target_bound_table(generator.config)
        self._rows = {n: plan.rows[n] * process_count for n in plan.point_buckets}
        self._pending: dict[tuple[int, int], list[int]] = {}
        self._position = state.position
        self._rebuild(state)
        self._block: collections.deque = collections.deque()

    def _rebuild(self, state: StreamState) -> None:
        """The pending lists of a saved state: for each bucket that had pending samples, its
        indices in [oldest pending, position). Vectorised, in chunks: a rarely filled bucket
        can hold samples from far back."""
        oldest = {(n, t): i for n, t, i in state.pending_from}
        start = min(oldest.values(), default=state.position)
        for low in range(start, state.position, 1 << 20):
            indices = np.arange(low, min(low + (1 << 20), state.position))
            n_pad, t_pad = self._buckets(indices)
            for (n, t), first in oldest.items():
                mine = indices[(n_pad == n) & (t_pad == t) & (indices >= first)]
                self._pending.setdefault((n, t), []).extend(mine.tolist())

    def _buckets(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N_pad, T_pad) of each index, from its header alone."""
        headers = self._generator.headers(indices)
        bound = self._bounds[headers.dimension, headers.unary_budget]
        return (self._points[np.searchsorted(self._points, headers.n_points)],
                self._targets[np.searchsorted(self._targets, bound)])

    def next_batch(self):
        while True:
            if not self._block:
                indices = np.arange(self._position, self._position + _SCAN_BLOCK)
                n_pad, t_pad = self._buckets(indices)
                self._block.extend(zip(indices.tolist(), n_pad.tolist(), t_pad.tolist(),
                                       strict=True))
            index, n, t = self._block.popleft()
            self._position = index + 1
            pending = self._pending.setdefault((n, t), [])
            pending.append(index)
            if len(pending) == self._rows[n]:
                del self._pending[(n, t)]
                return (n, t), np.array(pending, dtype=np.int64), self._snapshot()

    def _snapshot(self) -> StreamState:
        pending_from = tuple(sorted((n, t, lst[0]) for (n, t), lst in self._pending.items()
                                    if lst))
        return StreamState(self._position, pending_from, self._fingerprint)


def _target_bound_table(config: GeneratorConfig) -> np.ndarray:
    """[d, u] -> bound on the target length including both <EOS>."""
    table = np.zeros((config.max_input_dimension + 1, config.max_unary_ops + 1), np.int64)
    for d in range(config.min_input_dimension, config.max_input_dimension + 1):
        for u in range(config.min_unary_ops, config.max_unary_ops + 1):
            table[d, u] = 2 + trees.max_prefix_length(config, d, u)
    return table


def _make_plan(cfg: GeneratorConfig, tokens_per_batch: int, batch_multiple: int,
               point_buckets, token_buckets) -> BucketPlan:
    points = tuple(sorted(set(point_buckets or default_point_buckets(cfg.max_points))))
    targets = tuple(sorted(set(token_buckets or default_token_buckets(cfg))))
    for name, buckets in (("point_buckets", points), ("token_buckets", targets)):
        if not all(isinstance(b, (int, np.integer)) and b > 0 for b in buckets):
            raise ValueError(f"{name} must be positive ints, got {buckets}")
    if points[-1] < cfg.max_points:
        raise ValueError(f"point_buckets: the largest bucket {points[-1]} is below "
                         f"max_points={cfg.max_points}")
    longest = int(_target_bound_table(cfg).max())
    if targets[-1] < longest:
        raise ValueError(f"token_buckets: the largest bucket {targets[-1]} is below the "
                         f"longest possible target ({longest} tokens with <EOS>)")
    rows = {}
    for n in points:
        rows[n] = (tokens_per_batch // n) // batch_multiple * batch_multiple
        if rows[n] < 1:
            raise ValueError(f"tokens_per_batch={tokens_per_batch} holds no "
                             f"{batch_multiple}-row batch of {n} points")
    return BucketPlan(tuple(int(p) for p in points), tuple(int(t) for t in targets), rows)


def _fingerprint(cfg: GeneratorConfig, plan: BucketPlan, process_count: int,
                 synchronized: bool) -> str:
    text = repr((cfg, plan.point_buckets, plan.token_buckets, sorted(plan.rows.items()),
                 process_count, synchronized, _STATE_VERSION))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------- building


def build_batch(generator: Generator, indices: np.ndarray, n_pad: int, t_pad: int | None,
                token_buckets: tuple[int, ...]) -> dict:
    """Generates the samples at ``indices`` and pads them into arrays. With ``t_pad`` None,
    targets pad to the smallest token bucket that holds the longest one."""
    samples = [generator.sample(int(i)) for i in indices]
    n_tokens = np.array([len(s.tokens) + 2 for s in samples], dtype=np.int32)
    if t_pad is None:
        t_pad = next(t for t in token_buckets if t >= n_tokens.max())
    return dict(points=_point_ids(samples, n_pad),
                n_points=np.array([len(s.y) for s in samples], dtype=np.int32),
                tokens=_target_ids(samples, t_pad), n_tokens=n_tokens,
                dimension=np.array([s.info.dimension for s in samples], dtype=np.int32),
                indices=np.asarray(indices, dtype=np.int64))


def _point_ids(samples, n_pad: int) -> np.ndarray:
    """(B, n_pad, 33) encoder ids, as ``tokens.encode_points`` writes each sample, with
    ``<PAD>`` rows below the points. All floats of the batch are encoded in one call."""
    sets = tokens.encode_point_sets([s.x for s in samples], [s.y for s in samples])
    return pad_point_sets(sets, n_pad)[0]


def _target_ids(samples, t_pad: int) -> np.ndarray:
    """(B, t_pad) decoder ids: <EOS> prefix <EOS>, then <PAD>."""
    vocab = tokens.Vocab.decoder()
    ids = np.full((len(samples), t_pad), vocab.pad, np.int32)
    for row, sample in enumerate(samples):
        length = len(sample.tokens)
        ids[row, 0] = ids[row, length + 1] = vocab.eos
        ids[row, 1:length + 1] = sample.tokens
    return ids


_WORKER_GENERATOR: Generator | None = None


def _worker_init(config: GeneratorConfig) -> None:
    global _WORKER_GENERATOR
    _WORKER_GENERATOR = Generator(config)


def _worker_build(indices, n_pad, t_pad, token_buckets) -> dict:
    return build_batch(_WORKER_GENERATOR, indices, n_pad, t_pad, token_buckets)


_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _start_pool(config: GeneratorConfig, workers: int):
    """Spawned (not forked: the parent may run JAX threads) single-threaded workers: the
    work is many small arrays, where BLAS threads only oversubscribe the cores."""
    saved = {k: os.environ.get(k) for k in _THREAD_VARIABLES}
    os.environ.update({k: "1" for k in _THREAD_VARIABLES})  # inherited at spawn
    try:
        return concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init, initargs=(config,))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
