"""Speed of the training-data generator: samples per second on one core, batches per second
with all cores, against the reference generator.

    python benchmarks/generator.py --json
    python benchmarks/generator.py --json --reference /path/to/symbolicregression-checkout

The reference figure is docs/reference.md 2.3: about 11 ms per expression on one CPU core, i.e.
90 samples/s. With ``--reference`` the reference generator's own code (a checkout of
facebookresearch/symbolicregression) is also timed in this process, on the same machine, and
the measured ratio is reported beside the stated one.
"""

from __future__ import annotations

import os

# One core means one thread: keep BLAS from spreading the small matrix work (QR of the
# rotations) over other cores. Must be set before numpy is imported.
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from jaxsr.data import Generator, GeneratorConfig, batches  # noqa: E402
from jaxsr.machine import cpu_description  # noqa: E402

REFERENCE_SAMPLES_PER_SECOND = 90  # docs/reference.md 2.3: ~11 ms per expression, one core


def time_samples(seconds: float, seed: int = 0) -> dict:
    """Training samples drawn one after the other in this process (one core)."""
    gen = Generator(GeneratorConfig(seed=seed))
    for i in range(50):  # warm caches (vocabulary tables, numpy dispatch)
        gen.sample(10**9 + i)
    count, start = 0, time.perf_counter()
    cpu_start = time.process_time()
    while time.perf_counter() - start < seconds:
        for _ in range(100):
            gen.sample(count)
            count += 1
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    return {"samples": count, "seconds": wall, "samples_per_second": count / wall,
            "samples_per_cpu_second": count / cpu}


def time_batches(seconds: float, workers: int, tokens_per_batch: int) -> dict:
    """Batches of ``tokens_per_batch`` points from ``workers`` processes, after warm-up."""
    with batches(GeneratorConfig(seed=1), tokens_per_batch=tokens_per_batch, workers=workers,
                 process_index=0, process_count=1) as stream:
        t0 = time.perf_counter()
        next(stream)  # spawning the workers and filling the pipeline
        warmup = time.perf_counter() - t0
        count = samples = points = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            batch = next(stream)
            count += 1
            samples += len(batch.indices)
            points += int(batch.n_points.sum())
        wall = time.perf_counter() - start
    return {"workers": workers, "tokens_per_batch": tokens_per_batch, "batches": count,
            "seconds": wall, "warmup_seconds": warmup, "batches_per_second": count / wall,
            "samples_per_second": samples / wall, "points_per_second": points / wall}


def time_reference(path: str, seconds: float) -> dict:
    """The reference generator's own code, driven like its ``gen_expr(train=True)`` with its
    default parameters, under ``np.seterr(all="raise")`` as ``train.py`` sets it."""
    import argparse as _argparse
    import types

    # The reference imports numpy.compat (gone in NumPy 2) for a name it never uses.
    shim = types.ModuleType("numpy.compat.py3k")
    shim.npy_load_module = None
    compat = types.ModuleType("numpy.compat")
    compat.py3k = shim
    sys.modules.setdefault("numpy.compat", compat)
    sys.modules.setdefault("numpy.compat.py3k", shim)
    sys.path.insert(0, path)
    import importlib.util

    def load(name, file):
        spec = importlib.util.spec_from_file_location(name, os.path.join(path, file))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    # Load the two modules without the package __init__ (which imports torch).
    package = types.ModuleType("symbolicregression")
    package.__path__ = [os.path.join(path, "symbolicregression")]
    envs = types.ModuleType("symbolicregression.envs")
    envs.__path__ = [os.path.join(path, "symbolicregression", "envs")]
    sys.modules["symbolicregression"], sys.modules["symbolicregression.envs"] = package, envs
    load("symbolicregression.envs.utils", "symbolicregression/envs/utils.py")
    encoders = load("symbolicregression.envs.encoders", "symbolicregression/envs/encoders.py")
    envs.encoders = encoders
    generators = sys.modules["symbolicregression.envs.generators"]

    params = _argparse.Namespace(
        use_sympy=False, use_abs=False,
        operators_to_downsample="div_0,arcsin_0,arccos_0,tan_0.2,arctan_0.2,sqrt_5,pow2_3,inv_3",
        operators_to_not_repeat="", max_unary_depth=6, required_operators="",
        extra_unary_operators="", extra_binary_operators="", extra_constants=None,
        min_input_dimension=1, max_input_dimension=10, min_output_dimension=1,
        max_output_dimension=1, enforce_dim=True, use_controller=True, float_precision=3,
        mantissa_len=1, max_exponent=100, max_exponent_prefactor=1, max_int=10,
        min_binary_ops_per_dim=0, max_binary_ops_per_dim=1, max_binary_ops_offset=4,
        min_unary_ops=0, max_unary_ops=4, max_points=200, min_points_per_dim=5, max_centroids=10,
        prob_const=0.0, reduce_num_constants=True, prob_rand=0.0, max_trials=1)
    special = ["<EOS>", "<X>", "</X>", "<Y>", "</Y>", "</POINTS>", "<INPUT_PAD>",
               "<OUTPUT_PAD>", "<PAD>", "(", ")", "SPECIAL", "OOD_unary_op", "OOD_binary_op",
               "OOD_constant"]
    functions = generators.RandomFunctions(params, special)
    rng = np.random.RandomState([0])

    def one_sample():
        unary = rng.randint(0, 5)
        dimension = rng.randint(1, 11)
        while True:
            try:
                tree, d0, _, _, _ = functions.generate_multi_dimensional_tree(
                    rng=rng, nb_unary_ops=unary, input_dimension=dimension)
                dim = functions.relabel_variables(tree)
                if dim == 0 or d0 > dim:
                    continue
                n = rng.randint(min(5 * dim, 200), 201)
                kind = "gaussian" if rng.random() < 0.5 else "uniform"
                tree, data = functions.generate_datapoints(
                    tree=tree, rng=rng, input_dimension=dim, n_input_points=n,
                    n_prediction_points=0, prediction_sigmas=[], input_distribution_type=kind,
                    n_centroids=rng.randint(1, 10), max_trials=1)
                if data is None:
                    continue
                functions.equation_encoder.encode(tree)
                return
            except Exception:  # the reference retries on any exception too
                continue

    old = np.seterr(all="raise")
    try:
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            one_sample()
            count += 1
        wall = time.perf_counter() - start
    finally:
        np.seterr(**old)
    return {"samples": count, "seconds": wall, "samples_per_second": count / wall}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--seconds", type=float, default=5.0, help="time per measurement")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="generator processes for the batch measurement (all cores)")
    parser.add_argument("--tokens-per-batch", type=int, default=10_000)
    parser.add_argument("--reference", metavar="PATH",
                        help="a checkout of facebookresearch/symbolicregression to time too")
    args = parser.parse_args(argv)

    single = time_samples(args.seconds)
    many = time_batches(args.seconds, args.workers, args.tokens_per_batch)
    result = {
        "benchmark": "generator",
        "samples_per_second_per_core": round(single["samples_per_second"], 1),
        "reference_samples_per_second": REFERENCE_SAMPLES_PER_SECOND,
        "reference_source": "docs/reference.md 2.3: ~11 ms per expression on one CPU core",
        "speedup_vs_reference": round(single["samples_per_second"]
                                      / REFERENCE_SAMPLES_PER_SECOND, 2),
        "batches_per_second_all_cores": round(many["batches_per_second"], 2),
        "samples_per_second_all_cores": round(many["samples_per_second"], 1),
        "points_per_second_all_cores": round(many["points_per_second"]),
        "single_core": single,
        "all_cores": many,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "numpy": np.__version__, "processor": platform.processor(),
                    "cpu": cpu_description()},
    }
    if args.reference:
        measured = time_reference(args.reference, args.seconds)
        result["reference_measured"] = measured
        result["speedup_vs_reference_measured"] = round(
            single["samples_per_second"] / measured["samples_per_second"], 2)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            if not isinstance(value, dict):
                print(f"{key:32s} {value}")
    return result


if __name__ == "__main__":
    main()
