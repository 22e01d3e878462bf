"""The symbolic core: one operator table drives trees, tokens, sympy and batched JAX programs."""

from jaxsr.expr import operators
from jaxsr.expr.operators import OPERATORS, Operator
from jaxsr.expr.programs import ProgramSize, Programs, compile_programs, evaluate_programs
from jaxsr.expr.tokens import (
    Vocab,
    decode_float,
    decoder_vocab,
    encode_float,
    encode_points,
    encoder_vocab,
)
from jaxsr.expr.tree import Expr, InvalidExpression, parse_prefix

__all__ = [
    "OPERATORS", "Operator", "operators",
    "Expr", "InvalidExpression", "parse_prefix",
    "Vocab", "encode_float", "decode_float", "encoder_vocab", "decoder_vocab", "encode_points",
    "ProgramSize", "Programs", "compile_programs", "evaluate_programs",
]
