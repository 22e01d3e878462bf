"""The generator's configuration: every knob of the reference generator, with its defaults.

Field names follow the reference's command-line flags (``symbolicregression/envs/environment.py``
``register_args`` and ``parsers.py``) so that a reference run's ``params`` can be read across
one to one. Options that depart from the reference are off by default and say so.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

from jaxsr.checks import from_known_fields, int_problem
from jaxsr.expr import operators, tokens

# Operator weights in the reference's list order. The reference's
# ``operators_to_downsample = "div_0,arcsin_0,arccos_0,tan_0.2,arctan_0.2,sqrt_5,pow2_3,inv_3"``
# reweights these; every operator it does not list has weight 1.
REFERENCE_UNARY_WEIGHTS: tuple[tuple[str, float], ...] = (
    ("abs", 1.0), ("inv", 3.0), ("sqrt", 5.0), ("log", 1.0), ("exp", 1.0), ("sin", 1.0),
    ("arcsin", 0.0), ("cos", 1.0), ("arccos", 0.0), ("tan", 0.2), ("arctan", 0.2),
    ("pow2", 3.0), ("pow3", 1.0),
)
REFERENCE_BINARY_WEIGHTS: tuple[tuple[str, float], ...] = (
    ("add", 1.0), ("sub", 1.0), ("mul", 1.0), ("div", 0.0),
)

# Integer leaves the vocabulary holds: -10..10 without 0.
_VOCAB_MAX_INT = 10


# Earlier names of the point-count fields. Configs written before the rename (a training
# workdir's config.json, the shipped model's recorded training config) still use them.
RENAMED_FIELDS = {"max_len": "max_points", "min_len_per_dim": "min_points_per_dim"}


def with_current_names(values: Mapping) -> dict:
    """GeneratorConfig field values with each earlier field name replaced by its current one."""
    both = [old for old, new in RENAMED_FIELDS.items() if old in values and new in values]
    if both:
        raise ValueError(f"{both[0]!r} is the earlier name of {RENAMED_FIELDS[both[0]]!r}: "
                         "give one of them")
    return {RENAMED_FIELDS.get(key, key): value for key, value in values.items()}


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    """Knobs of the training-data generator; the defaults are the reference's.

    Expressions (docs/reference.md 2.1):
      seed: base seed; a sample depends only on (seed, index).
      min_input_dimension, max_input_dimension: d ~ U{min..max}; at most 10 (the vocabulary).
      min_unary_ops, max_unary_ops: unary budget u ~ U{min..max}.
      min_binary_ops_per_dim, max_binary_ops_per_dim, max_binary_ops_offset: the binary-operator
        count is b ~ U{min_per_dim*d .. offset + max_per_dim*d - 1} (the reference's exclusive
        upper bound).
      max_unary_depth: a unary may be inserted above a subtree of fewer nodes than this.
      unary_operators, binary_operators: (name, weight) pairs; sampling probability is
        proportional to the weight. Names must be operators of ``jaxsr.expr.operators``.
        A dict is accepted and converted.
      prob_const: probability that a leaf beyond the first d is an integer or named constant
        (``max_int`` bounds the integers) instead of a variable.
      enforce_dim: reject trees that use fewer than d variables.
      reduce_num_constants: the reference's default constant placement (coefficients on sum
        terms and inside unaries, a global bias); False gives the paper's affine a + b*x on
        every variable and a + b*f(.) on every unary.
      float_precision, max_exponent_prefactor: constants are +-m * 10**e with m ~ U{1 ..
        10**float_precision - 1} and e ~ U{-max_exponent_prefactor - (p+1)//2 ..
        max_exponent_prefactor - (p+1)//2}.
      required_operators: regenerate the tree until each of these appears (reference: off).
      operators_to_not_repeat: reject trees using any of these more than once (reference: off).

    Points (docs/reference.md 2.2):
      min_points_per_dim, max_points: training N ~ U{min(min_points_per_dim*d, max_points) ..
        max_points}; evaluation samples use N = max_points (the reference's min_len_per_dim
        and max_len; renamed here because max_len counts decoded tokens everywhere else).
      max_centroids: mixtures have U{1 .. max_centroids - 1} components.
      use_abs: evaluate log and sqrt on |x| (reference: off).
      max_abs_y: points with |y| >= max_abs_y (or NaN, inf) are invalid.
      max_trials: rounds of re-drawing inputs to replace invalid points; with 1 (the reference
        default) any invalid point rejects the expression.
      train_noise_gamma: additive output noise at training, gamma ~ U(0, train_noise_gamma),
        y += gamma * rms(y) * N(0, 1).
      n_prediction_points, prediction_sigmas: evaluation samples carry, for each sigma, this
        many extra points standardised and scaled by sigma (extrapolation sets).
      eval_noise_gamma, eval_noise_kind: output noise on evaluation fit points: "additive"
        (the reference: y += gamma * rms(y) * N(0,1)) or "multiplicative" (y *= 1 + xi,
        xi ~ N(0, gamma), as in the paper's noise study).

    Deviations (off by default):
      allow_underflow: the reference evaluates under ``np.seterr(all="raise")``, so an underflow
        (e.g. exp(-800)) rejects the expression; True keeps the rounded tiny value instead.
      max_attempts: give up (RuntimeError) after this many rejected attempts for one sample;
        the reference retries forever, which only matters for impossible configurations.
    """

    seed: int = 0
    # expressions
    min_input_dimension: int = 1
    max_input_dimension: int = 10
    min_unary_ops: int = 0
    max_unary_ops: int = 4
    min_binary_ops_per_dim: int = 0
    max_binary_ops_per_dim: int = 1
    max_binary_ops_offset: int = 4
    max_unary_depth: int = 6
    unary_operators: tuple[tuple[str, float], ...] = REFERENCE_UNARY_WEIGHTS
    binary_operators: tuple[tuple[str, float], ...] = REFERENCE_BINARY_WEIGHTS
    prob_const: float = 0.0
    max_int: int = 10
    enforce_dim: bool = True
    reduce_num_constants: bool = True
    float_precision: int = 3
    max_exponent_prefactor: int = 1
    required_operators: tuple[str, ...] = ()
    operators_to_not_repeat: tuple[str, ...] = ()
    # points
    min_points_per_dim: int = 5
    max_points: int = 200
    max_centroids: int = 10
    use_abs: bool = False
    max_abs_y: float = tokens.MAX_ABS_VALUE
    max_trials: int = 1
    train_noise_gamma: float = 0.0
    # evaluation sets
    n_prediction_points: int = 200
    prediction_sigmas: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
    eval_noise_gamma: float = 0.0
    eval_noise_kind: str = "additive"
    # deviations, off by default
    allow_underflow: bool = False
    max_attempts: int = 100_000

    @classmethod
    def from_dict(cls, values: Mapping) -> GeneratorConfig:
        """A config from saved field values, earlier field names accepted."""
        return from_known_fields(cls, with_current_names(values))

    def __post_init__(self):
        # Accept dicts and lists for the tuple fields, so configs read from JSON work.
        for name in ("unary_operators", "binary_operators"):
            value = getattr(self, name)
            if isinstance(value, Mapping):
                value = value.items()
            object.__setattr__(self, name, tuple((str(k), float(w)) for k, w in value))
        for name in ("required_operators", "operators_to_not_repeat"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = [v for v in value.split(",") if v]
            object.__setattr__(self, name, tuple(value))
        object.__setattr__(self, "prediction_sigmas",
                           tuple(float(s) for s in self.prediction_sigmas))
        _validate(self)

    # ------------------------------------------------------------------ derived values
    def binary_ops_range(self, dimension: int) -> tuple[int, int]:
        """Inclusive (low, high) of the binary-operator count for dimension d."""
        low = self.min_binary_ops_per_dim * dimension
        high = self.max_binary_ops_offset + self.max_binary_ops_per_dim * dimension - 1
        return low, high

    def min_points(self, dimension: int) -> int:
        return min(self.min_points_per_dim * dimension, self.max_points)

    @property
    def constant_exponents(self) -> tuple[int, int]:
        """Inclusive range of the base-10 exponent of a constant's integer mantissa."""
        shift = (self.float_precision + 1) // 2
        return -self.max_exponent_prefactor - shift, self.max_exponent_prefactor - shift

    def replace(self, **changes) -> GeneratorConfig:
        return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------------------- validation


def _fail(field: str, message: str):
    raise ValueError(f"GeneratorConfig.{field}: {message}")


def _check_range(cfg, low_field: str, high_field: str, minimum: int = 0):
    low, high = getattr(cfg, low_field), getattr(cfg, high_field)
    for name, value in ((low_field, low), (high_field, high)):
        if not isinstance(value, int) or isinstance(value, bool):
            _fail(name, f"must be an int, got {value!r}")
        if value < minimum:
            _fail(name, f"must be >= {minimum}, got {value}")
    if low > high:
        _fail(low_field, f"{low_field}={low} is greater than {high_field}={high}")


def _check_int(cfg, field: str, minimum: int, maximum: int | None = None):
    problem = int_problem(getattr(cfg, field), minimum, maximum, python_int=True)
    if problem:
        _fail(field, problem)


def _check_probability(cfg, field: str):
    value = getattr(cfg, field)
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        _fail(field, f"must be a probability in [0, 1], got {value!r}")


def _check_weights(cfg, field: str, arity: int):
    pairs = getattr(cfg, field)
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        _fail(field, f"lists an operator twice: {names}")
    for name, weight in pairs:
        op = operators.BY_NAME.get(name)
        if op is None or op.arity < 1:
            known = ", ".join(operators.UNARY if arity == 1 else operators.BINARY)
            _fail(field, f"unknown operator {name!r}; known: {known}")
        if op.arity != arity:
            _fail(field, f"{name!r} takes {op.arity} operand(s), expected {arity}")
        if not (math.isfinite(weight) and weight >= 0):
            _fail(field, f"weight of {name!r} must be finite and >= 0, got {weight}")
    if sum(w for _, w in pairs) <= 0:
        _fail(field, "needs at least one operator with a positive weight")


def _check_operator_names(cfg, field: str):
    for name in getattr(cfg, field):
        op = operators.BY_NAME.get(name)
        if op is None or op.arity < 1:
            _fail(field, f"unknown operator {name!r}")


def _validate(cfg: GeneratorConfig) -> None:
    _check_int(cfg, "seed", 0)
    _check_range(cfg, "min_input_dimension", "max_input_dimension", minimum=1)
    if cfg.max_input_dimension > tokens.MAX_INPUT_DIMENSION:
        _fail("max_input_dimension", f"{cfg.max_input_dimension} exceeds the "
              f"{tokens.MAX_INPUT_DIMENSION} input dimensions the vocabulary supports")
    _check_range(cfg, "min_unary_ops", "max_unary_ops")
    _check_int(cfg, "min_binary_ops_per_dim", 0)
    _check_int(cfg, "max_binary_ops_per_dim", 0)
    _check_int(cfg, "max_binary_ops_offset", 0)
    for d in (cfg.min_input_dimension, cfg.max_input_dimension):
        low, high = cfg.binary_ops_range(d)
        if low > high:
            _fail("max_binary_ops_offset", f"the binary-operator range for dimension {d} is "
                  f"empty: {low}..{high} (min_binary_ops_per_dim={cfg.min_binary_ops_per_dim}, "
                  f"max_binary_ops_per_dim={cfg.max_binary_ops_per_dim})")
    if cfg.enforce_dim and cfg.binary_ops_range(cfg.max_input_dimension)[1] + 1 < (
            cfg.max_input_dimension):
        _fail("max_binary_ops_offset", "trees can never have enough leaves for "
              f"max_input_dimension={cfg.max_input_dimension} variables (enforce_dim=True)")
    _check_int(cfg, "max_unary_depth", 1)
    _check_weights(cfg, "unary_operators", 1)
    _check_weights(cfg, "binary_operators", 2)
    _check_probability(cfg, "prob_const")
    _check_int(cfg, "max_int", 1, _VOCAB_MAX_INT)
    _check_int(cfg, "float_precision", 1, tokens.MANTISSA_DIGITS)
    _check_int(cfg, "max_exponent_prefactor", 0, 90)
    _check_operator_names(cfg, "required_operators")
    _check_operator_names(cfg, "operators_to_not_repeat")
    _check_int(cfg, "min_points_per_dim", 1)
    _check_int(cfg, "max_points", 1)
    _check_int(cfg, "max_centroids", 2)
    largest = tokens.MAX_ABS_VALUE
    if not (isinstance(cfg.max_abs_y, (int, float)) and 0 < cfg.max_abs_y <= largest):
        _fail("max_abs_y", f"must be in (0, {largest:g}] so that every y can be "
              f"written as float tokens, got {cfg.max_abs_y!r}")
    _check_int(cfg, "max_trials", 1)
    for field in ("train_noise_gamma", "eval_noise_gamma"):
        value = getattr(cfg, field)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            _fail(field, f"must be a finite number >= 0, got {value!r}")
    if cfg.eval_noise_kind not in ("additive", "multiplicative"):
        _fail("eval_noise_kind", f"must be 'additive' or 'multiplicative', "
              f"got {cfg.eval_noise_kind!r}")
    _check_int(cfg, "n_prediction_points", 0)
    for sigma in cfg.prediction_sigmas:
        if not (math.isfinite(sigma) and sigma > 0):
            _fail("prediction_sigmas", f"every sigma must be finite and > 0, got {sigma}")
    _check_int(cfg, "max_attempts", 1)
