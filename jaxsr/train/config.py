"""Training configuration: a typed, frozen ``TrainConfig``, named recipes and overrides.

A config is built from a recipe name (``tiny``, ``small``, ``paper``) or a JSON file, then
``--set FIELD=VALUE`` overrides. A JSON file holds ``TrainConfig`` fields, optionally on
top of a recipe (``{"base": "paper", "dtype": "bfloat16"}``) and with a free-text
``"description"``; ``model.FIELD`` and ``generator.FIELD`` reach into the model and
generator overrides.

Fields fall in two groups. *Trajectory* fields decide which numbers a run computes (model,
data, optimiser, seed): a run resumed from a checkpoint must keep them. *Run-control* fields
(steps, checkpoint and logging cadence, validation, workers, workdir) may change between a
run and its resumption.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from jaxsr.checks import from_known_fields, int_problem
from jaxsr.data.config import GeneratorConfig, with_current_names
from jaxsr.expr.tokens import DEFAULT_MAX_LEN
from jaxsr.model.config import COMPUTE_DTYPES, CONFIGS, ModelConfig, get_config

# Fields that may differ between a checkpoint's config and the run resuming from it.
RUN_CONTROL_FIELDS = frozenset({
    "steps", "workdir", "checkpoint_every", "keep_checkpoints", "log_every",
    "validate_every", "validation_size", "validation_seed", "validation_max_len",
    "validation_batch", "workers", "distributed",
})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; ``jaxsr.train.train(config)`` runs it.

    The defaults are the reference's recipe (docs/reference.md 4.2) for the ``paper`` model.
    """

    # Model: a named ModelConfig ("tiny", "small", "paper") and overrides of its fields.
    model: str = "paper"
    model_overrides: dict = dataclasses.field(default_factory=dict)
    # Compute dtype: "float32", or "bfloat16" on GPU/TPU. Parameters are float32 either way.
    dtype: str = "float32"
    # Overrides of GeneratorConfig fields (defaults: the reference's); its seed is `seed`
    # unless given here.
    generator: dict = dataclasses.field(default_factory=dict)
    # Points per device per step, padding included: the reference's tokens_per_batch, which
    # was per GPU. A host's batch is this times its local device count.
    tokens_per_device: int = 10_000
    # Padded point counts and target lengths of the batches (None: jaxsr.data's defaults).
    # Each (points, tokens) pair is one compiled shape of the train step.
    point_buckets: tuple[int, ...] | None = None
    token_buckets: tuple[int, ...] | None = None
    # Rows per micro-batch: each device accumulates gradients over micro-batches of this many
    # rows (same update, less memory). 0: the whole device batch at once; None: automatic
    # (on CPU, micro-batches whose logits fit in 32 MB, 3-4x faster there; elsewhere 0).
    micro_batch: int | None = None
    # Adam (b1 0.9, b2 0.999, eps 1e-8): linear warm-up from warmup_init_lr to lr over
    # warmup_steps, then lr * sqrt(warmup_steps / step); gradients clipped to this norm.
    lr: float = 2e-4
    warmup_steps: int = 10_000
    warmup_init_lr: float = 1e-7
    clip_norm: float = 0.5
    # Optimizer updates in total (a resumed run continues up to this).
    steps: int = 150_000
    # Seeds the parameters and, unless `generator` sets one, the training data.
    seed: int = 0
    # Where checkpoints, logs and config.json go; a run resumes from the latest checkpoint here.
    workdir: str = "runs/train"
    # Save every this many steps (and on SIGTERM/SIGINT); keep the newest this many.
    checkpoint_every: int = 3000
    keep_checkpoints: int = 3
    # Print a progress line and write TensorBoard scalars every this many steps.
    log_every: int = 100
    # Greedy in-domain validation every this many steps (0: never), on validation_size
    # evaluation samples of the generator with seed validation_seed, decoding at most
    # validation_max_len tokens, validation_batch point sets per decoding call.
    validate_every: int = 3000
    validation_size: int = 500
    validation_seed: int = 1
    validation_max_len: int = DEFAULT_MAX_LEN
    validation_batch: int = 64
    # Data-generation processes per host (None: cores - 1; 0: generate in the trainer).
    workers: int | None = None
    # Call jax.distributed.initialize() first (multi-host); also set by JAXSR_DISTRIBUTED=1.
    distributed: bool = False

    def __post_init__(self):
        # JSON gives lists: store tuples, so that equal configs compare equal however built.
        for name in ("point_buckets", "token_buckets"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(value))
        object.__setattr__(self, "model_overrides", dict(self.model_overrides))
        # Earlier field names (a workdir's config.json from before the rename) read as now.
        object.__setattr__(self, "generator", with_current_names(self.generator))
        object.__setattr__(self, "workdir", str(self.workdir))
        _validate(self)

    # ------------------------------------------------------------------ derived configs
    def model_config(self) -> ModelConfig:
        return get_config(self.model, **self.model_overrides, dtype=self.dtype)

    def generator_config(self) -> GeneratorConfig:
        return GeneratorConfig.from_dict({"seed": self.seed, **self.generator})

    # ------------------------------------------------------------------ conversions
    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        for name in ("point_buckets", "token_buckets"):
            if values[name] is not None:
                values[name] = list(values[name])
        return values

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        return from_known_fields(cls, values)

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def trajectory_differences(self, other: TrainConfig) -> list[str]:
        """Fields outside RUN_CONTROL_FIELDS whose values differ from ``other``'s."""
        mine, theirs = self.to_dict(), other.to_dict()
        return sorted(k for k in mine if k not in RUN_CONTROL_FIELDS and mine[k] != theirs[k])


# ---------------------------------------------------------------------------- validation


def _fail(field: str, message: str):
    raise ValueError(f"TrainConfig.{field}: {message}")


def _check_int(config: TrainConfig, field: str, minimum: int) -> None:
    problem = int_problem(getattr(config, field), minimum, python_int=True)
    if problem:
        _fail(field, problem)


def _check_float(config: TrainConfig, field: str, *, positive: bool) -> None:
    value = getattr(config, field)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        _fail(field, f"must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")


def _validate(config: TrainConfig) -> None:
    if config.model not in CONFIGS:
        _fail("model", f"unknown model config {config.model!r}; choose one of {sorted(CONFIGS)}")
    if "dtype" in config.model_overrides:
        _fail("model_overrides", "set the compute dtype with TrainConfig.dtype, not here")
    if config.dtype not in COMPUTE_DTYPES:
        _fail("dtype", f"must be one of {COMPUTE_DTYPES}, got {config.dtype!r}")
    try:
        config.model_config()
    except (TypeError, ValueError) as err:
        _fail("model_overrides", str(err))
    try:
        config.generator_config()
    except (TypeError, ValueError) as err:
        _fail("generator", str(err))
    for field in ("tokens_per_device", "warmup_steps", "checkpoint_every", "keep_checkpoints",
                  "log_every", "validation_size", "validation_max_len", "validation_batch"):
        _check_int(config, field, 1)
    for field in ("steps", "seed", "validate_every", "validation_seed"):
        _check_int(config, field, 0)
    for field in ("lr", "clip_norm"):
        _check_float(config, field, positive=True)
    _check_float(config, "warmup_init_lr", positive=False)
    for field in ("workers", "micro_batch"):
        if getattr(config, field) is not None:
            _check_int(config, field, 0)
    if not isinstance(config.distributed, bool):
        _fail("distributed", f"must be true or false, got {config.distributed!r}")
    if config.validation_max_len > config.model_config().max_positions:
        _fail("validation_max_len", f"{config.validation_max_len} exceeds the model's "
              f"{config.model_config().max_positions} positions")
    for field in ("point_buckets", "token_buckets"):
        buckets = getattr(config, field)
        if buckets is not None and not (buckets and all(
                isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in buckets)):
            _fail(field, f"must be a non-empty list of positive ints, got {list(buckets)!r}")


# ---------------------------------------------------------------------------- recipes

RECIPES: dict[str, TrainConfig] = {
    # The reference's run: the paper model, 10,000 points per device, lr 2e-4 (the
    # reference launcher and the paper), 50 epochs of 3,000 steps. With 16 devices the
    # global batch is the reference's (16 x 10,000 points).
    "paper": TrainConfig(),
    # About 13M parameters on the reference data: one GPU trains it in hours.
    "small": TrainConfig(model="small", steps=100_000, checkpoint_every=2000,
                         validate_every=2000, validation_size=200),
    # A CPU smoke run: the tiny model on easy data (at most 2 variables and 2 unary
    # operators, up to 100 points), 6 compiled shapes, loss visibly falling in minutes.
    "tiny": TrainConfig(
        model="tiny", generator={"max_input_dimension": 2, "max_unary_ops": 2, "max_points": 100},
        point_buckets=(25, 50, 100), tokens_per_device=2000, lr=1e-3, warmup_steps=200,
        steps=3000, checkpoint_every=500, log_every=50, validate_every=500,
        validation_size=64, validation_max_len=64),
}


# ---------------------------------------------------------------------------- loading


def load_config(spec: str | Path, overrides: Iterable[str] = ()) -> TrainConfig:
    """A recipe name or a JSON file, then ``FIELD=VALUE`` overrides (see ``apply_overrides``)."""
    spec = str(spec)
    if spec in RECIPES:
        config = RECIPES[spec]
    elif Path(spec).is_file():
        config = config_from_json(Path(spec))
    else:
        raise ValueError(f"--config {spec!r} is neither a recipe ({', '.join(RECIPES)}) "
                         "nor a JSON file")
    return apply_overrides(config, overrides)


def config_from_json(path: Path) -> TrainConfig:
    try:
        values = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read the training config {path}: {err}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a training config must be a JSON object")  # noqa: TRY004
    values.pop("description", None)
    base = values.pop("base", None)
    if base is not None and base not in RECIPES:
        raise ValueError(f"{path}: unknown base recipe {base!r}; choose one of {list(RECIPES)}")
    start = RECIPES[base].to_dict() if base else {}
    try:
        return TrainConfig.from_dict(_merge(start, values))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def apply_overrides(config: TrainConfig, overrides: Iterable[str]) -> TrainConfig:
    """``["lr=4e-4", "model.decoder_layers=8", "generator.max_points=100"]`` applied in order.

    Values are read as JSON (numbers, true/false, null, lists), else taken as strings.
    """
    values = config.to_dict()
    for item in overrides:
        field, sep, text = item.partition("=")
        if not sep or not field:
            raise ValueError(f"override {item!r} is not FIELD=VALUE")
        _merge_into(values, field.strip(), _parse_value(text))
    return TrainConfig.from_dict(values)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


_NESTED = {"model": "model_overrides", "generator": "generator"}


def _merge_into(values: dict, field: str, value: Any) -> None:
    head, dot, rest = field.partition(".")
    if dot:
        if head not in _NESTED:
            raise ValueError(f"override {field!r}: only model.FIELD and generator.FIELD nest")
        added = with_current_names({rest: value}) if head == "generator" else {rest: value}
        values[_NESTED[head]] = {**values[_NESTED[head]], **added}
    else:
        values[field] = value


def _merge(base: dict, values: dict) -> dict:
    """``values`` over ``base``; the two nested override dicts merge key by key."""
    merged = {**base, **values}
    if "generator" in base and "generator" in values:
        merged["generator"] = {**with_current_names(base["generator"]),
                               **with_current_names(values["generator"])}
    if "model_overrides" in base and "model_overrides" in values:
        merged["model_overrides"] = {**base["model_overrides"], **values["model_overrides"]}
    return merged
