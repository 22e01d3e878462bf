"""The training-data generator: ``Generator(config).sample(index)``.

A sample depends only on (config, index). Its dimension d, unary budget u and point count N
come from a counter-based hash of (seed, index), so the batcher can plan batches from them
without generating anything (``Generator.headers``); every other draw comes from
``np.random.default_rng([seed, index])`` (``[seed, index, 1]`` for evaluation samples). No
global random state is read or written.

The retry loop follows the reference's ``gen_expr``: d and u are fixed for the sample, and each
attempt redraws the binary-operator count, the tree and the points until nothing is rejected.
Every rejection is counted in the sample's info, by reason:

* ``bad_dimension``: the tree has fewer than d leaves, so it cannot use all d variables;
* ``generation_error``: some point is undefined (NaN), overflows, underflows (as the
  reference, which evaluated under ``np.seterr(all="raise")``), or has |y| >= max_abs_y;
* ``repeated_operator`` / ``missing_operator``: the optional operator filters.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import numpy as np

from jaxsr.data import points, trees
from jaxsr.data.config import GeneratorConfig
from jaxsr.expr import operators, tokens
from jaxsr.expr.tree import Expr

TRAIN_STREAM, EVAL_STREAM = 0, 1
# Since SeedSequence pads entropy with zeros, default_rng([seed, index]) is the same
# generator as default_rng([seed, index, TRAIN_STREAM]); evaluation uses a third word of 1.


@dataclasses.dataclass(frozen=True)
class SampleInfo:
    """What was drawn for a sample, and how many attempts were rejected before it.

    ``n_unary_ops`` and ``n_binary_ops`` count the operators of the final tree, as the
    reference's info does (so ``n_binary_ops`` includes the add/mul that place constants);
    ``n_skeleton_binary_ops`` is the b of the skeleton.
    """

    dimension: int
    unary_budget: int
    n_unary_ops: int
    n_binary_ops: int
    n_skeleton_binary_ops: int
    n_points: int
    distribution: str
    n_centroids: int
    noise_gamma: float
    rejected_bad_dimension: int
    rejected_generation_error: int
    rejected_repeated_operator: int
    rejected_missing_operator: int


@dataclasses.dataclass(frozen=True, eq=False)
class Sample:
    """One expression and its points.

    Attributes:
      index: the sample index; (config, index) determines everything else.
      tree: the expression (an ``Expr``, built on first access: training only needs tokens).
      tokens: decoder-vocabulary ids of its prefix form (no ``<EOS>``), int32.
      x: inputs (N, d), float64. y: outputs (N,), float64 (noise included, if any).
      info: dimension, operator counts, point-cloud facts, rejection counts.
      prediction: evaluation samples only: {sigma: (x, y)} extrapolation sets.
    """

    index: int
    tokens: np.ndarray
    x: np.ndarray
    y: np.ndarray
    info: SampleInfo
    prediction: dict
    _root: trees.Node = dataclasses.field(repr=False)

    @functools.cached_property
    def tree(self) -> Expr:
        return trees.to_expr(self._root)

    @property
    def prefix(self) -> list[str]:
        """The target as words, e.g. ``['add', '+', 'N1500', 'E-3', ...]``."""
        return tokens.Vocab.decoder().decode(self.tokens)

    def __repr__(self) -> str:
        return (f"Sample(index={self.index}, tree={self.tree.infix(precision=4)!r}, "
                f"x={self.x.shape}, tokens={len(self.tokens)})")


class Headers(NamedTuple):
    """Per-index draws known before generation: dimension, unary budget and an upper bound
    on the number of points (exact unless enforce_dim=False leaves variables unused)."""

    dimension: np.ndarray
    unary_budget: np.ndarray
    n_points: np.ndarray


class Generator:
    """Draws samples with the reference's distribution (docs/reference.md section 2).

    >>> gen = Generator(GeneratorConfig(seed=0))
    >>> sample = gen.sample(0)
    >>> sample.tree, sample.x.shape, sample.prefix[:4]
    """

    def __init__(self, config: GeneratorConfig | None = None):
        self.config = GeneratorConfig() if config is None else config
        if not isinstance(self.config, GeneratorConfig):
            raise TypeError(f"config must be a GeneratorConfig, got {type(config).__name__}")
        self._unary = trees.OperatorSampler(self.config.unary_operators)
        self._binary = trees.OperatorSampler(self.config.binary_operators)
        self._errstate = dict(over="raise", divide="ignore", invalid="ignore",
                              under="ignore" if self.config.allow_underflow else "raise")
        self._functions = _numpy_functions(self.config)

    def __repr__(self) -> str:
        return f"Generator(seed={self.config.seed})"

    # ------------------------------------------------------------------ headers
    def headers(self, indices, *, evaluation: bool = False) -> Headers:
        """Dimension, unary budget and point count of many samples at once (vectorised)."""
        cfg = self.config
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and indices.min() < 0:
            raise ValueError("sample indices must be >= 0")
        u = _hash_uniforms(cfg.seed, indices, EVAL_STREAM if evaluation else TRAIN_STREAM, 3)
        dimension = _uniform_int(u[:, 0], cfg.min_input_dimension, cfg.max_input_dimension)
        budget = _uniform_int(u[:, 1], cfg.min_unary_ops, cfg.max_unary_ops)
        if evaluation:
            n_points = np.full(indices.shape, cfg.max_points, dtype=np.int64)
        else:
            n_points = _n_points(cfg, dimension, u[:, 2])
        return Headers(dimension, budget, n_points)

    # ------------------------------------------------------------------ samples
    def sample(self, index: int, *, evaluation: bool = False) -> Sample:
        """The sample at ``index``: a training sample, or with ``evaluation=True`` an
        evaluation sample (N = max_points fit points, extrapolation sets for every sigma in
        ``prediction_sigmas``, the evaluation noise). Same index, same sample, anywhere."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
            raise ValueError(f"index must be an int >= 0, got {index!r}")
        index = int(index)
        cfg = self.config
        stream = EVAL_STREAM if evaluation else TRAIN_STREAM
        hashed = _hash_uniforms_one(cfg.seed, index, stream, 3)
        dimension = _uniform_int_one(hashed[0], cfg.min_input_dimension,
                                     cfg.max_input_dimension)
        budget = _uniform_int_one(hashed[1], cfg.min_unary_ops, cfg.max_unary_ops)
        rng = np.random.default_rng([cfg.seed, index, stream])
        constants = trees.ConstantSampler(rng, cfg)
        rejected = dict(bad_dimension=0, generation_error=0, repeated_operator=0,
                        missing_operator=0)
        for _ in range(cfg.max_attempts):
            drawn = self._draw_tree(rng, constants, dimension, budget, rejected)
            if drawn is None:
                continue
            root, n_binary, used_dimension = drawn
            if evaluation:
                n_points = cfg.max_points
            else:
                low = cfg.min_points(used_dimension)
                n_points = _uniform_int_one(hashed[2], low, cfg.max_points)
            data = self._draw_data(rng, root, n_points, used_dimension, evaluation)
            if data is None:
                rejected["generation_error"] += 1
                continue
            x, y, prediction, facts = data
            ids, n_unary, n_binary_total = trees.token_ids(root)
            info = SampleInfo(
                dimension=used_dimension, unary_budget=budget, n_unary_ops=n_unary,
                n_binary_ops=n_binary_total, n_skeleton_binary_ops=n_binary,
                n_points=len(y), **facts,
                **{f"rejected_{k}": v for k, v in rejected.items()})
            return Sample(index, ids, x, y, info, prediction, root)
        raise RuntimeError(
            f"no valid sample after max_attempts={cfg.max_attempts} attempts "
            f"(index {index}, dimension {dimension}); rejections: {rejected}")

    def _draw_tree(self, rng, constants, dimension: int, budget: int, rejected: dict):
        """One attempt at a tree: (root, skeleton binary count, dimension used) or None."""
        cfg = self.config
        low, high = cfg.binary_ops_range(dimension)
        n_binary = int(rng.integers(low, high + 1))
        if cfg.enforce_dim and n_binary + 1 < dimension:
            # Fewer leaves than variables: the reference builds the tree, finds a variable
            # missing after relabelling and rejects it. Same outcome, without the work.
            rejected["bad_dimension"] += 1
            return None
        root, leaves = trees.random_skeleton(rng, n_binary, self._binary)
        used = trees.assign_leaves(rng, leaves, dimension, cfg)
        trees.insert_unaries(rng, root, budget, self._unary, cfg.max_unary_depth)
        root = trees.place_constants(root, constants, cfg)
        if cfg.required_operators or cfg.operators_to_not_repeat:
            # On the final tree, as the reference checks (constant-placing add/mul count).
            names = trees.operator_tokens(root)
            if any(op not in names for op in cfg.required_operators):
                rejected["missing_operator"] += 1
                return None
            if any(names.count(op) > 1 for op in cfg.operators_to_not_repeat):
                rejected["repeated_operator"] += 1
                return None
        return root, n_binary, used

    def _draw_data(self, rng, root: trees.Node, n_points: int, dimension: int, evaluation: bool):
        """Fit points (and extrapolation sets), with noise; None if any set is invalid."""
        cfg = self.config
        distribution = "gaussian" if rng.random() < 0.5 else "uniform"
        n_centroids = int(rng.integers(1, cfg.max_centroids))
        fit = self._draw_points(rng, root, n_points, dimension, distribution, n_centroids, 1.0)
        if fit is None:
            return None
        prediction = {}
        if evaluation and cfg.n_prediction_points > 0:
            for sigma in cfg.prediction_sigmas:
                extra = self._draw_points(rng, root, cfg.n_prediction_points, dimension,
                                          distribution, n_centroids, sigma)
                if extra is None:
                    return None
                prediction[sigma] = extra
        x, y = fit
        y, gamma = self._add_noise(rng, y, prediction, evaluation)
        if not _valid_outputs(y, cfg.max_abs_y).all():
            return None
        facts = dict(distribution=distribution, n_centroids=n_centroids, noise_gamma=gamma)
        return x, y, prediction, facts

    def _draw_points(self, rng, root: trees.Node, n_points: int, dimension: int, distribution: str,
                     n_centroids: int, scale: float):
        """n_points valid (x, y) from one mixture, in at most max_trials rounds, or None."""
        cfg = self.config
        mixture = points.draw_mixture(rng, n_points, dimension, n_centroids)
        xs, ys, missing = [], [], n_points
        for _ in range(cfg.max_trials):
            x = points.standardise(points.sample_mixture(rng, mixture, distribution), scale)
            y = None if x is None else self.evaluate(root, x)
            if y is None:
                continue
            valid = _valid_outputs(y, cfg.max_abs_y)
            if cfg.max_trials == 1:
                return (x, y) if valid.all() else None
            xs.append(x[valid])
            ys.append(y[valid])
            missing -= int(valid.sum())
            if missing <= 0:
                return np.concatenate(xs)[:n_points], np.concatenate(ys)[:n_points]
        return None

    def evaluate(self, tree: trees.Node | Expr, x: np.ndarray) -> np.ndarray | None:
        """y on the rows of x with the generator's numerics, or None when the evaluation
        overflows (or underflows, unless allow_underflow), which rejects the whole set as the
        reference's ``np.seterr(all="raise")`` did. Undefined points give NaN; with
        max_trials=1 (where any NaN rejects the set) the first NaN gives None at once."""
        if isinstance(tree, Expr):
            tree = trees.from_expr(tree)
        try:
            with np.errstate(**self._errstate):
                y = trees.evaluate(tree, x, self._functions)
        except (FloatingPointError, _Undefined):
            return None
        return np.broadcast_to(np.asarray(y, dtype=np.float64), (x.shape[0],)).copy()

    def _add_noise(self, rng, y: np.ndarray, prediction: dict, evaluation: bool):
        cfg = self.config
        gamma = cfg.eval_noise_gamma if evaluation else cfg.train_noise_gamma
        if gamma == 0:
            return y, 0.0
        if evaluation and cfg.eval_noise_kind == "multiplicative":
            return y * (1.0 + gamma * rng.standard_normal(len(y))), gamma
        if not evaluation:
            gamma = float(rng.uniform(0.0, gamma))
        # The reference scales by the RMS of all outputs of the sample (fit and extrapolation).
        everything = np.concatenate([y, *(v for _, v in prediction.values())])
        rms = np.sqrt(np.mean((np.abs(everything) + 1e-100) ** 2))
        return y + gamma * rms * rng.standard_normal(len(y)), gamma


# ---------------------------------------------------------------------------- helpers


def _valid_outputs(y: np.ndarray, max_abs_y: float) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.isfinite(y) & (np.abs(y) < max_abs_y)


class _Undefined(Exception):
    """Raised inside an evaluation at the first NaN, when a NaN rejects the set anyway."""


def _numpy_functions(cfg: GeneratorConfig) -> dict:
    """Operator name -> numpy callable, from the operator table.

    Operators with a domain rule go through ``Operator.apply`` (NaN outside the domain).
    The others call the table's array function directly: ``apply`` would only turn an
    overflow into NaN, and here an overflow raises (as in the reference) before any inf can
    exist. With max_trials=1 a NaN rejects the whole set, so the evaluation stops there.
    """
    stop_at_nan = cfg.max_trials == 1

    def make(op: operators.Operator):
        if op.domain is None:
            return functools.partial(op.fn, np)
        apply = functools.partial(op.apply, np)
        if cfg.use_abs and op.name in ("log", "sqrt"):
            plain = apply
            apply = lambda a: plain(np.abs(a))  # noqa: E731
        if not stop_at_nan:
            return apply

        def checked(*args):
            result = apply(*args)
            if np.isnan(result).any():
                raise _Undefined
            return result

        return checked

    return {op.name: make(op) for op in operators.FUNCTIONS}


def _n_points(cfg: GeneratorConfig, dimension: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """N ~ U{min(min_points_per_dim * d, max_points) .. max_points} from a uniform in [0, 1)."""
    low = np.minimum(cfg.min_points_per_dim * np.asarray(dimension, np.int64), cfg.max_points)
    return low + np.floor(uniform * (cfg.max_points - low + 1)).astype(np.int64)


def _uniform_int(uniform, low: int, high: int):
    """U{low..high} from uniforms in [0, 1)."""
    return low + np.floor(np.asarray(uniform) * (high - low + 1)).astype(np.int64)


def _uniform_int_one(uniform: float, low: int, high: int) -> int:
    """``_uniform_int`` for one Python float (same values)."""
    return low + math.floor(uniform * (high - low + 1))


_GOLDEN = 0x9E3779B97F4A7C15
_MIX1, _MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_MASK = (1 << 64) - 1


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijective avalanche of 64-bit words (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX2)
    return z ^ (z >> np.uint64(31))


def _mix64_int(z: int) -> int:
    """``_mix64`` on one Python int (about ten times faster than a 1-element array)."""
    z = ((z ^ (z >> 30)) * _MIX1) & _MASK
    z = ((z ^ (z >> 27)) * _MIX2) & _MASK
    return z ^ (z >> 31)


def _hash_uniforms(seed: int, indices: np.ndarray, stream: int, n_fields: int) -> np.ndarray:
    """Uniforms in [0, 1), shape (len(indices), n_fields), a pure function of
    (seed, index, stream, field): counter-based, so headers of a million indices take one
    vectorised pass."""
    key = _mix64_int(((seed * 4 + stream) * _GOLDEN + _GOLDEN) & _MASK)
    with np.errstate(over="ignore"):
        base = _mix64(indices.astype(np.uint64) ^ np.uint64(key))
        fields = np.arange(1, n_fields + 1, dtype=np.uint64) * np.uint64(_GOLDEN)
        words = _mix64(base[:, None] + fields[None, :])
    return (words >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _hash_uniforms_one(seed: int, index: int, stream: int, n_fields: int) -> list[float]:
    """``_hash_uniforms`` for a single index, in Python ints (same values)."""
    key = _mix64_int(((seed * 4 + stream) * _GOLDEN + _GOLDEN) & _MASK)
    base = _mix64_int(index ^ key)
    return [(_mix64_int((base + f * _GOLDEN) & _MASK) >> 11) * (1.0 / (1 << 53))
            for f in range(1, n_fields + 1)]
