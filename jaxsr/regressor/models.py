"""The model behind the estimator: resolved from a name or a path, loaded once per process.

Estimators hold only the string they were given (so pickles and clones never carry
weights); ``resolve`` loads the weights on first use and keeps them, on the device, for
every later fit in this process.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxsr.data import GeneratorConfig
from jaxsr.model import CONFIGS, E2EModel
from jaxsr.weights import UntrainedModelWarning, load_model
from jaxsr.weights.format import FALLBACK_CONFIG, META_FILE, default_model_path

# Points per training set of the reference's generator (its max_len, jaxsr's default).
REFERENCE_MAX_POINTS = GeneratorConfig.max_points


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A model ready to decode, and how to name it in every output."""

    model: E2EModel
    params: dict          # on the device
    decoding: dict        # the weights' decoding defaults (beam_temperature, ...)
    label: str            # e.g. "tiny (random weights, untrained)"
    untrained: bool
    stands_in_for_default: bool  # "default" was asked for, but this installation lacks it
    # Most variables of the formulas it was trained on (its generator's setting, as ``jaxsr
    # train`` records it; the input width for weights that do not say). Problems with more
    # are beyond what it has learnt to read: the search does not ask it about them.
    trained_dimension: int

    @property
    def max_features(self) -> int:
        return self.model.config.max_input_dimension

    @property
    def max_input_points(self) -> int:
        """Points per bag the weights ask for: ``jaxsr train``'s export records the training
        maximum, or a size measured to work better; 200 (the reference's training maximum)
        for weights that do not say."""
        return int(self.decoding.get("max_input_points", REFERENCE_MAX_POINTS))


def is_untrained(spec) -> bool:
    """Whether ``spec`` names random weights (a config name, or "default" when it is missing),
    without loading anything."""
    if spec == "default":
        return default_model_path() is None
    return isinstance(spec, str) and spec in CONFIGS


def resolve(spec: str | os.PathLike) -> LoadedModel:
    """The model for ``spec``: "default", a config name (random weights) or a weights path.

    Warns (``UntrainedModelWarning``) every time "default" has to stand in with random
    weights.
    """
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"model must be 'default', a config name ({', '.join(CONFIGS)}) or a "
                        f"path to a weights directory, got {type(spec).__name__}")
    loaded = _load(*_cache_key(spec))
    if loaded.stands_in_for_default:
        warnings.warn(
            f"no trained default model in this installation: using {loaded.label}. Its "
            "formulas are random, so expect the flagged linear or mean fallback; pass "
            "model=PATH to a weights directory for real results.",
            UntrainedModelWarning, stacklevel=3)
    return loaded


def _cache_key(spec) -> tuple[str, float]:
    """(what to load, a stamp that changes when the weights on disk do)."""
    spec = os.fspath(spec)
    if spec == "default" or spec in CONFIGS:
        path = default_model_path() if spec == "default" else None
        return spec, _stamp(path) if path else 0.0
    path = Path(spec).resolve()
    return str(path), _stamp(path)


def _stamp(path: Path) -> float:
    meta = path / META_FILE if path.is_dir() else path
    return meta.stat().st_mtime if meta.exists() else 0.0


@functools.lru_cache(maxsize=4)
def _load(spec: str, stamp: float) -> LoadedModel:
    del stamp  # part of the cache key only
    with warnings.catch_warnings():  # resolve() warns on every fit, not just the first
        warnings.simplefilter("ignore", UntrainedModelWarning)
        weights = load_model(spec)
    meta = weights.metadata
    stands_in = meta.get("fallback_for") == "default"
    untrained = "random_init" in meta
    if untrained:
        label = f"{meta['random_init']['config']} (random weights, untrained)"
        if stands_in:
            label = (f"{FALLBACK_CONFIG} (random weights, untrained; standing in for the "
                     "default model, which this installation lacks)")
    elif spec == "default":
        label = f"default ({default_model_path()})"
    else:
        origin = meta.get("source", {}).get("file")
        label = spec + (f" (converted from {Path(origin).name})" if origin else "")
    params = jax.tree.map(jnp.asarray, weights.params)
    return LoadedModel(weights.model, params, dict(weights.decoding), label, untrained,
                       stands_in, _trained_dimension(meta, weights.model.config))


def _trained_dimension(meta: dict, config) -> int:
    train_config = meta.get("source", {}).get("train_config")
    if train_config is None:  # converted or hand-made weights: trust their input width
        return config.max_input_dimension
    generator = train_config.get("generator", {})  # the fields set, over the defaults
    return int(generator.get("max_input_dimension", GeneratorConfig.max_input_dimension))
