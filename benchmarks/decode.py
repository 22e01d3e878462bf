"""Benchmark: tokens/s of the compiled decoding loops against an uncached loop (random weights).

For each config (``small`` and ``paper`` by default), on one bag of 200 encoded points, with
the EOS output bias set to -1e9 so that every sequence runs to exactly ``--length`` (60)
tokens:

- cached, through ``jaxsr.decode``: greedy, sampling with n = 16, 128 and 1024 candidates
  per bag (``--samples``), beam search with beam 10 (``--no-beam`` leaves it out);
  tokens/s = candidates * length / steady-state seconds; compile seconds (first call minus
  a steady call) reported apart;
- uncached, in the same run: a Python loop that at step t runs the whole teacher-forced
  decoder (``E2EModel.decode``, cross-attention keys/values included) on the t-token prefix,
  padded up to a multiple of 8 so that it compiles 8 shapes (padding sits after the prefix,
  so causal attention keeps the logits exact), and takes the argmax. It costs about
  rows * length^2 / 2 decoder tokens, so it runs for 1 and 16 rows with ``small`` (compared
  with greedy and n = 16) and 1 row with ``paper`` (compared with greedy).
  ``speedup_vs_uncached`` = cached tokens/s / uncached tokens/s at the same rows.
  ``--no-uncached`` skips it (it compiles 8 prefix shapes per row count, time a short
  accelerator session may not have).

    python benchmarks/decode.py --json

prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import first_and_median, machine  # noqa: E402  (benchmarks/timing.py)

from jaxsr import decode
from jaxsr.expr import Vocab
from jaxsr.model import E2EModel, get_config, init_params

N_POINTS = 200
BUCKET = 8
EOS, PAD = Vocab.decoder().eos, Vocab.decoder().pad

SAMPLES = (16, 128, 1024)
BEAM = 10
# Uncached runs cost ~rows * length^2 / 2 decoder tokens: only these fit a few minutes.
UNCACHED_ROWS = (1, 16)
# paper with 1024 candidates: the cache repeats the bag's cross-attention keys/values per
# row (16 layers * 2 * 1024 * 200 * 512 floats = 13 GiB) and takes minutes on 2 cores.
# Only the default list skips it: asking for it with --samples (or --all) runs it.
SKIPPED = {("paper", "sample_1024"): "cache of ~17 GiB and minutes of CPU; run with --all"}


def strategies(samples=SAMPLES, beam: bool = True) -> dict[str, int]:
    """Strategy name -> candidates decoded per bag."""
    out = {"greedy": 1, **{f"sample_{n}": n for n in samples}}
    if beam:
        out[f"beam_{BEAM}"] = BEAM
    return out


def never_eos(params):
    """Random weights, but EOS never wins: every sequence is exactly ``length`` tokens."""
    params = jax.tree.map(lambda x: x, params)
    params["decoder"]["proj"]["bias"] = params["decoder"]["proj"]["bias"].at[EOS].set(-1e9)
    return params


def one_bag(config):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, config.encoder_vocab_size, (1, N_POINTS, config.tokens_per_point))
    return jnp.asarray(ids, jnp.int32), jnp.ones((1, N_POINTS), bool)


def run_cached(model, params, bag, name: str, n: int, length: int):
    key = jax.random.key(0)
    if name == "greedy":
        return lambda: decode.greedy(model, params, *bag, max_len=length)
    if name.startswith("beam_"):
        return lambda: decode.beam_search(model, params, *bag, beam_size=n, max_len=length)
    return lambda: decode.sample(model, params, *bag, key=key, n=n, max_len=length)


def measure_cached(model, params, bag, name: str, n: int, length: int, repeats: int) -> dict:
    run = run_cached(model, params, bag, name, n, length)
    first, steady = first_and_median(run, repeats)
    out = run()
    assert int(out.lengths.min()) == length, "a sequence ended early: EOS was not suppressed"
    tokens = n * length
    return {"candidates": n, "seconds": round(steady, 4),
            "tokens_per_second": round(tokens / steady, 1),
            "compile_seconds": round(max(first - steady, 0.0), 2)}


def uncached_loop(model, params, bag, rows: int, length: int):
    """The naive decoder: the full model on the whole (padded) prefix at every step."""
    variables = {"params": params}
    encoder_out = model.apply(variables, *bag, method=E2EModel.encode)
    encoder_out = jnp.repeat(encoder_out, rows, axis=0)
    mask = jnp.ones(encoder_out.shape[:2], bool)

    @jax.jit
    def next_token(prefix, t):
        logits = model.apply(variables, prefix, encoder_out, mask, method=E2EModel.decode)
        return jnp.argmax(jnp.take(logits, t, axis=1), axis=-1).astype(jnp.int32)

    def run():
        width = BUCKET * math.ceil(length / BUCKET)
        buffer = jnp.full((rows, width), PAD, jnp.int32).at[:, 0].set(EOS)
        for t in range(length):
            size = BUCKET * math.ceil((t + 1) / BUCKET)
            token = next_token(buffer[:, :size], t)
            if t + 1 < width:
                buffer = buffer.at[:, t + 1].set(token)
        return buffer

    def warm_up():  # one call per prefix shape: compiles all of them
        for size in range(BUCKET, length + BUCKET, BUCKET):
            jax.block_until_ready(next_token(jnp.full((rows, size), PAD, jnp.int32), 0))

    return run, warm_up


def measure_uncached(model, params, bag, rows: int, length: int) -> dict:
    run, warm_up = uncached_loop(model, params, bag, rows, length)
    start = time.perf_counter()
    warm_up()
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(run())
    seconds = time.perf_counter() - start
    return {"rows": rows, "seconds": round(seconds, 3),
            "tokens_per_second": round(rows * length / seconds, 1),
            "compile_seconds": round(compile_seconds, 2)}


def bench_config(name: str, length: int, run_all: bool, chosen: dict[str, int],
                 uncached_rows=UNCACHED_ROWS) -> dict:
    config = get_config(name)
    model, params = E2EModel(config), never_eos(init_params(config, seed=0))
    bag = one_bag(config)
    uncached = {rows: measure_uncached(model, params, bag, rows, length)
                for rows in uncached_rows}
    result = {"uncached": {str(r): u for r, u in uncached.items()}}
    for strategy, candidates in chosen.items():
        if (name, strategy) in SKIPPED and not run_all:
            result[strategy] = {"skipped": SKIPPED[(name, strategy)]}
            continue
        repeats = 1 if candidates * config.decoder_dim >= 128 * 512 else 3
        cached = measure_cached(model, params, bag, strategy, candidates, length, repeats)
        if candidates in uncached:
            cached["speedup_vs_uncached"] = round(
                cached["tokens_per_second"] / uncached[candidates]["tokens_per_second"], 2)
        result[strategy] = cached
        print(f"[{name}] {strategy}: {cached}", flush=True, file=_log)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object (default)")
    parser.add_argument("--configs", default="small,paper")
    parser.add_argument("--length", type=int, default=60)
    parser.add_argument("--all", action="store_true", help="also run the skipped settings")
    parser.add_argument("--samples", type=int, nargs="+", default=None,
                        help=f"samples per bag, one sampling run each (default: "
                             f"{' '.join(map(str, SAMPLES))}; sizes named here always run)")
    parser.add_argument("--no-beam", action="store_true", help="leave out beam search")
    parser.add_argument("--no-uncached", action="store_true",
                        help="leave out the uncached baseline (and speedup_vs_uncached)")
    args = parser.parse_args()
    chosen = strategies(args.samples or SAMPLES, beam=not args.no_beam)
    run_all = args.all or args.samples is not None
    uncached_rows = () if args.no_uncached else UNCACHED_ROWS
    results = {
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        **machine(),
        "length": args.length,
        "points": N_POINTS,
        "bags": 1,
    }
    for name in args.configs.split(","):
        results[name] = bench_config(name, args.length, run_all, chosen, uncached_rows)
    results["speedup_vs_uncached"] = {
        name: {s: results[name][s]["speedup_vs_uncached"] for s in chosen
               if "speedup_vs_uncached" in results[name].get(s, {})}
        for name in args.configs.split(",")}
    print(json.dumps(results))


_log = open(os.devnull, "w") if os.environ.get("QUIET") else __import__("sys").stderr

if __name__ == "__main__":
    main()
