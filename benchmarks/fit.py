"""Benchmark: seconds per problem, stage by stage, of the regressor's pipeline.

Workload (the one the regressor's target of 5 s per problem is set on): one problem of 200
points (a seeded subset of the Strogatz system ``lv1``, two features), one bag of 200 points,
the ``paper`` config with random weights, sampling at the weights' default temperature,
refinement of every unique candidate (at most 50 L-BFGS iterations, float64), for
n_candidates = 10 and 1000.

- tokenise, decode, parse: the regressor's own stages on the random model. Random weights
  almost never emit ``<EOS>``, so every sequence runs to ``max_len`` (200 for n = 10; for
  n = 1000 on a CPU that would be 200,000 paper-model tokens, so ``--long-max-len`` (20)
  applies there and the JSON says so), and almost nothing parses. ``10_len60`` repeats
  n = 10 at max_len 60, the length a trained model's formulas average, as a proxy for the
  decoding cost with trained weights.
- score, refine, select: run on n synthetic candidates instead (random trees with the
  reference generator's operator mix, 3-11 operators, float constants, over the two
  features), standing in for what a trained model would emit; the JSON counts how many
  parsed from the random model and how many synthetic candidates reached refinement.

Each setting runs twice: ``first_seconds`` (compilation included) and ``seconds`` (the
second run). ``total_seconds`` sums the stages of the second run; ``fit_seconds`` is a whole
``SymbolicTransformerRegressor.fit`` (second call), where the random model falls back to
the linear fit, so it has no refinement. The 1-minute load average at the start and the end
is recorded: on a shared machine the figures scale with it.

    python benchmarks/fit.py --json

prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from evaluate import BINARY, UNARY  # the reference generator's operator mix
from timing import machine

from jaxsr import SymbolicTransformerRegressor, datasets
from jaxsr.expr.random_trees import random_expr
from jaxsr.regressor import inputs, models, pipeline

STAGES = ("tokenise", "decode", "parse", "score", "refine", "select")


def problem(seed: int = 0) -> inputs.FitProblem:
    lv1 = datasets.strogatz("lv1")
    rows = np.random.default_rng(seed).choice(len(lv1.y), 200, replace=False)
    return inputs.prepare(lv1.X[rows], lv1.y[rows], np.ones(200), list(lv1.feature_names),
                          max_features=10, seed=seed)


def synthetic_candidates(n: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [random_expr(rng, n_variables=2, n_operators=int(rng.integers(3, 12)),
                        unary=UNARY, binary=BINARY, leaf_probs=(0.6, 0.4, 0.0))
            for _ in range(n)]


def run_stages(loaded, settings, exprs) -> tuple[dict, dict]:
    """One pass over every stage (stage -> seconds) and its counts."""
    problems = [problem()]
    clock = pipeline.Clock(None, verbose=0)
    bags, tokens, lengths = pipeline.tokenise_and_decode(problems, loaded, settings, clock)
    with clock.stage("parse"):
        parsed, counts, dropped = pipeline.parse(tokens, lengths, bags, problems)
    counts = pipeline.sampled_counts(bags, len(tokens), counts, len(problems))
    pool = pipeline.Pool(list(exprs), np.zeros(len(exprs), int))
    with clock.stage("score"):
        pool = pipeline.dedupe(pipeline.score(pool, problems)[0])
    with clock.stage("refine"):
        pool = pipeline.refine(pool, problems, settings, clock)
    with clock.stage("select"):
        outcome = pipeline.select(pool, problems, counts, dropped)[0]
    timings = clock.close()
    return {s: timings[s] for s in STAGES}, {
        "sampled": int(lengths.size), "parsed_from_random_weights": len(parsed.exprs),
        "mean_tokens": float(lengths.mean()), "synthetic_candidates": len(exprs),
        "refined": int(pool.refined.sum()), "best_r2": float(outcome.r2[0])}


def bench(loaded, n_candidates: int, max_len: int) -> dict:
    settings = pipeline.PipelineSettings(
        max_input_points=200, max_number_bags=1, n_candidates=n_candidates,
        decoding="sampling", temperature=float(loaded.decoding["beam_temperature"]),
        max_len=max_len, refine=True, max_iter=50, max_time=None, seed=0)
    exprs = synthetic_candidates(n_candidates)
    first, _ = run_stages(loaded, settings, exprs)
    steady, counts = run_stages(loaded, settings, exprs)
    return {"n_candidates": n_candidates, "max_len": max_len,
            "seconds": steady, "total_seconds": round(sum(steady.values()), 3),
            "first_seconds": first, "first_total_seconds": round(sum(first.values()), 3),
            **counts}


def fit_seconds(config: str, n_candidates: int) -> float:
    """A whole fit (second call) with the random model: decode, then the fallback."""
    p = problem()
    est = SymbolicTransformerRegressor(config, n_candidates=n_candidates, max_number_bags=1,
                                       random_state=0)
    est.fit(p.X, p.y)
    start = time.perf_counter()
    est.fit(p.X, p.y)
    return round(time.perf_counter() - start, 3)


def settings(args) -> list[tuple[str, int, int, str | None]]:
    """(key, n_candidates, max_len, note) of every setting measured."""
    out = []
    for n in args.candidates:
        if n <= 100:
            out.append((str(n), n, args.max_len, None))
        else:
            out.append((str(n), n, args.long_max_len,
                        (f"decoded to max_len {args.long_max_len}, not {args.max_len}: "
                         f"random weights never stop, and {n} x {args.max_len} tokens of the "
                         f"{args.config} model take many minutes on a CPU")))
    if 10 in args.candidates and args.proxy_len:
        out.append((f"10_len{args.proxy_len}", 10, args.proxy_len,
                    (f"max_len {args.proxy_len}: the length a trained model's formulas "
                     "average (docs/reference.md 5.5), so decoding costs what it would with "
                     "trained weights; compare with the reference's ~24 s for this work")))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object (default)")
    parser.add_argument("--config", default="paper")
    parser.add_argument("--candidates", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--max-len", type=int, default=200)
    parser.add_argument("--long-max-len", type=int, default=20,
                        help="max_len for n_candidates > 100 (random weights decode to it)")
    parser.add_argument("--proxy-len", type=int, default=60,
                        help="also run n_candidates 10 at this max_len (0: skip)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    loaded = models.resolve(args.config)
    out = {"config": args.config, "label": loaded.label, "points": 200, "bags": 1,
           "load_average_at_start": round(os.getloadavg()[0], 2),
           "refine_solver": pipeline.REFINE_SOLVER, "refine_dtype": "float64", "max_iter": 50}
    for key, n, max_len, note in settings(args):
        entry = bench(loaded, n, max_len)
        if note:
            entry["note"] = note
        out[key] = entry
        print(f"[{key}] {entry}", file=sys.stderr, flush=True)
    out["fit_seconds_10"] = fit_seconds(args.config, 10) if 10 in args.candidates else None
    out["total_seconds"] = {key: out[key]["total_seconds"] for key, *_ in settings(args)}
    out["target_5s_met"] = (out["total_seconds"]["10"] < 5.0
                            if "10" in out["total_seconds"] else None)
    out.update(load_average_at_end=round(os.getloadavg()[0], 2),
               jax=jax.__version__, backend=jax.default_backend(),
               device=str(jax.devices()[0].device_kind), **machine())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
