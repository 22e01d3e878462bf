"""Decoding: compiled greedy / sampling / beam search against an uncached reference loop."""

import os
import subprocess
import sys
import textwrap
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsr import decode
from jaxsr.decode.loops import (
    CDF_BLOCK,
    candidate_keys,
    filter_logits,
    inverse_cdf,
    sample_tokens,
    step_keys,
)
from jaxsr.expr import Vocab
from jaxsr.model import E2EModel, get_config, init_params

EOS, PAD = Vocab.decoder().eos, Vocab.decoder().pad
MAX_LEN = 12
# Raising the EOS bias by this much makes tiny's samples end at different steps.
EOS_BOOST = 5.0


@pytest.fixture(scope="module")
def model():
    return E2EModel(get_config("tiny"))


@pytest.fixture(scope="module")
def params():
    return init_params(get_config("tiny"), seed=0)


@pytest.fixture(scope="module")
def eos_params(params):
    """Random tiny weights rarely say EOS; a larger EOS output bias makes lengths vary."""
    boosted = jax.tree.map(lambda x: x, params)
    boosted["decoder"]["proj"]["bias"] = params["decoder"]["proj"]["bias"].at[EOS].add(EOS_BOOST)
    return boosted


@pytest.fixture(scope="module")
def bags():
    """Three bags of up to 20 points, the second with 10 padded points."""
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, 10218, (3, 20, 33)), jnp.int32)
    mask = jnp.ones((3, 20), bool).at[1, 10:].set(False)
    return ids, mask


# ----------------------------------------------------------------------------- the reference


def uncached_decode(model, params, ids, mask, n, choose, max_len=MAX_LEN):
    """The full teacher-forced decoder re-run on the whole prefix at every step, no cache.

    ``choose(logprobs (rows, V), t) -> tokens (rows,)``. Returns tokens (rows, max_len)
    (EOS, then PAD after the end), lengths, summed log-probs.
    """
    variables = {"params": params}
    enc = model.apply(variables, ids, mask, method=E2EModel.encode)
    enc, mask = jnp.repeat(enc, n, axis=0), jnp.repeat(mask, n, axis=0)
    rows = enc.shape[0]
    # Causal attention: logits at position t see only the prefix 0..t, so a fixed buffer
    # (compiled once) gives the same logits as the growing prefix.
    full_decoder = jax.jit(lambda tokens: model.apply(variables, tokens, enc, mask,
                                                      method=E2EModel.decode))
    prefix = np.full((rows, max_len), PAD, np.int32)
    prefix[:, 0] = EOS
    out = np.full((rows, max_len), PAD, np.int32)
    lengths, logprob = np.full(rows, max_len), np.zeros(rows)
    done = np.zeros(rows, bool)
    for t in range(max_len):
        logprobs = jax.nn.log_softmax(full_decoder(jnp.asarray(prefix))[:, t], axis=-1)
        token = np.asarray(choose(logprobs, t))
        for r in np.flatnonzero(~done):
            out[r, t] = token[r]
            logprob[r] += float(logprobs[r, token[r]])
            if token[r] == EOS:
                done[r], lengths[r] = True, t
            elif t + 1 < max_len:
                prefix[r, t + 1] = token[r]
        if done.all():
            break
    return out, lengths, logprob


def argmax_choice(logprobs, t):
    return jnp.argmax(logprobs, axis=-1)


def sampling_choice(key, num_bags, n, temperature):
    row_keys = candidate_keys(jax.vmap(lambda b: jax.random.fold_in(key, b))(
        jnp.arange(num_bags, dtype=jnp.uint32)), n)
    return lambda logprobs, t: sample_tokens(logprobs, step_keys(row_keys, t), temperature,
                                             None, None)


def assert_same_as_reference(out, reference, n):
    tokens, lengths, logprob = reference
    num_bags = out.tokens.shape[0]
    np.testing.assert_array_equal(np.asarray(out.tokens).reshape(num_bags * n, -1), tokens)
    np.testing.assert_array_equal(np.asarray(out.lengths).ravel(), lengths)
    np.testing.assert_allclose(np.asarray(out.scores).ravel(), logprob, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- greedy


@pytest.fixture(scope="module")
def greedy_out(model, params, bags):
    return decode.greedy(model, params, *bags, max_len=MAX_LEN)


def test_greedy_equals_argmax_of_the_uncached_model(model, params, bags, greedy_out):
    assert greedy_out.tokens.shape == (3, 1, MAX_LEN)
    reference = uncached_decode(model, params, *bags, 1, argmax_choice)
    assert_same_as_reference(greedy_out, reference, 1)
    # Bag 0 ends at once, the others run to max_len: both kinds of end in one batch.
    assert set(np.asarray(greedy_out.lengths).ravel()) == {0, MAX_LEN}


def test_beam_size_one_equals_greedy(model, params, bags, greedy_out):
    beam = decode.beam_search(model, params, *bags, beam_size=1, length_penalty=0.0,
                              max_len=MAX_LEN)
    np.testing.assert_array_equal(beam.tokens, greedy_out.tokens)
    np.testing.assert_array_equal(beam.lengths, greedy_out.lengths)
    np.testing.assert_allclose(beam.scores, greedy_out.scores, rtol=1e-5)


def test_very_low_temperature_sampling_equals_greedy(model, params, bags, greedy_out):
    out = decode.sample(model, params, *bags, key=jax.random.key(3), n=2, temperature=1e-6,
                        max_len=MAX_LEN)
    for j in range(2):
        np.testing.assert_array_equal(out.tokens[:, j], greedy_out.tokens[:, 0])


def test_top_k_one_equals_greedy(model, params, bags, greedy_out):
    out = decode.sample(model, params, *bags, key=jax.random.key(4), n=1, top_k=1,
                        max_len=MAX_LEN)
    np.testing.assert_array_equal(out.tokens, greedy_out.tokens)


# ----------------------------------------------------------------------------- sampling


@pytest.fixture(scope="module")
def samples(model, eos_params, bags):
    return decode.sample(model, eos_params, *bags, key=jax.random.key(0), n=4,
                         max_len=MAX_LEN)


def test_cached_and_uncached_sampling_give_the_same_tokens(model, eos_params, bags, samples):
    reference = uncached_decode(model, eos_params, *bags, 4,
                                sampling_choice(jax.random.key(0), 3, 4, 1.0))
    assert_same_as_reference(samples, reference, 4)


def test_eos_and_padding_for_sequences_of_different_lengths(samples):
    tokens, lengths = np.asarray(samples.tokens), np.asarray(samples.lengths)
    finished = np.asarray(samples.finished)
    assert len(set(lengths.ravel())) >= 3 and finished.any() and not finished.all()
    for row, length, ended in zip(tokens.reshape(-1, MAX_LEN), lengths.ravel(), finished.ravel()):
        body = row[:length]
        assert not np.isin(body, [EOS, PAD]).any()
        if ended:
            assert row[length] == EOS and (row[length + 1:] == PAD).all()
        else:
            assert length == MAX_LEN


def test_sampling_is_reproducible_from_the_key(model, eos_params, bags, samples):
    again = decode.sample(model, eos_params, *bags, key=jax.random.key(0), n=4, max_len=MAX_LEN)
    np.testing.assert_array_equal(again.tokens, samples.tokens)
    other = decode.sample(model, eos_params, *bags, key=jax.random.key(1), n=4, max_len=MAX_LEN)
    assert not np.array_equal(other.tokens, samples.tokens)
    # A candidate's key does not depend on how many candidates are drawn with it.
    fewer = decode.sample(model, eos_params, *bags, key=jax.random.key(0), n=2, max_len=MAX_LEN)
    np.testing.assert_array_equal(fewer.tokens, samples.tokens[:, :2])


def test_filter_logits_top_k_and_top_p():
    logits = jnp.log(jnp.array([[0.5, 0.1, 0.3, 0.1]]))
    kept = lambda x: np.isfinite(np.asarray(x))[0].tolist()
    assert kept(filter_logits(logits, 2, None)) == [True, False, True, False]
    assert kept(filter_logits(logits, None, 0.5)) == [True, False, False, False]
    assert kept(filter_logits(logits, None, 0.75)) == [True, False, True, False]
    assert kept(filter_logits(logits, None, 1.0)) == [True] * 4


def test_inverse_cdf_equals_a_search_in_the_full_cumulative_sum():
    # Vocabularies across the block size, zero weights (filtered words, a zero first word).
    rng = np.random.default_rng(0)
    for size in (1, 7, CDF_BLOCK, CDF_BLOCK + 1, 10_292):
        weights = rng.exponential(size=(64, size)) * (rng.random((64, size)) < 0.7)
        weights[:, 0], weights[0, :] = 0.0, 0.0
        weights[:, -1] += 1.0  # no row all zero; row 0's only word is the last
        u = rng.uniform(1e-6, 1.0, 64)
        got = np.asarray(inverse_cdf(jnp.asarray(weights, jnp.float32), jnp.asarray(u, jnp.float32)))
        cdf = np.cumsum(weights, axis=1)
        expected = np.array([np.searchsorted(c, x * c[-1]) for c, x in zip(cdf, u)])
        np.testing.assert_array_equal(got, expected)
        assert np.all(weights[np.arange(64), got] > 0)


def test_inverse_cdf_never_draws_a_word_of_zero_weight_at_the_top():
    # u = 1 puts the target on the total, where rounding decides: a block's running sum can
    # end an ulp short of its total (measured: some of these rows then drew word 256, past
    # the vocabulary). The last word of positive weight is drawn instead.
    rng = np.random.default_rng(1)
    weights = rng.exponential(size=(4096, 2 * CDF_BLOCK)).astype(np.float32)
    weights *= rng.random(weights.shape) < 0.8
    weights[:, 200:] = 0.0
    weights[:, 199] += 0.01
    got = np.asarray(inverse_cdf(jnp.asarray(weights), jnp.ones(4096)))
    assert got.max() == 199 and np.all(weights[np.arange(4096), got] > 0)


def test_sampled_frequencies_follow_the_softmax():
    logits = jnp.log(jnp.array([0.05, 0.0, 0.6, 0.1, 0.25] + [0.0] * 200))
    keys = jax.random.split(jax.random.key(0), 20_000)
    tokens = np.asarray(sample_tokens(jnp.broadcast_to(logits, (20_000, 205)), keys, 1.0,
                                      None, None))
    frequencies = np.bincount(tokens, minlength=205) / 20_000
    np.testing.assert_allclose(frequencies[:5], [0.05, 0.0, 0.6, 0.1, 0.25], atol=0.012)
    assert frequencies[5:].sum() == 0


# ----------------------------------------------------------------------------- beam search


@pytest.fixture(scope="module")
def beams(model, eos_params, bags):
    return decode.beam_search(model, eos_params, *bags, beam_size=4, max_len=MAX_LEN)


def test_beam_scores_are_the_penalised_log_probs_of_the_uncached_model(
        model, eos_params, bags, beams):
    assert beams.tokens.shape == (3, 4, MAX_LEN)
    scores = np.asarray(beams.scores)
    assert np.all(np.diff(scores, axis=1) <= 0) and np.isfinite(scores).all()
    variables = {"params": eos_params}
    enc = model.apply(variables, *bags, method=E2EModel.encode)
    for b in range(3):
        for k in range(4):
            length, ended = int(beams.lengths[b, k]), bool(beams.finished[b, k])
            emitted = np.asarray(beams.tokens[b, k, :length + ended])
            inputs = jnp.asarray(np.concatenate([[EOS], emitted[:-1]]))[None]
            logits = model.apply(variables, inputs, enc[b:b + 1], bags[1][b:b + 1],
                                 method=E2EModel.decode)
            logprob = jax.nn.log_softmax(logits[0], axis=-1)[np.arange(len(emitted)), emitted]
            expected = float(jnp.sum(logprob)) / (length + 1)
            assert scores[b, k] == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_exhaustive_stopping_never_scores_worse(model, eos_params, bags, beams):
    exact = decode.beam_search(model, eos_params, *bags, beam_size=4, early_stopping=False,
                               max_len=MAX_LEN)
    assert np.all(np.asarray(exact.scores[:, 0]) >= np.asarray(beams.scores[:, 0]) - 1e-6)


# ----------------------------------------------------------------------------- expressions


def test_to_expressions_parses_and_counts_the_dropped():
    vocab = Vocab.decoder()

    def row(words):
        ids = [vocab[w] for w in words.split()]
        return ids + [PAD] * (8 - len(ids))

    tokens = np.array([[row("add x_0 x_1 <EOS>"), row("add x_0 <EOS>")],
                       [row("mul x_0 x_0 x_1 <EOS>"), row("<EOS>")],
                       [row("x_0 <PAD> x_1"), row("add x_0 <PAD> x_1")]])
    exprs, index, dropped = decode.to_expressions(tokens)
    assert [str(e) for e in exprs] == [str(decode_one("add x_0 x_1")),
                                       str(decode_one("mul x_0 x_0")), "x_0"]
    assert index.tolist() == [[0, 0], [1, 0], [2, 0]]
    assert dropped == Counter({"truncated": 2, "empty expression": 1})
    # Explicit lengths override the end markers: an unknown word inside the row.
    _, _, dropped = decode.to_expressions(tokens[2:, 1:], lengths=np.array([[4]]))
    assert dropped == Counter({"unknown word": 1})


def decode_one(words):
    from jaxsr.expr import parse_prefix
    return parse_prefix(words, allow_trailing=True)


def test_to_expressions_takes_decoded(samples):
    exprs, index, dropped = decode.to_expressions(samples)
    assert len(exprs) + sum(dropped.values()) == samples.tokens.shape[0] * 4
    assert index.shape == (len(exprs), 2)


def test_generate_dispatches_every_strategy_with_n_candidates(model, eos_params, bags):
    key = jax.random.key(3)
    direct = {
        "sampling": decode.sample(model, eos_params, *bags, key=key, n=2, temperature=0.5,
                                  max_len=MAX_LEN),
        "beam": decode.beam_search(model, eos_params, *bags, beam_size=2, max_len=MAX_LEN),
        "greedy": decode.greedy(model, eos_params, *bags, max_len=MAX_LEN),
    }
    assert set(direct) == set(decode.STRATEGIES)
    for strategy, expected in [*direct.items(), ("search", direct["beam"])]:
        out = decode.generate(model, eos_params, *bags, strategy=strategy, n=2, key=key,
                              temperature=0.5, max_len=MAX_LEN)
        np.testing.assert_array_equal(out.tokens, expected.tokens, err_msg=strategy)
        np.testing.assert_array_equal(out.lengths, expected.lengths, err_msg=strategy)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("call, message", [
    (lambda m, p, i, k: decode.sample(m, p, i, k, key=jax.random.key(0), n=0), "n must be"),
    (lambda m, p, i, k: decode.sample(m, p, i, k, key=jax.random.key(0), temperature=0.0),
     "temperature must be > 0"),
    (lambda m, p, i, k: decode.sample(m, p, i, k, key=jax.random.key(0), top_p=1.5), "top_p"),
    (lambda m, p, i, k: decode.beam_search(m, p, i, k, beam_size=0), "beam_size must be"),
    (lambda m, p, i, k: decode.greedy(m, p, i[0], k), "point_ids must have shape"),
    (lambda m, p, i, k: decode.greedy(m, p, i, k[:, :5]), "point_mask must have shape"),
    (lambda m, p, i, k: decode.greedy(m, p, i, k, max_len=0), "max_len must be"),
    (lambda m, p, i, k: decode.generate(m, p, i, k, strategy="nucleus"), "unknown decoding"),
])
def test_bad_input_is_named(model, params, bags, call, message):
    with pytest.raises(ValueError, match=message):
        call(model, params, *bags)


# ----------------------------------------------------------------------------- devices


@pytest.mark.slow
def test_two_devices_give_the_same_tokens_as_one():
    """pmap over 2 simulated CPU devices (3 bags: one padded) against 1 device."""
    script = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np
        from jaxsr import decode
        from jaxsr.model import E2EModel, get_config, init_params
        assert jax.local_device_count() == 2, jax.local_devices()
        config = get_config("tiny")
        model, params = E2EModel(config), init_params(config, seed=0)
        params["decoder"]["proj"]["bias"] = params["decoder"]["proj"]["bias"].at[74].add(5.0)
        rng = np.random.default_rng(0)
        ids = jnp.asarray(rng.integers(0, 10218, (3, 20, 33)), jnp.int32)
        mask = jnp.ones((3, 20), bool).at[1, 10:].set(False)
        one = jax.local_devices()[:1]
        runs = [
            lambda d: decode.greedy(model, params, ids, mask, max_len=10, devices=d),
            lambda d: decode.sample(model, params, ids, mask, key=jax.random.key(0), n=3,
                                    max_len=10, devices=d),
            lambda d: decode.beam_search(model, params, ids, mask, beam_size=3, max_len=10,
                                         devices=d),
        ]
        for run in runs:
            a, b = run(None), run(one)
            np.testing.assert_array_equal(a.tokens, b.tokens)
            np.testing.assert_array_equal(a.lengths, b.lengths)
            np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)
        print("same")
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "same" in result.stdout
