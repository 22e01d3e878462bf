"""Periodic in-domain validation: greedy decoding on a fixed, seeded set of generator
samples, scored without constant refinement (the reference's "NoRef" figures).

The set is ``size`` evaluation samples (``Generator.sample(i, evaluation=True)``: N =
max_points points, the evaluation noise) of the training generator with seed
``validation_seed``, built once per run. Each sample's decoded formula is evaluated on the
sample's own points. A row that does not parse, uses a variable the sample lacks, or
predicts a non-finite value is a failure: accuracy 0 and R2 0.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from jaxsr import decode
from jaxsr.data import Generator, GeneratorConfig
from jaxsr.expr import Expr
from jaxsr.expr.tokens import encode_point_sets
from jaxsr.metrics import accuracy_tau, r2_score
from jaxsr.model import E2EModel
from jaxsr.shapes import pad_point_sets, pad_to

ACCURACY_TAU = 0.1


@dataclasses.dataclass(frozen=True)
class ValidationSet:
    point_ids: np.ndarray  # (V, N, 33) int32 encoder ids
    point_mask: np.ndarray  # (V, N) bool
    x: tuple[np.ndarray, ...]  # (N_i, d_i) inputs of each sample
    y: tuple[np.ndarray, ...]  # (N_i,) outputs

    def __len__(self) -> int:
        return len(self.y)


def make_validation_set(config: GeneratorConfig, size: int, seed: int) -> ValidationSet:
    """``size`` evaluation samples of ``config`` with ``seed`` (extrapolation sets skipped)."""
    generator = Generator(config.replace(seed=seed, prediction_sigmas=()))
    samples = [generator.sample(i, evaluation=True) for i in range(size)]
    ids, mask = pad_point_sets(encode_point_sets([s.x for s in samples],
                                                 [s.y for s in samples]))
    return ValidationSet(ids, mask, tuple(s.x for s in samples), tuple(s.y for s in samples))


def validate(model: E2EModel, params, data: ValidationSet, *, max_len: int,
             batch: int) -> dict:
    """Greedy decoding of every point set; mean Acc_0.1, mean R2 (clipped at 0) and the
    fraction of rows that parse into a formula."""
    start = time.perf_counter()
    tokens = _greedy_tokens(model, params, data, max_len, batch)
    parsed = decode.to_expressions(tokens)
    predictions: list[Expr | None] = [None] * len(data)
    for expr, (row, _) in zip(parsed.exprs, parsed.index):
        predictions[row] = expr
    scores = [_score(expr, x, y) for expr, x, y in zip(predictions, data.x, data.y)]
    return {
        f"acc_{ACCURACY_TAU:g}": float(np.mean([s[0] for s in scores])),
        "r2": float(np.mean([s[1] for s in scores])),
        "valid": len(parsed.exprs) / len(data),
        "seconds": round(time.perf_counter() - start, 3),
    }


def _greedy_tokens(model, params, data: ValidationSet, max_len: int, batch: int) -> np.ndarray:
    """(V, 1, max_len) decoded ids, ``batch`` point sets per call: the last call is padded
    with copies of the last set, so one compiled shape serves every call."""
    out = []
    for low in range(0, len(data), batch):
        ids, mask = (pad_to(a[low:low + batch], batch) for a in (data.point_ids, data.point_mask))
        decoded = decode.greedy(model, params, ids, mask, max_len=max_len)
        out.append(jax.device_get(decoded.tokens)[: len(data) - low])
    return np.concatenate(out)


def _score(expr: Expr | None, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(accuracy, clipped R2) of one prediction; (0, 0) for any failure."""
    if expr is None:
        return 0.0, 0.0
    try:
        predicted = expr.evaluate(x)
    except ValueError:  # a variable the sample does not have
        return 0.0, 0.0
    predicted = np.broadcast_to(predicted, y.shape)
    if not np.all(np.isfinite(predicted)):
        return 0.0, 0.0
    return accuracy_tau(y, predicted, ACCURACY_TAU), r2_score(y, predicted, clip=True)
