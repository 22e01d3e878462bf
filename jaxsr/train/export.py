"""A training checkpoint -> released weights (``jaxsr.weights`` format: npz + JSON + sha256).

``export_weights`` writes a checkpoint's parameters; ``export_if_improved`` does so only
when the checkpoint's validation accuracy beats the one recorded with the weights already
in the output folder (``jaxsr train --export``), so that re-exporting after more training
never replaces a better model with a worse one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np

from jaxsr.model import abstract_params
from jaxsr.train.checkpoint import Checkpoints
from jaxsr.train.config import TrainConfig
from jaxsr.weights.format import DEFAULT_DECODING, META_FILE, save_weights

EXPORT_DIR = "weights"  # --export without a folder writes WORKDIR/weights


def read_checkpoint_config(workdir: str | Path, step: int | None = None) -> TrainConfig:
    """The ``TrainConfig`` saved with a checkpoint (default: the latest) of ``workdir``."""
    with Checkpoints(workdir, create=False) as checkpoints:
        return TrainConfig.from_dict(checkpoints.restore_meta(step)["config"])


def export_weights(workdir: str | Path, out_dir: str | Path, step: int | None = None, *,
                   decoding: dict | None = None, validation: dict | None = None) -> Path:
    """Writes the parameters of a checkpoint (default: the latest) of ``workdir`` as a
    weights directory that ``jaxsr.weights.load_model(out_dir)`` reads.

    The exported model config computes in float32 (the training dtype, the step and the
    training config are recorded in the metadata); the optimizer state is not read.
    ``decoding`` overrides the recorded inference defaults: the reference's, plus
    ``max_input_points``, the regressor's bag size, which is the training maximum unless
    given (e.g. a bag size measured to work better for this model). ``validation`` (the
    checkpoint's validation results) is recorded as ``metadata["validation"]``.
    """
    with Checkpoints(workdir, create=False) as checkpoints:
        meta = checkpoints.restore_meta(step)
        config = TrainConfig.from_dict(meta["config"])
        params = _restore_params(checkpoints, config, meta["step"])
    metadata = {"source": {"kind": "jaxsr train", "workdir": str(Path(workdir).resolve()),
                           "step": meta["step"], "train_config": meta["config"]}}
    if validation is not None:
        metadata["validation"] = validation
    # By default the regressor feeds bags of as many points as the model was trained on.
    decoding = {**DEFAULT_DECODING, "max_input_points": config.generator_config().max_points,
                **(decoding or {})}
    return save_weights(out_dir, params, config.model_config().replace(dtype="float32"),
                        decoding=decoding, metadata=metadata)


def _restore_params(checkpoints: Checkpoints, config: TrainConfig, step: int) -> dict:
    target = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                          abstract_params(config.model_config()))
    return checkpoints.restore_params(target, step)


# ---------------------------------------------------------------------------- --export


@dataclasses.dataclass(frozen=True)
class ExportDecision:
    """What ``export_if_improved`` did: ``current`` is the checkpoint's validation record,
    ``previous`` the one of the weights that were in ``out_dir`` (None: there were none)."""

    exported: bool
    out_dir: Path
    current: dict
    previous: dict | None

    def describe(self) -> str:
        key, now = accuracy_key(), self.current
        mine = f"step {now['step']} ({key} {now[key]:.4f})"
        if self.previous is None:
            return f"exported {mine} to {self.out_dir}: its first export"
        before = f"step {self.previous['step']} ({key} {self.previous[key]:.4f})"
        if self.exported:
            return f"exported {mine} to {self.out_dir}: it improves on the previous export, {before}"
        return (f"kept the previous export in {self.out_dir}, {before}: {mine} does not "
                "improve on it")


def accuracy_key() -> str:
    from jaxsr.train.validation import ACCURACY_TAU

    return f"acc_{ACCURACY_TAU:g}"


def export_if_improved(config: TrainConfig, out_dir: str | Path,
                       step: int | None = None) -> ExportDecision:
    """Exports a checkpoint (default: the latest) of ``config.workdir`` to ``out_dir`` only
    if its validation accuracy (Acc_0.1) is higher than that of the weights already there;
    always when there are none. Both accuracies are on ``config``'s validation set: a
    recorded figure measured on another set is measured again on this one."""
    out_dir = Path(out_dir)
    current = checkpoint_validation(config, step)
    previous = _previous_validation(config, out_dir)
    key = accuracy_key()
    if previous is not None and not current[key] > previous[key]:
        return ExportDecision(False, out_dir, current, previous)
    export_weights(config.workdir, out_dir, current["step"], validation=current)
    return ExportDecision(True, out_dir, current, previous)


def validation_setup(config: TrainConfig) -> dict:
    """What decides the validation set and the decoding: equal setups, comparable scores."""
    return {"size": config.validation_size, "seed": config.validation_seed,
            "max_len": config.validation_max_len, "generator": dict(config.generator)}


def checkpoint_validation(config: TrainConfig, step: int | None = None) -> dict:
    """The validation results of a checkpoint (default: the latest): the row that training
    wrote for that step when it used the same setup, else measured now."""
    from jaxsr.train.logging import VALIDATION_CSV, read_csv

    with Checkpoints(config.workdir, create=False) as checkpoints:
        meta = checkpoints.restore_meta(step)
        setup = validation_setup(config)
        csv_path = Path(config.workdir) / VALIDATION_CSV
        saved_setup = validation_setup(TrainConfig.from_dict(meta["config"]))
        if saved_setup == setup and csv_path.is_file():
            for row in read_csv(csv_path):
                if row["step"] == meta["step"]:
                    return {**row, "setup": setup}
        params = _restore_params(checkpoints, config, meta["step"])
    return {"step": meta["step"], **_validate(config, config.model_config(), params),
            "setup": setup}


def _previous_validation(config: TrainConfig, out_dir: Path) -> dict | None:
    """The validation record of the weights in ``out_dir`` on ``config``'s setup; None if
    the folder holds no weights yet."""
    from jaxsr.weights.format import load_weights, read_weights_config

    if not (out_dir / META_FILE).is_file():
        return None
    _, meta = read_weights_config(out_dir)
    record = meta.get("metadata", {}).get("validation")
    if record is not None and record.get("setup") == validation_setup(config):
        return record
    weights = load_weights(out_dir)  # exported before records were kept, or another set
    step = meta.get("metadata", {}).get("source", {}).get("step")
    return {"step": step, **_validate(config, weights.config, weights.params),
            "setup": validation_setup(config)}


def _validate(config: TrainConfig, model_config, params) -> dict:
    from jaxsr.model import E2EModel
    from jaxsr.train.validation import make_validation_set, validate

    data = make_validation_set(config.generator_config(), config.validation_size,
                               config.validation_seed)
    return validate(E2EModel(model_config), params, data, max_len=config.validation_max_len,
                    batch=config.validation_batch)
