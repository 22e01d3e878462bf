"""Input points: mixtures of rotated Gaussian or uniform clusters (docs/reference.md 2.2).

One call draws a fresh mixture (means, variances, rotations, weights) and N points from it,
then standardises every dimension over the N points and scales by ``scale``. All randomness
comes from the ``rng`` passed in (the reference drew the rotations from NumPy's global state,
so its data could not be reproduced from a seed; here they are).
"""

from __future__ import annotations

import dataclasses

import numpy as np

DISTRIBUTIONS = ("gaussian", "uniform")


@dataclasses.dataclass(frozen=True)
class Mixture:
    """A drawn mixture: cluster means (C, D), per-dimension variances (C, D), rotations
    (C, D, D) and the number of points of each cluster (C,)."""

    means: np.ndarray
    variances: np.ndarray
    rotations: np.ndarray
    counts: np.ndarray


def random_rotations(rng: np.random.Generator, n: int, dimension: int) -> np.ndarray:
    """``n`` independent Haar-random rotation matrices of SO(dimension), shape (n, D, D).

    QR of a Gaussian matrix with the signs of R's diagonal moved into Q gives a Haar-random
    orthogonal matrix; flipping one column where the determinant is -1 maps it onto SO(D)
    without changing the measure (scipy's ``special_ortho_group`` draws the same law).
    One batched QR serves all clusters.
    """
    if dimension == 1:
        return np.ones((n, 1, 1))
    q, r = np.linalg.qr(rng.standard_normal((n, dimension, dimension)))
    q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    flip = np.linalg.det(q) < 0
    q[flip, :, 0] *= -1.0
    return q


def draw_mixture(rng: np.random.Generator, n_points: int, dimension: int,
                 n_centroids: int) -> Mixture:
    """Means ~ N(0, I), variances ~ U(0, 1) per dimension, Haar rotations, weights ~ U(0, 1)
    normalised, and multinomial cluster sizes."""
    means = rng.standard_normal((n_centroids, dimension))
    variances = rng.uniform(0.0, 1.0, size=(n_centroids, dimension))
    rotations = random_rotations(rng, n_centroids, dimension)
    weights = rng.uniform(0.0, 1.0, size=n_centroids)
    counts = rng.multinomial(n_points, weights / weights.sum())
    return Mixture(means, variances, rotations, counts)


def sample_mixture(rng: np.random.Generator, mixture: Mixture, distribution: str) -> np.ndarray:
    """Raw points of a mixture, grouped by cluster (as the reference stacks them), (N, D).

    A point is (mean + sqrt(variance) * z) @ rotation with z ~ N(0, 1) for "gaussian" and
    z ~ U(-1, 1) for "uniform"; the mean is rotated along with the spread, as in the reference.
    Written as z @ (sqrt(variance)[:, None] * rotation) + mean @ rotation: one small matmul
    per cluster on a contiguous block of rows.
    """
    n, dimension = int(mixture.counts.sum()), mixture.means.shape[1]
    if distribution == "gaussian":
        z = rng.standard_normal((n, dimension))
    elif distribution == "uniform":
        z = rng.uniform(-1.0, 1.0, size=(n, dimension))
    else:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    scaled = np.sqrt(mixture.variances)[:, :, None] * mixture.rotations
    shifts = np.matmul(mixture.means[:, None, :], mixture.rotations)[:, 0, :]
    out = np.empty_like(z)
    end = 0
    for cluster, count in enumerate(mixture.counts.tolist()):
        if count:
            start, end = end, end + count
            np.matmul(z[start:end], scaled[cluster], out=out[start:end])
            out[start:end] += shifts[cluster]
    return out


def standardise(x: np.ndarray, scale: float = 1.0) -> np.ndarray | None:
    """Zero mean and unit (population) std per dimension, times ``scale``; None if a
    dimension is constant (the reference's division by zero raised and the sample was
    redrawn)."""
    centred = x - x.sum(axis=0) * (1.0 / len(x))
    std = np.sqrt(np.einsum("ij,ij->j", centred, centred) * (1.0 / len(x)))
    if not np.all(std > 0):
        return None
    centred *= scale / std
    return centred
