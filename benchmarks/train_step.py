"""Benchmark: samples/s and points/s of the compiled train step, against PyTorch eager.

For each config (``tiny``, ``small``, ``paper``), on the same batch of real generator
samples (seed 0, padded to 100 points: ``tokens`` points per step, padding included, as the
reference counts its 10,000-point batches):

- jaxsr: ``jaxsr.train``'s pmapped step (forward, backward, clipping, Adam), compiled
  once, the median of ``repeats`` steps, with the trainer's default micro-batching
  (``micro_batch_rows`` in the JSON; on CPU it keeps buffers small);
- baseline, in the same run: the same architecture and weights in PyTorch eager
  (``tests/fixtures/torch_reference.py``), the reference's training step: logits only at
  target positions (its ``pred_mask``), mean cross-entropy, backward,
  ``clip_grad_norm_(0.5)``, ``torch.optim.Adam``. Both start from the same weights and
  their first losses are reported side by side as a check that they compute the same thing.

``speedup_vs_torch`` is the ratio of the two step times. On a GPU or TPU, the ``paper``
entry also gives the model-FLOPs utilisation (MFU): the FLOPs of the compiled step from
XLA's cost analysis, per second, over the device's peak (``--peak-tflops`` or a known
table); on a CPU only when ``--peak-tflops`` is given, and where no MFU can be computed,
``mfu_error`` says why. ``paper`` runs a smaller batch on CPU (``--paper-cpu-tokens``); the
JSON says so. ``--no-baseline`` skips the PyTorch step (which runs on CPU only).

    python benchmarks/train_step.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
from timing import first_and_median, machine  # noqa: E402  (benchmarks/timing.py)

from jaxsr import parallel  # noqa: E402
from jaxsr.data import Generator, GeneratorConfig  # noqa: E402
from jaxsr.data.batching import build_batch, default_token_buckets  # noqa: E402
from jaxsr.model import E2EModel, abstract_params, count_params, get_config  # noqa: E402
from jaxsr.train.step import (  # noqa: E402
    StepBatch, init_state, make_optimizer, make_train_step, micro_batch_rows, pmap_step,
)

N_POINTS = 100
LR = 1e-4
CLIP = 0.5
# Dense bf16 peak TFLOP/s per device (vendor figures), for MFU when --peak-tflops is not given.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "V100": 125.0,
                    "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5p": 459.0, "TPU v6": 918.0}


# ----------------------------------------------------------------------------- batch


def real_batch(tokens: int, n_points: int = N_POINTS) -> StepBatch:
    """``tokens // n_points`` generator samples with at most ``n_points`` points, padded."""
    generator = Generator(GeneratorConfig(seed=0))
    indices = np.arange(20_000)
    headers = generator.headers(indices)
    chosen = indices[headers.n_points <= n_points][: tokens // n_points]
    arrays = build_batch(generator, chosen, n_points, None,
                         default_token_buckets(generator.config))
    return StepBatch(arrays["points"], arrays["n_points"], arrays["tokens"], arrays["n_tokens"])


def describe(batch: StepBatch) -> dict:
    return {"samples": int(batch.points.shape[0]), "padded_points": int(batch.points.shape[1]),
            "padded_target_tokens": int(batch.tokens.shape[1]),
            "points": int(batch.n_points.sum()),
            "target_tokens": int((batch.n_tokens - 1).sum())}


# ----------------------------------------------------------------------------- jaxsr


def jax_step(config, params_seed: int, batch: StepBatch, repeats: int) -> dict:
    model = E2EModel(config)
    optimizer = make_optimizer(CLIP)
    state = parallel.replicate(init_state(config, optimizer, params_seed))
    step = pmap_step(make_train_step(model, optimizer))
    sharded = parallel.shard(batch)
    lr = np.float32(LR)
    holder = {"state": state}

    def run():
        holder["state"], metrics = step(holder["state"], sharded, lr)
        return metrics

    start = time.perf_counter()
    first_loss = float(parallel.to_host(run())["loss"])
    compile_seconds = time.perf_counter() - start
    _, seconds = first_and_median(run, repeats)
    rows, targets = batch.tokens.shape[0] // parallel.device_count(), batch.tokens.shape[1] - 1
    return {"seconds_per_step": seconds, "first_loss": first_loss,
            "compile_seconds": round(compile_seconds, 2),
            "micro_batch_rows": micro_batch_rows(None, rows, targets, config.decoder_vocab_size),
            "flops_per_step": _xla_flops(model, holder["state"], sharded)}


def _xla_flops(model, state, sharded) -> float | None:
    """FLOPs of one step by XLA's cost analysis of the lowered whole-batch step (a
    micro-batch scan would be counted once, not per micro-batch); lowering only, no
    compilation. None where the backend gives no figure."""
    step = pmap_step(make_train_step(model, make_optimizer(CLIP), micro_batch=0))
    try:
        cost = step.lower(state, sharded, np.float32(LR)).cost_analysis()
    except Exception:  # noqa: BLE001 (some backends implement no cost analysis)
        return None
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = (cost or {}).get("flops")
    return float(flops) * parallel.device_count() if flops else None


# ----------------------------------------------------------------------------- torch


def torch_step(config, params_seed: int, batch: StepBatch, repeats: int) -> dict | None:
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    import torch_reference

    from jaxsr.expr.tokens import decoder_vocab, encoder_vocab
    from jaxsr.model import init_params
    from jaxsr.weights import to_reference_state_dict

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    flags = argparse.Namespace(
        emb_emb_dim=config.embedder_dim, enc_emb_dim=config.encoder_dim,
        dec_emb_dim=config.decoder_dim, n_enc_layers=config.encoder_layers,
        n_dec_layers=config.decoder_layers, n_enc_heads=config.encoder_heads,
        n_dec_heads=config.decoder_heads, n_emb_layers=config.embedder_hidden_layers,
        emb_expansion_factor=config.embedder_expansion, max_input_dimension=10,
        max_output_dimension=1, mantissa_len=1, float_precision=3, max_len=200)
    wrapper = torch_reference.build_wrapper(flags, encoder_vocab(), decoder_vocab()).train()
    state = to_reference_state_dict(init_params(config, params_seed))
    wrapper.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    parameters = [p for p in wrapper.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=LR, betas=(0.9, 0.999), eps=1e-8)
    ids, n_points = torch.as_tensor(batch.points).long(), torch.as_tensor(batch.n_points).long()
    tokens, n_tokens = torch.as_tensor(batch.tokens).long(), torch.as_tensor(batch.n_tokens).long()
    positions = torch.arange(tokens.shape[1] - 1)[None, :]
    pred_mask = positions < (n_tokens - 1)[:, None]
    targets = tokens[:, 1:][pred_mask]

    def step() -> float:
        # The reference's trainer: scores only where pred_mask holds, mean cross-entropy.
        encoded = wrapper.encoder(wrapper.embedder(ids), n_points, causal=False)
        hidden = wrapper.decoder(tokens, n_tokens, causal=True, src_enc=encoded,
                                 src_len=n_points)
        scores = wrapper.decoder.proj(hidden[:, :-1][pred_mask])
        loss = F.cross_entropy(scores.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, CLIP)
        optimizer.step()
        return float(loss.detach())

    first_loss = step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"seconds_per_step": statistics.median(times), "first_loss": first_loss,
            "threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------- report


def measure(name: str, tokens: int, repeats: int, dtype: str, peak_tflops,
            baseline: bool = True) -> dict:
    config = get_config(name, dtype=dtype)
    batch = real_batch(tokens)
    facts = describe(batch)
    ours = jax_step(config, 0, batch, repeats)
    out = {"parameters": count_params(abstract_params(config)),
           "tokens_per_step": tokens, "batch": facts, "dtype": dtype,
           "jax": _rates(ours, facts)}
    on_cpu = jax.default_backend() == "cpu"
    torch_result = torch_step(config, 0, batch, repeats) if baseline and on_cpu else None
    if torch_result is not None:
        out["torch_eager"] = _rates(torch_result, facts)
        out["speedup_vs_torch"] = round(
            torch_result["seconds_per_step"] / ours["seconds_per_step"], 2)
    # A CPU has no meaningful table peak; an explicit --peak-tflops still gets a figure
    # (the smoke run of benchmarks/device_check.sh exercises the MFU path that way).
    peak = peak_tflops or (None if on_cpu else _known_peak())
    if not peak:
        out["mfu_error"] = (f"no peak TFLOP/s known for {jax.devices()[0].device_kind!r}: "
                            "pass --peak-tflops")
    elif not ours["flops_per_step"]:
        out["mfu_error"] = "XLA's cost analysis gave no FLOP count on this backend"
    else:
        achieved = ours["flops_per_step"] / ours["seconds_per_step"]
        out["mfu"] = round(achieved / (peak * 1e12 * parallel.device_count()), 4)
        out["mfu_flops_source"] = "XLA cost analysis of the compiled step"
        out["peak_tflops_per_device"] = peak
    return out


def _rates(result: dict, facts: dict) -> dict:
    seconds = result["seconds_per_step"]
    rates = {"samples_per_second": round(facts["samples"] / seconds, 1),
             "points_per_second": round(facts["points"] / seconds, 1),
             "seconds_per_step": round(seconds, 4)}
    return {**rates, **{k: v for k, v in result.items() if k != "seconds_per_step"}}


def _known_peak() -> float | None:
    kind = jax.devices()[0].device_kind
    return next((tflops for key, tflops in PEAK_BF16_TFLOPS.items() if key in kind), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object (default)")
    parser.add_argument("--configs", nargs="+", default=["tiny", "small", "paper"])
    parser.add_argument("--tokens", type=int, default=10_000,
                        help="points per step, padding included (the reference's batch)")
    parser.add_argument("--paper-cpu-tokens", type=int, default=1_000,
                        help="points per step for `paper` on CPU")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps (median)")
    parser.add_argument("--dtype", default=None,
                        help="compute dtype (default: float32 on CPU, bfloat16 elsewhere)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="peak TFLOP/s per device for MFU (default: a table of known chips)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the PyTorch eager step (and speedup_vs_torch)")
    args = parser.parse_args()
    on_cpu = jax.default_backend() == "cpu"
    dtype = args.dtype or ("float32" if on_cpu else "bfloat16")
    results = {}
    for name in args.configs:
        tokens = args.paper_cpu_tokens if name == "paper" and on_cpu else args.tokens
        results[name] = measure(name, tokens, args.repeats, dtype, args.peak_tflops,
                                baseline=not args.no_baseline)
        if name == "paper" and on_cpu:
            results[name]["note"] = (f"smaller batch on CPU: {tokens} points per step "
                                     f"instead of {args.tokens}")
    if "speedup_vs_torch" in results.get("small", {}):
        results["speedup_vs_torch"] = results["small"]["speedup_vs_torch"]
    results.update(
        n_points=N_POINTS, repeats=args.repeats, lr=LR, jax=jax.__version__,
        backend=jax.default_backend(), device=str(jax.devices()[0].device_kind),
        devices=parallel.device_count(), **machine())
    print(json.dumps(results))


if __name__ == "__main__":
    main()
