"""jaxsr: end-to-end symbolic regression with transformers, in JAX/Flax.

The public surface is re-exported here; submodules hold the implementation:
``jaxsr.expr`` (symbolic core), ``jaxsr.data`` (training data), ``jaxsr.model`` (Flax model),
``jaxsr.weights`` (weights format, reference-checkpoint converter), ``jaxsr.refine`` (batched
constant refinement), ``jaxsr.datasets`` (bundled benchmark data), ``jaxsr.train`` (the
trainer: ``jaxsr.train.train(config)``). Names backed by JAX load
on first use, so ``import jaxsr`` stays light for numpy-only work.
"""

import importlib
from importlib import metadata as _metadata

from jaxsr.expr import (
    Expr,
    InvalidExpression,
    decode_float,
    decoder_vocab,
    encode_float,
    encode_points,
    encoder_vocab,
    parse_prefix,
)

_LAZY = {
    "ProgramSize": "jaxsr.expr.compiler", "Programs": "jaxsr.expr.compiler",
    "compile_programs": "jaxsr.expr.compiler", "evaluate_programs": "jaxsr.expr.interpreter",
    "Generator": "jaxsr.data", "GeneratorConfig": "jaxsr.data", "batches": "jaxsr.data",
    "refine_constants": "jaxsr.refine", "RefineResult": "jaxsr.refine",
    "E2EModel": "jaxsr.model", "ModelConfig": "jaxsr.model", "get_config": "jaxsr.model",
    "load_model": "jaxsr.weights", "convert_reference": "jaxsr.weights",
    "TrainConfig": "jaxsr.train",
    "SymbolicTransformerRegressor": "jaxsr.regressor",
}


# Subpackages reachable as attributes without an explicit import: ``jaxsr.train.train(config)``.
_LAZY_SUBPACKAGES = ("train",)


def __getattr__(name):
    if name in _LAZY_SUBPACKAGES:
        return importlib.import_module(f"jaxsr.{name}")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jaxsr' has no attribute {name!r}")


try:
    __version__ = _metadata.version("jaxsr-e2e")
except _metadata.PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

__all__ = [
    "Expr", "InvalidExpression", "parse_prefix",
    "encode_float", "decode_float", "encoder_vocab", "decoder_vocab", "encode_points",
    "ProgramSize", "Programs", "compile_programs", "evaluate_programs",
    "Generator", "GeneratorConfig", "batches", "RefineResult", "refine_constants",
    "E2EModel", "ModelConfig", "get_config", "load_model", "convert_reference",
    "TrainConfig", "train", "SymbolicTransformerRegressor",
    "__version__",
]
