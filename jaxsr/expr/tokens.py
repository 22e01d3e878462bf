"""Float tokens and the two vocabularies, id for id as in the reference.

A float becomes three tokens: a sign (``+``/``-``), a 4-digit mantissa ``N0000``..``N9999`` and a
base-10 exponent ``E-100``..``E100``, so that ``v = sign * mantissa * 10**exponent``. The
mantissa holds 4 significant digits, rounded as ``"%.3e" % v`` rounds. Values whose exponent
would fall below -100 encode as zero (``N0000 E0``); values too large for ``E100`` and
non-finite values raise ``ValueError``.

The encoder (input) vocabulary has 10,218 words and the decoder (output) vocabulary 10,292;
their orders follow the reference exactly, including the decoder's duplicated special words,
where the later id wins (``<EOS>`` = 74, ``<PAD>`` = 82).
"""

from __future__ import annotations

import functools
import re

import numpy as np

from jaxsr.expr import operators

PRECISION = 3  # digits after the point in "%.3e": 4 significant digits
MANTISSA_DIGITS = PRECISION + 1
MAX_EXPONENT = 100
_MANTISSA_WORD = re.compile(rf"N[0-9]{{{MANTISSA_DIGITS}}}")
_EXPONENT_WORDS = frozenset(f"E{e}" for e in range(-MAX_EXPONENT, MAX_EXPONENT + 1))
MAX_INPUT_DIMENSION = 10
TOKENS_PER_FLOAT = 3
# Every |v| below 10 ** (E100 + 3 digits) = 1e103 encodes (the largest encodable value is
# 9.999e103); it is also the reference generator's cut-off for y (docs/reference.md 2.2).
MAX_ABS_VALUE = 10.0 ** (MAX_EXPONENT + PRECISION)
# Tokens a decoded formula may have when no length is given: the reference's
# max_generated_output_len.
DEFAULT_MAX_LEN = 200

SPECIAL_WORDS = (
    "<EOS>", "<X>", "</X>", "<Y>", "</Y>", "</POINTS>", "<INPUT_PAD>", "<OUTPUT_PAD>",
    "<PAD>", "(", ")", "SPECIAL", "OOD_unary_op", "OOD_binary_op", "OOD_constant",
)

# Expression symbols of the reference decoder besides operators and integer leaves.
_EXTRA_SYMBOLS = (
    "CONSTANT", "rand", *(f"x_{i}" for i in range(MAX_INPUT_DIMENSION)),
    "|", "INT+", "INT-", "FLOAT+", "FLOAT-",
)


def float_symbols() -> list[str]:
    """The 10,203 float words, sorted as Python strings (the reference's order)."""
    words = ["+", "-"]
    words += [f"N{m:0{MANTISSA_DIGITS}d}" for m in range(10**MANTISSA_DIGITS)]
    words += [f"E{e}" for e in range(-MAX_EXPONENT, MAX_EXPONENT + 1)]
    return sorted(words)


def encoder_vocab() -> list[str]:
    """The encoder's id -> word list (10,218 words): special words, then float words."""
    return [*SPECIAL_WORDS, *float_symbols()]


def decoder_vocab() -> list[str]:
    """The decoder's id -> word list (10,292 words).

    Special words, the 59 expression symbols sorted, then the encoder vocabulary appended
    again (so the special words appear twice; ``Vocab.word2id`` keeps the later id).
    """
    symbols = {op.name for op in operators.OPERATORS} | set(_EXTRA_SYMBOLS)
    return [*SPECIAL_WORDS, *sorted(symbols), *encoder_vocab()]


class Vocab:
    """An id <-> word mapping. Where a word appears twice, the later id wins."""

    def __init__(self, id2word: list[str]):
        self.id2word: tuple[str, ...] = tuple(id2word)
        self.word2id: dict[str, int] = {w: i for i, w in enumerate(self.id2word)}

    def __len__(self) -> int:
        return len(self.id2word)

    def __getitem__(self, word: str) -> int:
        try:
            return self.word2id[word]
        except KeyError:
            raise KeyError(f"unknown token {word!r}: not in the vocabulary") from None

    def encode(self, words) -> np.ndarray:
        return np.array([self[w] for w in words], dtype=np.int32)

    def decode(self, ids) -> list[str]:
        n = len(self.id2word)
        bad = [int(i) for i in np.asarray(ids).ravel() if not 0 <= int(i) < n]
        if bad:
            raise ValueError(f"token ids out of range [0, {n}): {bad[:5]}")
        return [self.id2word[int(i)] for i in np.asarray(ids).ravel()]

    @property
    def eos(self) -> int:
        return self.word2id["<EOS>"]

    @property
    def pad(self) -> int:
        return self.word2id["<PAD>"]

    @staticmethod
    @functools.cache
    def encoder() -> Vocab:
        return Vocab(encoder_vocab())

    @staticmethod
    @functools.cache
    def decoder() -> Vocab:
        return Vocab(decoder_vocab())


# ----------------------------------------------------------------------------- floats


def _exact_parts(value: float) -> tuple[int, int]:
    """(mantissa, exponent) of one float via the reference's string formatting."""
    digits, exp = (f"%.{PRECISION}e" % abs(value)).split("e")
    return int(digits.replace(".", "")), int(exp) - PRECISION


def float_parts(values) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised float encoding: (negative, mantissa, exponent) integer arrays.

    Equal to formatting each value with ``"%.3e"``: a fast numeric path, with the few values
    whose rounding is ambiguous in float arithmetic (within 1e-6 of a half) done exactly.
    Raises ValueError on NaN, inf, or a value too large for the ``E100`` token.
    """
    v = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise ValueError("cannot encode NaN or inf as float tokens")
    negative = v < 0  # -0.0 encodes with "+", as in the reference
    a = np.abs(v).ravel()
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        exp10 = np.floor(np.log10(np.where(a > 0, a, 1.0))).astype(np.int64)
        scaled = a / np.power(10.0, (exp10 - PRECISION).astype(np.float64))
        # log10 can be off by one near powers of ten; renormalise to [999.5, 9999.5).
        low, high = scaled < 10**PRECISION - 0.5, scaled >= 10**MANTISSA_DIGITS - 0.5
        exp10 = exp10 - low + high
        scaled = a / np.power(10.0, (exp10 - PRECISION).astype(np.float64))
        mantissa = np.rint(np.where(np.isfinite(scaled), scaled, 0)).astype(np.int64)
        frac = scaled - np.floor(scaled)
    exponent = exp10 - PRECISION
    # Ties at a half, and values just under a decade boundary (9999.5 before renormalising).
    unsure = (np.abs(frac - 0.5) < 1e-6) | (np.abs(scaled - 999.95) < 1e-6)
    unsure |= ~np.isfinite(scaled) | (a < 1e-290)
    unsure |= (mantissa < 10**PRECISION) | (mantissa >= 10**MANTISSA_DIGITS)
    unsure &= a > 0
    for i in np.flatnonzero(unsure):
        mantissa[i], exponent[i] = _exact_parts(a[i])
    zero = a == 0
    mantissa[zero], exponent[zero] = 0, -PRECISION
    underflow = exponent < -MAX_EXPONENT
    mantissa[underflow], exponent[underflow] = 0, 0
    if np.any(exponent > MAX_EXPONENT):
        worst = a[np.argmax(exponent)]
        raise ValueError(f"cannot encode {worst!r}: exponent above E{MAX_EXPONENT}")
    shape = v.shape
    return negative, mantissa.reshape(shape), exponent.reshape(shape)


def encode_float(value: float) -> list[str]:
    """``[sign, "Nmmmm", "Ee"]`` for one float, as the reference's ``FloatSequences``."""
    negative, mantissa, exponent = float_parts(np.array([value]))
    return [
        "-" if negative[0] else "+",
        f"N{int(mantissa[0]):0{MANTISSA_DIGITS}d}",
        f"E{int(exponent[0])}",
    ]


def decode_float(tokens) -> float:
    """The value of three float tokens; raises ValueError if they are not a float."""
    tokens = list(tokens)
    if len(tokens) != TOKENS_PER_FLOAT:
        raise ValueError(f"a float is 3 tokens, got {len(tokens)}: {tokens}")
    sign, mant, expo = tokens
    if sign not in ("+", "-"):
        raise ValueError(f"expected a sign token '+' or '-', got {sign!r}")
    # Only vocabulary words: int() alone would also take "E+5", "E05", "E1_0" or non-ASCII
    # digits, and fail with a TypeError on a token that is not a string.
    if not (isinstance(mant, str) and _MANTISSA_WORD.fullmatch(mant)):
        raise ValueError(f"expected a mantissa token N0000..N9999, got {mant!r}")
    if not (isinstance(expo, str) and expo in _EXPONENT_WORDS):
        raise ValueError(f"expected an exponent token E-100..E100, got {expo!r}")
    exponent = int(expo[1:])
    # The reference computes sign * int * 10**exp in Python numbers; keep that rounding.
    return float((1 if sign == "+" else -1) * int(mant[1:]) * (10**exponent))


# ----------------------------------------------------------------------------- points


@functools.cache
def _encoder_float_ids() -> tuple[np.ndarray, np.ndarray, int, int]:
    vocab = Vocab.encoder()
    mantissa_ids = np.array(
        [vocab[f"N{m:0{MANTISSA_DIGITS}d}"] for m in range(10**MANTISSA_DIGITS)], np.int32
    )
    exponent_ids = np.array(
        [vocab[f"E{e}"] for e in range(-MAX_EXPONENT, MAX_EXPONENT + 1)], np.int32
    )
    return mantissa_ids, exponent_ids, vocab["+"], vocab["-"]


def float_token_ids(values) -> np.ndarray:
    """Encoder ids of the float tokens of ``values``: shape ``values.shape + (3,)``."""
    negative, mantissa, exponent = float_parts(values)
    mantissa_ids, exponent_ids, plus, minus = _encoder_float_ids()
    return np.stack(
        [np.where(negative, minus, plus).astype(np.int32),
         mantissa_ids[mantissa], exponent_ids[exponent + MAX_EXPONENT]],
        axis=-1,
    )


def points_width(max_dimension: int = MAX_INPUT_DIMENSION) -> int:
    """Encoder ids per point: 3 tokens for each of ``max_dimension`` x values and for y."""
    return TOKENS_PER_FLOAT * (max_dimension + 1)


def encode_points(x, y, max_dimension: int = MAX_INPUT_DIMENSION) -> np.ndarray:
    """Encoder ids of a point set: ``(N, points_width(max_dimension))`` int32 (33 by default).

    Each row is the 3 tokens of every coordinate of x, ``<INPUT_PAD>`` for the missing
    dimensions, then the 3 tokens of y.
    """
    return encode_point_sets([x], [y], max_dimension)[0]


def encode_point_sets(xs, ys, max_dimension: int = MAX_INPUT_DIMENSION) -> list[np.ndarray]:
    """``encode_points`` of each pair (x, y), with the floats of all sets encoded in one
    vectorised call (what a training batch of many small sets needs)."""
    pairs = [_checked_points(x, y, max_dimension) for x, y in zip(xs, ys, strict=True)]
    if not pairs:
        return []
    floats = float_token_ids(np.concatenate([np.concatenate([x.ravel(), y]) for x, y in pairs]))
    out, start = [], 0
    for x, _ in pairs:
        n, d = x.shape
        ids = np.full((n, max_dimension + 1, TOKENS_PER_FLOAT),
                      Vocab.encoder()["<INPUT_PAD>"], np.int32)
        ids[:, :d] = floats[start:start + n * d].reshape(n, d, TOKENS_PER_FLOAT)
        ids[:, max_dimension] = floats[start + n * d:start + n * d + n]
        start += n * d + n
        out.append(ids.reshape(n, points_width(max_dimension)))  # -1 fails for n = 0
    return out


def _checked_points(x, y, max_dimension: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"expected x (N, D) and y (N,), got x {x.shape} and y {y.shape}")
    if x.shape[1] > max_dimension:
        raise ValueError(f"x has {x.shape[1]} dimensions; the vocabulary supports at most "
                         f"{max_dimension}")
    return x, y
