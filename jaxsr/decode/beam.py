"""Beam search as one compiled ``lax.while_loop``, batched over bags.

The layout follows flax's ``examples/wmt/decode.py``: a state dataclass with live beams and
finished hypotheses kept side by side as [bags, beams, ...] arrays, and helpers between the
flat [bags * beams] layout the model sees and [bags, beams]. At every step each bag's
``beam_size`` live beams propose ``2 * beam_size`` best continuations (enough for
``beam_size`` of them not to end with ``<EOS>``); the ``beam_size`` best without ``<EOS>``
become the live beams, and those ending with ``<EOS>`` ranked above the last of them (all of
them at ``max_len``) compete for the ``beam_size`` finished slots, as in the reference.

Scores are the reference's: sum of log-probabilities / length ** length_penalty, where
length counts the expression's tokens plus one (the reference counts its leading ``<EOS>``).

A bag stops (its finished hypotheses frozen, so a bag's result does not depend on the other
bags of the batch) when:
- ``early_stopping=True`` (the reference's default): it holds ``beam_size`` finished
  hypotheses;
- ``early_stopping=False``: no live beam can still beat its worst kept finished hypothesis
  (log-probabilities only fall, so the bound is exact: the result is the same as running to
  ``max_len``).
The loop ends when every bag has stopped or ``max_len`` tokens exist.
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
NEG_INF = -jnp.inf  # the score of an empty slot


@struct.dataclass
class BeamState:
    """Loop carry. B bags, K = beam_size, L = max_len."""

    position: Array           # () int32: position of the token fed at this step
    live_logprobs: Array      # (B, K) sum of log-probabilities, best first; -inf = empty
    live_tokens: Array        # (B, K, L) PAD-filled
    finished_scores: Array    # (B, K) length-penalised, best first; -inf = empty slot
    finished_tokens: Array    # (B, K, L)
    finished_lengths: Array   # (B, K) expression tokens, EOS excluded
    finished_eos: Array       # (B, K) True where the hypothesis ended with EOS
    bag_done: Array           # (B,) stopped: finished hypotheses frozen
    cache: DecodeCache        # B * K rows, row b * K + k is beam k of bag b


# ----------------------------------------------------------------------------- public API


def beam_search(model: E2EModel, params, point_ids, point_mask, *, beam_size: int,
                length_penalty: float = 1.0, early_stopping: bool = True,
                max_len: int = DEFAULT_MAX_LEN, devices=None) -> Decoded:
    """The ``beam_size`` best hypotheses per bag, best first.

    point_ids: (B, N, 33) encoder ids; point_mask: (B, N) bool, True for real points.
    Returns ``Decoded`` with tokens (B, beam_size, max_len), lengths/finished (B, beam_size)
    and scores (B, beam_size) = sum_logprob / (lengths + 1) ** length_penalty.
    """
    point_ids, point_mask = jnp.asarray(point_ids), jnp.asarray(point_mask)
    check_inputs(model, point_ids, point_mask, max_len)
    check_int("beam_size", beam_size)
    if beam_size * 2 > model.config.decoder_vocab_size:
        raise ValueError(f"beam_size {beam_size} is too large for the vocabulary")
    if not isinstance(early_stopping, bool):
        raise ValueError(f"early_stopping must be a bool, got {early_stopping!r}")
    fn = _bound_search(model, beam_size=beam_size, max_len=max_len,
                       early_stopping=early_stopping)
    return map_rows(fn, (params, jnp.float32(length_penalty)), (point_ids, point_mask),
                    devices=devices)


# ----------------------------------------------------------------------------- beam helpers


def flatten_beams(x: Array) -> Array:
    """[B, K, ...] -> [B * K, ...]."""
    return x.reshape(-1, *x.shape[2:])


def unflatten_beams(x: Array, beam_size: int) -> Array:
    """[B * K, ...] -> [B, K, ...]."""
    return x.reshape(-1, beam_size, *x.shape[1:])


def gather_beams(x: Array, beam_indices: Array) -> Array:
    """x: [B, K, ...], beam_indices: [B, M] -> [B, M, ...], per bag."""
    return jax.vmap(lambda rows, idx: rows[idx])(x, beam_indices)


def top_hypotheses(scores: Array, k: int, *arrays: Array):
    """The ``k`` best along axis 1 of ``scores`` [B, M], and the same entries of ``arrays``."""
    best, idx = jax.lax.top_k(scores, k)
    return best, tuple(gather_beams(a, idx) for a in arrays)


def penalised(logprob: Array, lengths: Array, alpha) -> Array:
    """The reference's score: sum_logprob / len ** alpha, len = expression tokens + 1."""
    return logprob / (lengths + 1).astype(jnp.float32) ** alpha


# ----------------------------------------------------------------------------- the loop


@functools.lru_cache(maxsize=64)
def _bound_search(model, *, beam_size, max_len, early_stopping):
    return functools.partial(_search_bags, model=model, beam_size=beam_size, max_len=max_len,
                             early_stopping=early_stopping)


def _initial_state(cache: DecodeCache, num_bags: int, beam_size: int, max_len: int):
    shape = (num_bags, beam_size)
    # Only beam 0 is live at first: the K beams would otherwise propose the same tokens.
    live = jnp.full(shape, NEG_INF, jnp.float32).at[:, 0].set(0.0)
    return BeamState(
        position=jnp.int32(0),
        live_logprobs=live,
        live_tokens=jnp.full(shape + (max_len,), PAD, jnp.int32),
        finished_scores=jnp.full(shape, NEG_INF, jnp.float32),
        finished_tokens=jnp.full(shape + (max_len,), PAD, jnp.int32),
        finished_lengths=jnp.zeros(shape, jnp.int32),
        finished_eos=jnp.zeros(shape, bool),
        bag_done=jnp.zeros((num_bags,), bool),
        cache=cache.take(jnp.repeat(jnp.arange(num_bags), beam_size)),
    )


def _search_bags(params, alpha, point_ids, point_mask, *, model, beam_size, max_len,
                 early_stopping) -> Decoded:
    num_bags, k = point_ids.shape[0], beam_size
    cache = encode_and_cache(model, params, point_ids, point_mask, max_len)

    def not_done(state: BeamState):
        return (state.position < max_len) & ~jnp.all(state.bag_done)

    def step(state: BeamState) -> BeamState:
        t = state.position
        fed = jnp.where(t == 0, EOS, state.live_tokens[:, :, jnp.maximum(t - 1, 0)])
        logprobs, cache = decode_step(model, params, flatten_beams(fed), t, state.cache)
        vocab = logprobs.shape[-1]
        # 2K best continuations over all (beam, token) pairs of each bag.
        totals = state.live_logprobs[..., None] + unflatten_beams(logprobs, k)
        cand_logprob, flat_index = jax.lax.top_k(totals.reshape(num_bags, k * vocab), 2 * k)
        cand_beam, cand_token = flat_index // vocab, flat_index % vocab
        cand_tokens = gather_beams(state.live_tokens, cand_beam).at[:, :, t].set(cand_token)
        is_eos = cand_token == EOS

        # Hypotheses that end now: EOS ranked above the K-th continuation without EOS (as
        # the reference, so that beam size 1 is greedy), or no room left for another token.
        live_before = jnp.cumsum(~is_eos, axis=1) - ~is_eos
        ends = (is_eos & (live_before < k)) | (t == max_len - 1)
        cand_length = jnp.where(is_eos, t, t + 1)
        cand_score = jnp.where(ends, penalised(cand_logprob, cand_length, alpha), NEG_INF)
        finished = _merge_finished(state, cand_score, cand_tokens, cand_length, is_eos, k)

        # The K best continuations without EOS stay live; their cache rows follow them.
        live_logprob, (live_tokens, live_beam) = top_hypotheses(
            jnp.where(is_eos, NEG_INF, cand_logprob), k, cand_tokens, cand_beam)
        rows = flatten_beams(live_beam + jnp.arange(num_bags)[:, None] * k)
        done = state.bag_done | _bag_stops(finished[0], live_logprob, t, alpha, max_len,
                                           early_stopping)
        return BeamState(
            position=t + 1, live_logprobs=live_logprob, live_tokens=live_tokens,
            finished_scores=finished[0], finished_tokens=finished[1],
            finished_lengths=finished[2], finished_eos=finished[3],
            bag_done=done, cache=cache.take(rows),
        )

    final = jax.lax.while_loop(not_done, step, _initial_state(cache, num_bags, k, max_len))
    return Decoded(tokens=final.finished_tokens, lengths=final.finished_lengths,
                   scores=final.finished_scores, finished=final.finished_eos)


def _merge_finished(state: BeamState, cand_score, cand_tokens, cand_length, cand_eos, k):
    """The K best of the kept and the new finished hypotheses; stopped bags keep theirs."""
    cand_score = jnp.where(state.bag_done[:, None], NEG_INF, cand_score)
    scores = jnp.concatenate([state.finished_scores, cand_score], axis=1)
    tokens = jnp.concatenate([state.finished_tokens, cand_tokens], axis=1)
    lengths = jnp.concatenate([state.finished_lengths, cand_length], axis=1)
    eos = jnp.concatenate([state.finished_eos, cand_eos], axis=1)
    best, (tokens, lengths, eos) = top_hypotheses(scores, k, tokens, lengths, eos)
    return best, tokens, lengths, eos


def _bag_stops(finished_scores, live_logprob, t, alpha, max_len, early_stopping):
    """Per bag: may it stop after the token at position ``t``?"""
    full = jnp.all(finished_scores > NEG_INF, axis=1)
    if early_stopping:
        return full
    # A live beam has t + 1 tokens; it can end with t + 1 .. max_len expression tokens.
    # s / len ** alpha is monotonic in len, so its best final score is at an end point.
    best_live = live_logprob[:, 0]
    shortest = penalised(best_live, t + 1, alpha)
    longest = penalised(best_live, jnp.int32(max_len), alpha)
    best_possible = jnp.where(best_live > NEG_INF, jnp.maximum(shortest, longest), NEG_INF)
    return full & (finished_scores[:, -1] >= best_possible)
