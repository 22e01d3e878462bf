"""Scores of predictions: R2 (clipped or not) and the reference's Acc_tau."""

from __future__ import annotations

import numpy as np


def r2_score(y_true, y_pred, *, clip: bool = False) -> float:
    """Coefficient of determination; NaN if any prediction is not finite.

    With ``clip=True`` negative values become 0 (the paper's in-domain "R2", the reference's
    ``r2_zero``). A constant target gives 1.0 for a perfect prediction, else 0.0.
    """
    y_true = np.asarray(y_true, np.float64).ravel()
    y_pred = np.asarray(y_pred, np.float64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    if not np.all(np.isfinite(y_pred)):
        return float("nan")
    residual = np.sum((y_true - y_pred) ** 2)
    total = np.sum((y_true - y_true.mean()) ** 2)
    score = 1.0 - residual / total if total > 0 else float(residual == 0)
    return max(0.0, score) if clip else float(score)


def accuracy_tau(y_true, y_pred, tau: float, *, atol: float = 0.0, fraction: float = 0.95) -> float:
    """The reference's ``accuracy_l1_{tau}``: 1.0 if at least ``fraction`` of the points have
    ``|y_pred - y_true| <= atol + tau * |y_true|``, else 0.0; NaN for non-finite predictions."""
    y_true = np.asarray(y_true, np.float64).ravel()
    y_pred = np.asarray(y_pred, np.float64).ravel()
    if not np.all(np.isfinite(y_pred)):
        return float("nan")
    close = np.abs(y_pred - y_true) <= atol + tau * np.abs(y_true)
    return float(np.mean(close) >= fraction)
