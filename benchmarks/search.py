"""Benchmark: generations of the evolutionary search (jaxsr.search) per second.

One problem with N = 200 points and 3 variables (y = x0 x1 / (1 + x2^2) + sin(x0), which
no short formula fits exactly, so the search never stops early). For populations of 1,024,
4,096 and 16,384 formulas, the search's own generation (tournaments, variation on the array
form, one batched scoring call with least squares over each formula's terms, dedupe and
NSGA-II survival, the Pareto archive) is timed after warm-up generations, as ``evolve``
runs it (scoring overlapped with the next generation's host work, inside
``cores.separate_cores``), without L-BFGS refinement and without model proposals, which
the loop runs every few generations at a cost of its own (reported separately at 4,096
with the regressor's refinement settings).

The baseline, in the same process: the same generation with the batched scoring call
replaced by a plain numpy loop (each child's terms turned into trees, evaluated with
``Expr.evaluate``, and the least squares solved in numpy), at 4,096.

    python benchmarks/search.py --json

prints one JSON object: ``evaluations_per_second`` (a dict keyed "1024", "4096", "16384":
the median over ``--repeats`` consecutive blocks of ``--generations`` generations, each
block's rate in ``evaluations_per_second_blocks``; a shared machine's speed wanders by
20-30%, and one slow stretch should not make the figure),
``host_fraction`` (share of a generation in which the Python thread works rather than
waits for compiled calls, per size: near 1, the host's numpy work sets the pace),
``evaluations_per_second_with_refinement`` at 4,096, ``numpy_loop_evaluations_per_second``
and ``speedup_vs_numpy_loop`` at 4,096 (``--baseline-size`` changes that size; 0 leaves out
the refinement run and the numpy loop, for a short accelerator session that only wants the
batched rate).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import machine  # noqa: E402  (benchmarks/timing.py)

from jaxsr.search import cores, engine, fitness
from jaxsr.search.engine import SearchSettings
from jaxsr.search.population import Terms

N_POINTS = 200
SIZES = (1024, 4096, 16384)
BASELINE_SIZE = 4096


def problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(0.5, 2.0, size=(N_POINTS, 3))
    return X, X[:, 0] * X[:, 1] / (1 + X[:, 2] ** 2) + np.sin(X[:, 0])


def make_search(size: int, refine: bool) -> tuple[engine._Search, engine._Population]:
    X, y = problem()
    # With refinement: the regressor's settings (SearchSettings' defaults: L-BFGS on the
    # best refine_top of each problem every generation).
    refine_top = SearchSettings.refine_top if refine else 0
    settings = SearchSettings(population_size=size, generations=10**9, target_r2=2.0,
                              refine_top=refine_top, proposal_every=0, seed=0)
    data = fitness.Data.stack([(X, y, None)])
    search = engine._Search(settings, data, np.array([3]), np.random.default_rng(0),
                            engine._Clock(settings), None)
    return search, search.initial([[]], [(X, y, None)])


def time_generations(search, population, generations: int, warm_up: int, repeats: int = 1):
    """Runs warm-up generations, then times ``repeats`` consecutive blocks of
    ``generations``; returns (seconds per generation of each block, share of the
    generations outside compiled calls over all blocks, population)."""
    archive = search.update_archive(None, population)
    for g in range(warm_up):
        population = search.generation(population, g)
    device_before = search.clock.device
    blocks, done = [], warm_up
    for _ in range(repeats):
        start = time.perf_counter()
        for g in range(generations):
            population = search.generation(population, done + g)
            archive = search.update_archive(archive, population)
        done += generations
        blocks.append((time.perf_counter() - start) / generations)
    device = (search.clock.device - device_before) / (generations * repeats)
    return blocks, 1.0 - device / np.mean(blocks), population


def numpy_loop_generation(search, population, data: fitness.Data) -> float:
    """One generation with scoring done candidate by candidate in numpy (the same term
    split and least squares as the batched call); returns seconds."""
    start = time.perf_counter()
    children, structure, _ = search.offspring_genomes(population)
    terms = Terms.of(children, structure, fitness.MAX_TERMS)
    X, y = data.X[0, :N_POINTS, :3], data.y[0, :N_POINTS]
    nmse = np.empty(children.size)
    for i in range(children.size):
        with np.errstate(all="ignore"):
            values = [t.evaluate(X) for t in terms.exprs(children, i)]
        nmse[i] = _term_scaled_nmse(values, y)
    return time.perf_counter() - start


def _term_scaled_nmse(values: list[np.ndarray], y: np.ndarray) -> float:
    if not all(np.all(np.isfinite(v)) for v in values):
        return np.inf
    Z = np.column_stack([np.ones(len(y))] + [np.broadcast_to(v, y.shape) for v in values])
    coef = np.linalg.lstsq(Z, y, rcond=None)[0]
    residual = y - Z @ coef
    return float(np.mean(residual * residual) / np.var(y))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--generations", type=int, default=20, help="timed generations")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed blocks of --generations per size; the median is reported")
    parser.add_argument("--warm-up", type=int, default=5,
                        help="untimed generations first (compilation, archive filling)")
    parser.add_argument("--baseline-size", type=int, default=BASELINE_SIZE,
                        help="population of the refinement run and the numpy loop; 0 skips both")
    args = parser.parse_args(argv)

    rates, blocks, host = {}, {}, {}
    for size in args.sizes:
        with cores.separate_cores():  # as ``evolve`` does by default, compilation included
            search, population = make_search(size, refine=False)
            seconds, host_share, population = time_generations(
                search, population, args.generations, args.warm_up, args.repeats)
        blocks[str(size)] = [size / s for s in seconds]
        rates[str(size)], host[str(size)] = float(np.median(blocks[str(size)])), host_share
    result = {
        "benchmark": "search",
        "n_points": N_POINTS,
        "evaluations_per_second": rates,
        "evaluations_per_second_blocks": blocks,
        "host_fraction": host,
    }
    base = args.baseline_size
    if base > 0:
        with cores.separate_cores():
            search, population = make_search(base, refine=True)
            refined, _, _ = time_generations(search, population, args.generations,
                                             args.warm_up, args.repeats)
            refined_seconds = float(np.median(refined))
        search, population = make_search(base, refine=False)
        loop_seconds = numpy_loop_generation(search, population, search.data)
        batched = rates.get(str(base))
        result.update({
            "evaluations_per_second_with_refinement": {str(base): base / refined_seconds},
            "numpy_loop_evaluations_per_second": base / loop_seconds,
            "speedup_vs_numpy_loop": batched * loop_seconds / base if batched else None,
        })
    result.update(**machine(), backend=jax.default_backend(), jax=jax.__version__)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
