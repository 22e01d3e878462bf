"""Decoded token rows -> expression trees, dropping (and counting) the invalid ones."""

from __future__ import annotations

import re
from collections import Counter
from typing import NamedTuple

import numpy as np

from jaxsr.expr import Expr, InvalidExpression, Vocab, parse_prefix


class Expressions(NamedTuple):
    """The valid trees, where each came from, and why the others were dropped.

    exprs: the trees, in row order.
    index: (len(exprs), tokens.ndim - 1) int array, the leading indices of each tree's row
      (for ``Decoded`` tokens (B, n, L): the bag and the candidate).
    dropped: Counter of reasons (e.g. "truncated", "unknown word") for the invalid rows.
    """

    exprs: list[Expr]
    index: np.ndarray
    dropped: Counter


def to_expressions(tokens, lengths=None) -> Expressions:
    """Parses decoded rows (..., L) of decoder ids into trees.

    ``tokens`` is an int array or a ``Decoded`` (whose lengths are then used). Without
    ``lengths``, a row ends at its first ``<EOS>`` or ``<PAD>``. As in the reference, tokens
    after a complete tree are ignored; a row that is not a tree is dropped and its reason
    counted.
    """
    if hasattr(tokens, "tokens") and hasattr(tokens, "lengths"):
        tokens, lengths = tokens.tokens, tokens.lengths if lengths is None else lengths
    tokens = np.asarray(tokens)
    if tokens.ndim < 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"tokens must be an integer array (..., length), got dtype "
                         f"{tokens.dtype} and shape {tokens.shape}")
    rows = tokens.reshape(-1, tokens.shape[-1])
    if lengths is None:
        row_lengths = [_length_to_end(row) for row in rows]
    else:
        lengths = np.asarray(lengths)
        if lengths.shape != tokens.shape[:-1]:
            raise ValueError(f"lengths must have shape {tokens.shape[:-1]}, got {lengths.shape}")
        row_lengths = lengths.reshape(-1).tolist()

    vocab = Vocab.decoder()
    exprs, kept, dropped = [], [], Counter()
    for i, (row, length) in enumerate(zip(rows, row_lengths)):
        try:
            exprs.append(parse_prefix(vocab.decode(row[:length]), allow_trailing=True))
            kept.append(i)
        except InvalidExpression as err:
            dropped[reason_kind(err.reason)] += 1
        except ValueError:  # an id outside the vocabulary
            dropped["token id out of range"] += 1
    # One row (1-D tokens) has no leading index: unravel_index would refuse an empty shape.
    index = np.stack(np.unravel_index(np.asarray(kept, int), tokens.shape[:-1]), axis=-1) \
        if kept and tokens.ndim > 1 else np.zeros((len(kept), tokens.ndim - 1), int)
    return Expressions(exprs, index, dropped)


def _length_to_end(row: np.ndarray) -> int:
    ends = np.flatnonzero((row == Vocab.decoder().eos) | (row == Vocab.decoder().pad))
    return int(ends[0]) if ends.size else len(row)


def reason_kind(reason: str) -> str:
    """The kind of a parse error, without its details: 'truncated: 2 operand(s) missing'
    -> 'truncated', "unknown word '<PAD>'" -> 'unknown word'."""
    kind = reason.split(":", 1)[0]
    return re.sub(r"\s*'[^']*'|\s*\"[^\"]*\"", "", kind).strip()
