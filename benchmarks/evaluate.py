"""Benchmark: batched program evaluation vs a Python loop over Expr.evaluate.

Evaluates B programs (a fixed mix of 15-30-token skeletons over 1-5 variables, operators
weighted as in the reference generator) on N=200 points, for B in 512, 4096, 8192, and in
the same run a Python loop calling ``Expr.evaluate`` (numpy, float64) per expression.

    python benchmarks/evaluate.py --json

prints one JSON object: ``programs_per_second`` per B, ``speedup_vs_numpy_loop`` at B=4096,
``throughput_ratio_8192_vs_512``, and compile times (host-side ``compile_programs`` and the
one-off XLA compilation) reported separately from the steady-state figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import machine  # noqa: E402  (benchmarks/timing.py)

from jaxsr.expr import compile_programs, evaluate_programs
from jaxsr.expr.random_trees import random_expr

# Reference generator weights (docs/reference.md 2.1), as repetitions for uniform draws.
UNARY = (("abs",) * 5 + ("inv",) * 15 + ("sqrt",) * 25 + ("log",) * 5 + ("exp",) * 5
         + ("sin",) * 5 + ("cos",) * 5 + ("tan", "arctan") + ("pow2",) * 15 + ("pow3",) * 5)
BINARY = ("add", "sub", "mul")
N_POINTS = 200


def skeleton_mix(n: int, seed: int = 0) -> list:
    """n expressions of 15-30 prefix tokens over 1-5 variables (deterministic)."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        expr = random_expr(rng, n_variables=int(rng.integers(1, 6)),
                           n_operators=int(rng.integers(3, 12)), unary=UNARY, binary=BINARY,
                           leaf_probs=(0.6, 0.4, 0.0))
        if 15 <= len(expr.prefix()) <= 30:
            out.append(expr)
    return out


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(sizes: list[int], repeats: int, baseline_size: int) -> dict:
    pool = skeleton_mix(max(sizes + [baseline_size]))
    X = np.random.default_rng(1).standard_normal((N_POINTS, 5))
    X32 = jnp.asarray(X, jnp.float32)
    results = {"programs_per_second": {}, "host_compile_seconds": {}, "xla_compile_seconds": {},
               "chunk_rows": {}}
    for B in sizes:
        start = time.perf_counter()
        programs = compile_programs(pool[:B])
        results["host_compile_seconds"][str(B)] = round(time.perf_counter() - start, 4)
        run = lambda: evaluate_programs(programs, X32).block_until_ready()
        start = time.perf_counter()
        run()
        first = time.perf_counter() - start
        seconds = _median_seconds(run, repeats)
        results["xla_compile_seconds"][str(B)] = round(first - seconds, 3)
        results["programs_per_second"][str(B)] = round(B / seconds, 1)
        results["chunk_rows"][str(B)] = programs.chunk

    exprs = pool[:baseline_size]
    for e in exprs:  # warm the per-tree caches the loop would build on its first pass
        e.evaluate(X[:2])
    loop_seconds = _median_seconds(lambda: [e.evaluate(X) for e in exprs], max(1, repeats // 2))
    loop_rate = baseline_size / loop_seconds
    results["numpy_loop_programs_per_second"] = round(loop_rate, 1)
    key = str(baseline_size)
    if key in results["programs_per_second"]:
        results["speedup_vs_numpy_loop"] = round(results["programs_per_second"][key] / loop_rate, 2)
        results["speedup_measured_at_B"] = baseline_size
    rates = results["programs_per_second"]
    if "512" in rates and "8192" in rates:
        results["throughput_ratio_8192_vs_512"] = round(rates["8192"] / rates["512"], 3)
    results.update(n_points=N_POINTS, dtype="float32 (JAX) vs float64 (numpy loop)",
                   repeats=repeats, jax=jax.__version__, backend=jax.default_backend(),
                   device=str(jax.devices()[0].device_kind), **machine())
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object (default)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 4096, 8192])
    parser.add_argument("--baseline-size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(json.dumps(measure(args.sizes, args.repeats, args.baseline_size)))


if __name__ == "__main__":
    main()
