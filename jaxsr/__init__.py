"""jaxsr: end-to-end symbolic regression with transformers, in JAX/Flax.

The public surface is re-exported here; submodules hold the implementation:
``jaxsr.expr`` (symbolic core), ``jaxsr.datasets`` (bundled benchmark data).
"""

from importlib import metadata as _metadata

from jaxsr.expr import (
    Expr,
    InvalidExpression,
    ProgramSize,
    Programs,
    compile_programs,
    decode_float,
    decoder_vocab,
    encode_float,
    encode_points,
    encoder_vocab,
    evaluate_programs,
    parse_prefix,
)

try:
    __version__ = _metadata.version("jaxsr-e2e")
except _metadata.PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

__all__ = [
    "Expr", "InvalidExpression", "parse_prefix",
    "encode_float", "decode_float", "encoder_vocab", "decoder_vocab", "encode_points",
    "ProgramSize", "Programs", "compile_programs", "evaluate_programs",
    "__version__",
]
