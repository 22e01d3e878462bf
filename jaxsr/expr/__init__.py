"""The symbolic core: one operator table drives trees, tokens, sympy and batched JAX programs.

The JAX-backed names (``compile_programs``, ``evaluate_programs``, ``Programs``,
``ProgramSize``) load on first use, so that numpy-only users of trees and tokens (such as the
data generator's worker processes) do not import JAX.
"""

import importlib

from jaxsr.expr import operators
from jaxsr.expr.operators import OPERATORS, Operator
from jaxsr.expr.tokens import (
    Vocab,
    decode_float,
    decoder_vocab,
    encode_float,
    encode_points,
    encoder_vocab,
)
from jaxsr.expr.tree import Expr, InvalidExpression, parse_prefix

_LAZY = {"ProgramSize": "jaxsr.expr.compiler", "Programs": "jaxsr.expr.compiler",
         "compile_programs": "jaxsr.expr.compiler", "evaluate_programs": "jaxsr.expr.interpreter"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jaxsr.expr' has no attribute {name!r}")


__all__ = [
    "OPERATORS", "Operator", "operators",
    "Expr", "InvalidExpression", "parse_prefix",
    "Vocab", "encode_float", "decode_float", "encoder_vocab", "decoder_vocab", "encode_points",
    "ProgramSize", "Programs", "compile_programs", "evaluate_programs",
]
