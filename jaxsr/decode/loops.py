"""Greedy decoding and sampling: one compiled ``lax.while_loop`` over a static-shape cache.

All candidates of all bags decode together as ``rows = bags * n``. The cache is built once
per bag (encoder pass, cross-attention keys/values) and its rows repeated ``n`` times.
The loop stops when every row has emitted ``<EOS>`` or ``max_len`` tokens exist.

Randomness: the token at step ``t`` of candidate ``j`` of bag ``b`` is drawn with the key
``fold_in(fold_in(fold_in(key, b), j), t)``, so a candidate does not depend on how many bags
or candidates are decoded with it, nor on how bags are split over devices.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import struct

from jaxsr.checks import check_int
from jaxsr.decode.common import (
    DEFAULT_MAX_LEN, EOS, PAD, Decoded, check_inputs, decode_step, encode_and_cache,
)
from jaxsr.model import DecodeCache, E2EModel
from jaxsr.parallel import map_rows

Array = jax.Array


@struct.dataclass
class SampleState:
    """Loop carry; ``rows`` = bags * candidates."""

    position: Array   # () int32: position of the token fed at this step
    last: Array       # (rows,) token fed at this step
    tokens: Array     # (rows, max_len) emitted tokens, PAD-filled
    logprob: Array    # (rows,) sum of log-probabilities of the emitted tokens
    lengths: Array    # (rows,) expression tokens so far (EOS excluded)
    finished: Array   # (rows,) True once EOS was emitted
    cache: DecodeCache


# ----------------------------------------------------------------------------- public API


def greedy(model: E2EModel, params, point_ids, point_mask, *,
           max_len: int = DEFAULT_MAX_LEN, devices=None) -> Decoded:
    """The most likely token at every step, one candidate per bag.

    point_ids: (B, N, 33) encoder ids; point_mask: (B, N) bool, True for real points.
    Returns ``Decoded`` with tokens (B, 1, max_len), lengths/scores/finished (B, 1).
    """
    point_ids, point_mask = jnp.asarray(point_ids), jnp.asarray(point_mask)
    check_inputs(model, point_ids, point_mask, max_len)
    fn = _bound_sampler(model, n=1, max_len=max_len, top_k=None, top_p=None, greedy=True)
    dummy_keys = jnp.zeros((point_ids.shape[0],), jnp.uint32)
    return map_rows(fn, (params, jnp.float32(1.0)), (point_ids, point_mask, dummy_keys),
                    devices=devices)


def sample(model: E2EModel, params, point_ids, point_mask, *, key, n: int = 1,
           temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
           max_len: int = DEFAULT_MAX_LEN, devices=None) -> Decoded:
    """``n`` independent samples per bag from softmax(logits / temperature).

    ``top_k`` keeps the k most likely tokens at each step, ``top_p`` the smallest set whose
    probability reaches p (both after the temperature); the reference uses neither.
    Returns ``Decoded`` with tokens (B, n, max_len), lengths/scores/finished (B, n).
    Reproducible: the same key gives the same tokens (see the module docstring).
    """
    point_ids, point_mask = jnp.asarray(point_ids), jnp.asarray(point_mask)
    check_inputs(model, point_ids, point_mask, max_len)
    check_int("n", n)
    _check_sampling_options(model, temperature, top_k, top_p)
    fn = _bound_sampler(model, n=n, max_len=max_len, top_k=top_k,
                        top_p=None if top_p is None else float(top_p), greedy=False)
    bag_keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(
        jnp.arange(point_ids.shape[0], dtype=jnp.uint32))
    return map_rows(fn, (params, jnp.float32(temperature)), (point_ids, point_mask, bag_keys),
                    devices=devices)


def _check_sampling_options(model, temperature, top_k, top_p) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    vocab = model.config.decoder_vocab_size
    if top_k is not None and (not isinstance(top_k, int) or not 1 <= top_k <= vocab):
        raise ValueError(f"top_k must be None or an int in [1, {vocab}], got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be None or in (0, 1], got {top_p!r}")


# ----------------------------------------------------------------------------- token choice


def filter_logits(logits: Array, top_k: int | None, top_p: float | None) -> Array:
    """Sets to -inf the logits (rows, V) outside the top-k and outside the top-p nucleus."""
    if top_k is not None:
        kth_best = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth_best, -jnp.inf, logits)
    if top_p is not None:
        ordered = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        # Keep token i while the mass of the tokens before it is below p: the first always.
        kept = jnp.sum(jnp.cumsum(probs, axis=-1) - probs < top_p, axis=-1, keepdims=True)
        threshold = jnp.take_along_axis(ordered, kept - 1, axis=-1)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


def sample_tokens(logprobs: Array, keys: Array, temperature, top_k, top_p) -> Array:
    """One token per row from softmax(logprobs / temperature), filtered; keys: one per row.

    Inverse CDF with one uniform number per row: the Gumbel trick of
    ``jax.random.categorical`` draws one per vocabulary word (10,292 per row and step),
    which dominates a CPU step.
    """
    logits = filter_logits(logprobs / temperature, top_k, top_p)
    weights = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))  # unnormalised
    tiny = jnp.finfo(jnp.float32).tiny  # u > 0: a zero-weight first word is never drawn
    u = jax.vmap(lambda k: jax.random.uniform(k, (), minval=tiny))(keys)
    return inverse_cdf(weights, u)


# Words per block of ``inverse_cdf``'s first level.
CDF_BLOCK = 128


def inverse_cdf(weights: Array, u: Array) -> Array:
    """Per row of ``weights`` (rows, V) (non-negative, not all zero), the first word whose
    cumulative weight reaches ``u`` (rows,) x the row's total, i.e. the number of words
    whose cumulative weight is below it: a draw from the weights for u uniform in (0, 1].

    In two levels, blocks of ``CDF_BLOCK`` words and then the words of the chosen block: a
    cumulative sum over the whole vocabulary cost 4 ms per step of 64 rows on a CPU core,
    more than the rest of the sampling and the output projection together (measured).
    """
    rows, size = weights.shape
    n_blocks = -(-size // CDF_BLOCK)
    blocks = jnp.pad(weights, ((0, 0), (0, n_blocks * CDF_BLOCK - size)))
    blocks = blocks.reshape(rows, n_blocks, CDF_BLOCK)
    block_cdf = jnp.cumsum(blocks.sum(axis=-1), axis=-1)
    target = u * block_cdf[:, -1]
    block = jnp.minimum(jnp.sum(block_cdf < target[:, None], axis=-1), n_blocks - 1)
    below = jnp.where(block > 0, jnp.take_along_axis(
        block_cdf, jnp.maximum(block - 1, 0)[:, None], axis=-1)[:, 0], 0.0)
    chosen = jnp.take_along_axis(blocks, block[:, None, None], axis=1)[:, 0]
    word = jnp.sum(below[:, None] + jnp.cumsum(chosen, axis=-1) < target[:, None], axis=-1)
    # Rounding can leave the block's own sum short of the target: its last word of positive
    # weight is then drawn, never one of zero weight (or beyond the vocabulary).
    last_positive = CDF_BLOCK - 1 - jnp.argmax((chosen > 0)[:, ::-1], axis=-1)
    return (block * CDF_BLOCK + jnp.minimum(word, last_positive)).astype(jnp.int32)


def step_keys(row_keys: Array, position: Array) -> Array:
    """The keys of one step: ``fold_in(row_key, position)`` for every row."""
    return jax.vmap(lambda k: jax.random.fold_in(k, position))(row_keys)


def candidate_keys(bag_keys: Array, n: int) -> Array:
    """(B,) bag keys -> (B * n,) row keys, ``fold_in(bag_key, j)`` for candidate j."""
    fold = jax.vmap(jax.vmap(jax.random.fold_in, (None, 0)), (0, None))
    keys = fold(bag_keys, jnp.arange(n, dtype=jnp.uint32))
    return keys.reshape(-1, *keys.shape[2:])


# ----------------------------------------------------------------------------- the loop


@functools.lru_cache(maxsize=64)
def _bound_sampler(model, *, n, max_len, top_k, top_p, greedy):
    """One stable function object per setting, so that jit/pmap caches are hit."""
    return functools.partial(_decode_bags, model=model, n=n, max_len=max_len,
                             top_k=top_k, top_p=top_p, greedy=greedy)


def _decode_bags(params, temperature, point_ids, point_mask, bag_keys, *, model, n, max_len,
                 top_k, top_p, greedy) -> Decoded:
    num_bags = point_ids.shape[0]
    rows = num_bags * n
    cache = encode_and_cache(model, params, point_ids, point_mask, max_len)
    cache = cache.take(jnp.repeat(jnp.arange(num_bags), n))
    row_keys = None if greedy else candidate_keys(bag_keys, n)

    def choose(logprobs, position):
        if greedy:
            return jnp.argmax(logprobs, axis=-1).astype(jnp.int32)
        return sample_tokens(logprobs, step_keys(row_keys, position), temperature, top_k, top_p)

    def not_done(state: SampleState):
        return (state.position < max_len) & ~jnp.all(state.finished)

    def step(state: SampleState) -> SampleState:
        logprobs, cache = decode_step(model, params, state.last, state.position, state.cache)
        live = ~state.finished
        token = jnp.where(live, choose(logprobs, state.position), PAD)
        ended = live & (token == EOS)
        token_logprob = jnp.take_along_axis(logprobs, token[:, None], axis=-1)[:, 0]
        return SampleState(
            position=state.position + 1,
            last=token,
            tokens=state.tokens.at[:, state.position].set(token),
            logprob=state.logprob + jnp.where(live, token_logprob, 0.0),
            lengths=jnp.where(live & ~ended, state.position + 1, state.lengths),
            finished=state.finished | ended,
            cache=cache,
        )

    start = SampleState(
        position=jnp.int32(0),
        last=jnp.full((rows,), EOS, jnp.int32),
        tokens=jnp.full((rows, max_len), PAD, jnp.int32),
        logprob=jnp.zeros((rows,), jnp.float32),
        lengths=jnp.zeros((rows,), jnp.int32),
        finished=jnp.zeros((rows,), bool),
        cache=cache,
    )
    final = jax.lax.while_loop(not_done, step, start)
    return Decoded(
        tokens=final.tokens.reshape(num_bags, n, max_len),
        lengths=final.lengths.reshape(num_bags, n),
        scores=final.logprob.reshape(num_bags, n),
        finished=final.finished.reshape(num_bags, n),
    )
