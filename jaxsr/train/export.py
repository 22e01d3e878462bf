"""A training checkpoint -> released weights (``jaxsr.weights`` format: npz + JSON + sha256)."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from jaxsr.model import abstract_params
from jaxsr.train.checkpoint import Checkpoints
from jaxsr.train.config import TrainConfig
from jaxsr.weights.format import DEFAULT_DECODING, save_weights


def read_checkpoint_config(workdir: str | Path, step: int | None = None) -> TrainConfig:
    """The ``TrainConfig`` saved with a checkpoint (default: the latest) of ``workdir``."""
    with Checkpoints(workdir, create=False) as checkpoints:
        return TrainConfig.from_dict(checkpoints.restore_meta(step)["config"])


def export_weights(workdir: str | Path, out_dir: str | Path, step: int | None = None, *,
                   decoding: dict | None = None) -> Path:
    """Writes the parameters of a checkpoint (default: the latest) of ``workdir`` as a
    weights directory that ``jaxsr.weights.load_model(out_dir)`` reads.

    The exported model config computes in float32 (the training dtype, the step and the
    training config are recorded in the metadata); the optimizer state is not read.
    ``decoding`` overrides the recorded inference defaults: the reference's, plus
    ``max_input_points``, the regressor's bag size, which is the training maximum unless
    given (e.g. a bag size measured to work better for this model).
    """
    with Checkpoints(workdir, create=False) as checkpoints:
        meta = checkpoints.restore_meta(step)
        config = TrainConfig.from_dict(meta["config"])
        target = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                              abstract_params(config.model_config()))
        params = checkpoints.restore_params(target, meta["step"])
    metadata = {"source": {"kind": "jaxsr train", "workdir": str(Path(workdir).resolve()),
                           "step": meta["step"], "train_config": meta["config"]}}
    # By default the regressor feeds bags of as many points as the model was trained on.
    decoding = {**DEFAULT_DECODING, "max_input_points": config.generator_config().max_len,
                **(decoding or {})}
    return save_weights(out_dir, params, config.model_config().replace(dtype="float32"),
                        decoding=decoding, metadata=metadata)
