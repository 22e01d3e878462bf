"""Training: a pmapped, resumable trainer from one CPU to multi-host pod slices.

    >>> from jaxsr.train import load_config, train
    >>> result = train(load_config("tiny", ["workdir=runs/tiny", "steps=200"]))

``train(config)`` resumes from the latest checkpoint in ``config.workdir``; see
``docs/train.md`` for the loss, the schedule, the checkpoint layout and multi-host use.
Names load on first use, so that ``jaxsr --help`` does not import JAX and orbax.
"""

import importlib

_LAZY = {
    "TrainConfig": "jaxsr.train.config", "RECIPES": "jaxsr.train.config",
    "load_config": "jaxsr.train.config", "apply_overrides": "jaxsr.train.config",
    "train": "jaxsr.train.loop", "TrainResult": "jaxsr.train.loop",
    "NonFiniteLossError": "jaxsr.train.loop",
    "export_weights": "jaxsr.train.export", "read_checkpoint_config": "jaxsr.train.export",
    "export_if_improved": "jaxsr.train.export",
    "Checkpoints": "jaxsr.train.checkpoint", "inverse_sqrt_schedule": "jaxsr.train.schedule",
    "read_csv": "jaxsr.train.logging",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jaxsr.train' has no attribute {name!r}")


__all__ = [  # noqa: RUF022 (grouped as _LAZY)
    "TrainConfig", "RECIPES", "load_config", "apply_overrides", "train", "TrainResult",
    "NonFiniteLossError", "export_weights", "export_if_improved", "read_checkpoint_config",
    "Checkpoints",
    "inverse_sqrt_schedule", "read_csv",
]
