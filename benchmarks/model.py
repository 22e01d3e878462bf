"""Benchmark: encoder points/s and cached decoder tokens/s of the transformer (random weights).

For each config (``small`` and ``paper`` by default), on whatever backend JAX picks:

- encoder: bags of 200 points (1 bag, as the regressor feeds one, and 16 bags), points/s
  through embedder + encoder;
- decoder: ``steps`` incremental steps with the key/value cache inside one jitted
  ``lax.fori_loop`` (as compiled decoding loops run), for 16 and 128 sequences sampled from
  one bag of 200 encoded points, tokens/s (building the cache for the bag is timed apart);
- baseline, in the same run: decoding without a cache under static shapes, i.e. the full
  teacher-forced decoder over a 200-token buffer for every new token, at 16 sequences;
  ``cache_speedup`` is the ratio of the two at 16 sequences.

    python benchmarks/model.py --json

prints one JSON object. Compile times are reported apart from steady-state figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import first_and_median, machine  # noqa: E402  (benchmarks/timing.py)

from jaxsr.model import E2EModel, get_config, init_params, param_counts

N_POINTS = 200
MAX_LEN = 200


def _point_batch(config, bags: int, rng: np.random.Generator):
    ids = rng.integers(0, config.encoder_vocab_size, (bags, N_POINTS, config.tokens_per_point))
    return jnp.asarray(ids, jnp.int32), jnp.ones((bags, N_POINTS), bool)


def measure_encoder(model, params, bags: int, repeats: int) -> dict:
    ids, mask = _point_batch(model.config, bags, np.random.default_rng(0))
    encode = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m, method=E2EModel.encode))
    first, seconds = first_and_median(lambda: encode(params, ids, mask), repeats)
    return {"points_per_second": round(bags * N_POINTS / seconds, 1),
            "compile_seconds": round(first - seconds, 2)}


def measure_cached_decoder(model, params, batch: int, steps: int, repeats: int) -> dict:
    """Tokens/s of ``steps`` cached steps (greedy feedback) in one compiled loop.

    As in sampling, the ``batch`` sequences decode one bag of 200 points: the cache is made
    for the bag (cross-attention keys/values computed once, timed apart) and its rows are
    repeated with ``DecodeCache.take``.
    """
    encoded = jax.random.normal(jax.random.key(0), (1, N_POINTS, model.config.encoder_dim))
    mask = jnp.ones((1, N_POINTS), bool)
    init = jax.jit(lambda p, e, m: model.apply({"params": p}, e, m, MAX_LEN,
                                               method=E2EModel.init_cache))
    init_first, init_seconds = first_and_median(lambda: init(params, encoded, mask), repeats)
    cache = init(params, encoded, mask).take(jnp.zeros(batch, jnp.int32))

    @jax.jit
    def decode(params, cache):
        def body(t, carry):
            token, cache = carry
            logits, cache = model.apply({"params": params}, token, t, cache,
                                        method=E2EModel.decode_step)
            return jnp.argmax(logits, -1).astype(jnp.int32), cache

        start = jnp.full((batch,), 74, jnp.int32)  # <EOS> opens every sequence
        return jax.lax.fori_loop(0, steps, body, (start, cache))[0]

    first, seconds = first_and_median(lambda: decode(params, cache), repeats)
    return {"tokens_per_second": round(batch * steps / seconds, 1),
            "compile_seconds": round(first - seconds, 2),
            "init_cache_seconds_per_bag": round(init_seconds, 4)}


def measure_uncached_decoder(model, params, batch: int, repeats: int) -> dict:
    """Tokens/s when every new token reruns the decoder over the whole 200-token buffer."""
    encoded = jax.random.normal(jax.random.key(0), (batch, N_POINTS, model.config.encoder_dim))
    mask = jnp.ones((batch, N_POINTS), bool)
    tokens = jnp.full((batch, MAX_LEN), 74, jnp.int32)
    decode = jax.jit(lambda p, t, e, m: model.apply({"params": p}, t, e, m,
                                                    method=E2EModel.decode)[:, -1])
    first, seconds = first_and_median(lambda: decode(params, tokens, encoded, mask), repeats)
    return {"tokens_per_second": round(batch / seconds, 1),
            "compile_seconds": round(first - seconds, 2)}


def measure(config_name: str, encoder_bags, decoder_batches, steps: int, repeats: int) -> dict:
    config = get_config(config_name)
    model, params = E2EModel(config), init_params(config, seed=0)
    out = {"parameters": param_counts(config)["total"], "encoder": {}, "cached_decoder": {}}
    for bags in encoder_bags:
        out["encoder"][f"{bags}x{N_POINTS}_points"] = measure_encoder(model, params, bags, repeats)
    for batch in decoder_batches:
        out["cached_decoder"][f"batch_{batch}"] = measure_cached_decoder(
            model, params, batch, steps, repeats)
    baseline_batch = min(decoder_batches)
    baseline = measure_uncached_decoder(model, params, baseline_batch, repeats)
    out["uncached_decoder_baseline"] = {f"batch_{baseline_batch}": baseline}
    cached = out["cached_decoder"][f"batch_{baseline_batch}"]["tokens_per_second"]
    out["cache_speedup"] = round(cached / baseline["tokens_per_second"], 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object (default)")
    parser.add_argument("--configs", nargs="+", default=["small", "paper"])
    parser.add_argument("--encoder-bags", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--decoder-batches", type=int, nargs="+", default=[16, 128])
    parser.add_argument("--steps", type=int, default=32, help="cached decoding steps timed")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = {name: measure(name, args.encoder_bags, args.decoder_batches, args.steps,
                             args.repeats) for name in args.configs}
    results.update(
        n_points=N_POINTS, max_len=MAX_LEN, steps=args.steps, repeats=args.repeats,
        weights="random", dtype="float32", jax=jax.__version__, backend=jax.default_backend(),
        device=str(jax.devices()[0].device_kind), **machine(),
    )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
