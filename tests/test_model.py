"""The Flax model: sizes, padding and caching semantics, and equality with a torch twin."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsr import cli
from jaxsr.model import (
    DecodeCache,
    E2EModel,
    ModelConfig,
    abstract_params,
    flatten_params,
    get_config,
    init_params,
    param_counts,
)
from jaxsr.model.params import ParamsMismatchError, check_params

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
from batches import length_mask, padded_point_batch, padded_token_batch  # noqa: E402
from helpers import load_benchmark  # noqa: E402


class Tiny:
    """The tiny model with jitted entry points, compiled once for the module."""

    def __init__(self):
        self.config = get_config("tiny")
        self.model = E2EModel(self.config)
        self.params = init_params(self.config, seed=0)
        model = self.model
        self.embed = jax.jit(lambda p, ids: model.apply({"params": p}, ids, method=E2EModel.embed))
        self.encode = jax.jit(lambda p, ids, m: model.apply({"params": p}, ids, m,
                                                            method=E2EModel.encode))
        self.decode = jax.jit(lambda p, t, e, m, tm: model.apply({"params": p}, t, e, m, tm,
                                                                 method=E2EModel.decode))
        self.init_cache = jax.jit(
            lambda p, e, m, n: model.apply({"params": p}, e, m, n, method=E2EModel.init_cache),
            static_argnums=3)
        self.step = jax.jit(lambda p, t, pos, c: model.apply({"params": p}, t, pos, c,
                                                             method=E2EModel.decode_step))


@pytest.fixture(scope="module")
def tiny() -> Tiny:
    return Tiny()


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(1)
    point_ids, point_lengths = padded_point_batch(rng, dims=(2, 10, 1), lengths=(11, 6, 3))
    tokens, token_lengths = padded_token_batch(rng, lengths=(8, 5, 3))
    return dict(point_ids=point_ids, point_mask=length_mask(point_lengths, 11),
                tokens=tokens, token_mask=length_mask(token_lengths, 8),
                point_lengths=point_lengths, token_lengths=token_lengths)


# ----------------------------------------------------------------------------- sizes


def test_paper_config_has_the_reference_parameter_count():
    counts = param_counts(get_config("paper"))  # eval_shape: nothing is allocated
    assert counts == {"embedder": 6_198_464, "encoder": 12_610_560, "decoder": 74_642_484,
                      "total": 93_451_508}


def test_parameter_names_mirror_the_reference_modules():
    names = set(flatten_params(abstract_params(get_config("tiny"))))
    for name in ("embedder/embeddings/embedding", "embedder/hidden_layers_0/kernel",
                 "embedder/fc/bias", "encoder/layer_norm_emb/scale",
                 "encoder/attentions_1/q_lin/kernel", "encoder/ffns_0/lin2/bias",
                 "decoder/position_embeddings/embedding", "decoder/layer_norm15_1/scale",
                 "decoder/encoder_attn_0/k_lin/kernel", "decoder/proj/bias"):
        assert name in names, name
    assert not any(n.startswith("encoder/position") or n.startswith("decoder/proj/kernel")
                   for n in names)


def test_config_validation_names_the_problem():
    with pytest.raises(ValueError, match="decoder_dim 60 is not a multiple of decoder_heads 8"):
        ModelConfig(decoder_dim=60, decoder_heads=8)
    with pytest.raises(ValueError, match="dtype"):
        ModelConfig(dtype="int8")
    with pytest.raises(ValueError, match="encoder_layers must be an int >= 1"):
        ModelConfig(encoder_layers=0)
    with pytest.raises(ValueError, match="unknown model config 'huge'"):
        get_config("huge")
    assert get_config("small", dtype="bfloat16").dtype == "bfloat16"
    assert ModelConfig.from_dict(get_config("tiny").to_dict()) == get_config("tiny")


def test_init_follows_the_reference_distributions(tiny):
    flat = {k: np.asarray(v) for k, v in flatten_params(tiny.params).items()}
    check_params(tiny.params, tiny.config)
    assert not flat["embedder/embeddings/embedding"][8].any()  # <PAD> rows are zero
    assert not flat["decoder/embeddings/embedding"][82].any()
    assert np.all(flat["decoder/layer_norm2_1/scale"] == 1)
    bound = 1 / np.sqrt(64)
    lin1 = flat["decoder/ffns_0/lin1/kernel"]
    assert np.abs(lin1).max() <= bound and np.abs(lin1).max() > 0.9 * bound
    assert abs(flat["decoder/embeddings/embedding"].std() - 64**-0.5) < 0.01
    again = flatten_params(init_params(tiny.config, seed=0))
    assert all(np.array_equal(flat[k], again[k]) for k in flat)
    with pytest.raises(ParamsMismatchError, match="decoder/proj/bias"):
        check_params({**tiny.params, "decoder": {**tiny.params["decoder"], "proj": {}}},
                     tiny.config)


def test_bad_input_shapes_are_named(tiny, batch):
    with pytest.raises(ValueError, match=r"point_ids must have shape \(batch, points, 33\)"):
        tiny.encode(tiny.params, batch["point_ids"][..., :30], batch["point_mask"])
    with pytest.raises(ValueError, match="point_mask shape"):
        tiny.encode(tiny.params, batch["point_ids"], batch["point_mask"][:, :4])


# ----------------------------------------------------------------------------- semantics


def test_forward_shapes_and_dtypes(tiny, batch):
    encoded = tiny.encode(tiny.params, batch["point_ids"], batch["point_mask"])
    logits = tiny.decode(tiny.params, batch["tokens"], encoded, batch["point_mask"],
                         batch["token_mask"])
    assert encoded.shape == (3, 11, 64) and encoded.dtype == jnp.float32
    assert logits.shape == (3, 8, 10292) and logits.dtype == jnp.float32
    # Padded points are zeroed after every layer, as in the reference.
    assert not np.asarray(encoded)[~batch["point_mask"]].any()


def test_padding_and_point_order_do_not_change_outputs(tiny, batch):
    ids, mask, tokens = batch["point_ids"], batch["point_mask"], batch["tokens"]
    encoded = np.asarray(tiny.encode(tiny.params, ids, mask))
    n = int(batch["point_lengths"][0])
    order = np.random.default_rng(0).permutation(n)  # no positions in the encoder: a set
    alone = np.asarray(tiny.encode(tiny.params, ids[:1, :n][:, order], mask[:1, :n]))
    np.testing.assert_allclose(alone[0], encoded[0, :n][order], atol=1e-5)
    logits = np.asarray(tiny.decode(tiny.params, tokens, encoded, mask, batch["token_mask"]))
    short = np.asarray(tiny.decode(tiny.params, tokens[:1, :5], alone, mask[:1, :n], None))
    np.testing.assert_allclose(short[0], logits[0, :5], atol=1e-4)


def test_cached_decoding_equals_full_recomputation(tiny, batch):
    mask, tokens = batch["point_mask"], batch["tokens"]
    encoded = tiny.encode(tiny.params, batch["point_ids"], mask)
    full = np.asarray(tiny.decode(tiny.params, tokens, encoded, mask, None))
    cache = tiny.init_cache(tiny.params, encoded, mask, 8)
    assert isinstance(cache, DecodeCache) and (cache.batch_size, cache.max_len) == (3, 8)
    assert len(cache.self_keys) == 2 and cache.self_keys[0].shape == (3, 4, 16, 8)
    assert cache.cross_values[1].shape == (3, 4, 11, 16)
    for t in range(tokens.shape[1]):
        step_logits, cache = tiny.step(tiny.params, tokens[:, t], np.full(3, t), cache)
        np.testing.assert_allclose(np.asarray(step_logits), full[:, t], atol=1e-4, rtol=0)


def test_cache_rows_can_sit_at_different_positions_and_be_reordered(tiny, batch):
    mask, tokens = batch["point_mask"], batch["tokens"]
    encoded = tiny.encode(tiny.params, batch["point_ids"], mask)
    full = np.asarray(tiny.decode(tiny.params, tokens, encoded, mask, None))
    cache = tiny.init_cache(tiny.params, encoded, mask, 8)
    # Row 0 starts one step late: positions differ per row.
    _, cache = tiny.step(tiny.params, tokens[:, 0], np.zeros(3, int), cache)
    positions = np.array([0, 1, 1])
    logits, cache = tiny.step(tiny.params, tokens[np.arange(3), positions], positions, cache)
    np.testing.assert_allclose(np.asarray(logits)[1:], full[1:, 1], atol=1e-4)
    np.testing.assert_allclose(np.asarray(logits)[0], full[0, 0], atol=1e-4)
    order = np.array([2, 2, 1])  # beam reordering: gather rows of every cache array
    moved = cache.take(jnp.asarray(order))
    logits, _ = tiny.step(tiny.params, tokens[order, 2], np.full(3, 2), moved)
    np.testing.assert_allclose(np.asarray(logits), full[order, 2], atol=1e-4)


def test_cached_greedy_decoding_agrees_with_the_teacher_forced_decoder(tiny, batch):
    """decode.greedy's loop over the cache picks, at every step, the argmax of the full
    (uncached) decoder run on the tokens chosen so far."""
    from jaxsr import decode

    mask = batch["point_mask"]
    steps, eos = 6, decode.common.EOS
    out = decode.greedy(tiny.model, tiny.params, batch["point_ids"], mask, max_len=steps)
    tokens = np.asarray(out.tokens[:, 0])
    assert tokens.shape == (len(mask), steps)
    sequences = np.concatenate([np.full((len(mask), 1), eos), tokens], axis=1)
    encoded = tiny.encode(tiny.params, batch["point_ids"], mask)
    logits = np.asarray(tiny.decode(tiny.params, sequences[:, :-1], encoded, mask, None))
    # Up to each row's end: after <EOS> the loop writes <PAD> instead of its argmax.
    for row, length in enumerate(np.asarray(out.lengths[:, 0])):
        end = min(int(length) + 1, steps)
        np.testing.assert_array_equal(tokens[row, :end], logits[row, :end].argmax(-1))


def test_bfloat16_compute_stays_close_to_float32(tiny, batch):
    model = E2EModel(tiny.config.replace(dtype="bfloat16"))

    @jax.jit
    def forward(params, ids, mask, tokens):
        encoded = model.apply({"params": params}, ids, mask, method=E2EModel.encode)
        return encoded, model.apply({"params": params}, tokens, encoded, mask, None,
                                    method=E2EModel.decode)

    mask = batch["point_mask"]
    encoded, logits = forward(tiny.params, batch["point_ids"], mask, batch["tokens"])
    assert encoded.dtype == jnp.bfloat16 and logits.dtype == jnp.float32
    exact = tiny.decode(tiny.params, batch["tokens"],
                        tiny.encode(tiny.params, batch["point_ids"], mask), mask, None)
    assert np.abs(np.asarray(logits) - np.asarray(exact)).max() < 0.1 * np.abs(exact).max()


# ----------------------------------------------------------------------------- torch twin


@pytest.fixture(scope="module")
def torch_twin(tiny):
    """The torch reference implementation loaded with the tiny model's weights."""
    torch = pytest.importorskip("torch")
    import argparse

    import torch_reference

    from jaxsr.expr.tokens import decoder_vocab, encoder_vocab
    from jaxsr.weights import to_reference_state_dict

    c = tiny.config
    flags = argparse.Namespace(
        emb_emb_dim=c.embedder_dim, enc_emb_dim=c.encoder_dim, dec_emb_dim=c.decoder_dim,
        n_enc_layers=c.encoder_layers, n_dec_layers=c.decoder_layers,
        n_enc_heads=c.encoder_heads, n_dec_heads=c.decoder_heads, n_emb_layers=1,
        emb_expansion_factor=1, max_input_dimension=10, max_output_dimension=1,
        mantissa_len=1, float_precision=3, max_len=200)
    wrapper = torch_reference.build_wrapper(flags, encoder_vocab(), decoder_vocab())
    state = {k: torch.from_numpy(np.array(v)) for k, v in
             to_reference_state_dict(tiny.params).items()}
    wrapper.load_state_dict({f"{k}": v for k, v in state.items()}, strict=True)
    return wrapper


def test_flax_equals_torch_reference_on_padded_batches(tiny, batch, torch_twin):
    import torch_reference

    expected = torch_reference.reference_outputs(
        torch_twin, batch["point_ids"], batch["point_lengths"], batch["tokens"],
        batch["token_lengths"])
    embedded = tiny.embed(tiny.params, batch["point_ids"])
    encoded = tiny.encode(tiny.params, batch["point_ids"], batch["point_mask"])
    logits = tiny.decode(tiny.params, batch["tokens"], encoded, batch["point_mask"],
                         batch["token_mask"])
    for name, ours in (("embedder", embedded), ("encoder", encoded), ("logits", logits)):
        np.testing.assert_allclose(np.asarray(ours), expected[name], atol=1e-4, rtol=0,
                                   err_msg=name)
    assert np.abs(expected["logits"]).max() > 1  # not a vacuous comparison


# ----------------------------------------------------------------------------- CLI


def test_info_prints_parameter_counts_per_module(capsys):
    assert cli.main(["info", "--config", "paper"]) == 0
    out = capsys.readouterr().out
    for line in ("embedder      6,198,464", "encoder      12,610,560",
                 "decoder      74,642,484", "total        93,451,508"):
        assert line in out
    assert cli.main(["info", "--config", "no-such-model"]) == 4  # errors.MODEL


def test_model_benchmark_compares_the_cached_decoder_with_its_baseline_at_one_batch():
    """The report's sizes are the ones asked for, and the cache's speed-up is the ratio of
    the two decoders' rates at the smallest batch (the only one the baseline runs)."""
    bench = load_benchmark("model")
    result = bench.measure("tiny", [1], [4, 2], steps=2, repeats=1)
    assert result["parameters"] == param_counts(get_config("tiny"))["total"]
    assert set(result["encoder"]) == {f"1x{bench.N_POINTS}_points"}
    assert set(result["cached_decoder"]) == {"batch_2", "batch_4"}
    assert set(result["uncached_decoder_baseline"]) == {"batch_2"}
    cached = result["cached_decoder"]["batch_2"]["tokens_per_second"]
    baseline = result["uncached_decoder_baseline"]["batch_2"]["tokens_per_second"]
    assert result["cache_speedup"] == pytest.approx(cached / baseline, abs=0.0501)
