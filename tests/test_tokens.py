"""Float tokens and vocabularies: ids, sizes and rounding exactly as the reference."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxsr.expr import tokens
from jaxsr.expr.tokens import Vocab, decode_float, encode_float, encode_points


def test_vocabulary_sizes_and_reference_ids():
    enc, dec = Vocab.encoder(), Vocab.decoder()
    assert len(tokens.encoder_vocab()) == len(enc) == 10_218
    assert len(tokens.decoder_vocab()) == len(dec) == 10_292
    # Encoder ids read off the reference (docs/reference.md 1.3).
    assert [enc[w] for w in ("<PAD>", "<INPUT_PAD>", "<OUTPUT_PAD>", "+", "-")] == [8, 6, 7, 15, 16]
    assert [enc[w] for w in ("E-100", "E0", "E100", "N0000")] == [19, 117, 120, 218]
    # Decoder ids (docs/reference.md 1.5): the later duplicate of a special word wins.
    assert dec.eos == 74 and dec.pad == 82
    expected = {"-1": 15, "-10": 16, "CONSTANT": 36, "abs": 41, "add": 42, "mul": 53,
                "x_0": 63, "x_9": 72, "|": 73, "+": 89, "-": 90, "N0000": 292}
    assert {w: dec[w] for w in expected} == expected
    assert dec.id2word[0] == dec.id2word[74] == "<EOS>"


def test_unknown_token_names_the_word():
    with pytest.raises(KeyError, match="'bogus'"):
        Vocab.decoder()["bogus"]
    with pytest.raises(ValueError, match="out of range"):
        Vocab.decoder().decode([5, 10_292])


@pytest.mark.parametrize("value, expected", [
    (1.0, ["+", "N1000", "E-3"]),
    (-3.14159, ["-", "N3142", "E-3"]),
    (123456, ["+", "N1235", "E2"]),
    (0.0, ["+", "N0000", "E-3"]),
    (-0.0, ["+", "N0000", "E-3"]),
    (1e-310, ["+", "N0000", "E0"]),  # below E-100: encoded as zero
    (9.9995e-05, ["+", "N9999", "E-8"]),  # the double is just below the tie
    (9.999e103, ["+", "N9999", "E100"]),
])
def test_encode_float_examples(value, expected):
    assert encode_float(value) == expected


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan, 1e104])
def test_encode_float_rejects_unencodable(bad):
    with pytest.raises(ValueError):
        encode_float(bad)


@pytest.mark.parametrize("bad", [["+", "N100", "E0"], ["*", "N1000", "E0"], ["+", "N1000", "E101"],
                                 ["+", "N1000"], ["+", "E0", "N1000"]])
def test_decode_float_rejects_malformed(bad):
    with pytest.raises(ValueError):
        decode_float(bad)


@settings(max_examples=3 * settings.default.max_examples, deadline=None)
@given(st.floats(min_value=-9e103, max_value=9e103, allow_nan=False, allow_infinity=False))
def test_float_round_trip_within_half_unit_of_fourth_digit(value):
    decoded = decode_float(encode_float(value))
    if abs(value) < 1e-97:  # exponents below E-100 encode as zero
        assert abs(decoded) <= 1e-96
        return
    unit = 10.0 ** (math.floor(math.log10(abs(value))) - 3)
    assert abs(decoded - value) <= 0.5 * unit * (1 + 1e-9)


def test_vectorised_encoding_equals_string_formatting():
    rng = np.random.default_rng(1)
    values = rng.standard_normal(20_000) * 10.0 ** rng.uniform(-110, 103, 20_000)
    values = np.concatenate([values, np.round(rng.standard_normal(2000), 4), [5e-5, 0.00995]])
    negative, mantissa, exponent = tokens.float_parts(values)
    for v, neg, m, e in zip(values, negative, mantissa, exponent):
        digits, exp = ("%.3e" % abs(v)).split("e")
        m_ref, e_ref = int(digits.replace(".", "")), int(exp) - 3
        if e_ref < -100:
            m_ref, e_ref = 0, 0
        assert (neg, m, e) == (v < 0, m_ref, e_ref), v


def test_encode_points_layout():
    x = np.array([[1.0, -2.0], [0.5, 3.0]])
    y = np.array([10.0, -0.25])
    ids = encode_points(x, y)
    enc = Vocab.encoder()
    assert ids.shape == (2, 33) and ids.dtype == np.int32
    assert enc.decode(ids[0, :6]) == ["+", "N1000", "E-3", "-", "N2000", "E-3"]
    assert (ids[:, 6:30] == enc["<INPUT_PAD>"]).all()
    assert enc.decode(ids[1, 30:]) == ["-", "N2500", "E-4"]


def test_encode_points_rejects_bad_shapes():
    with pytest.raises(ValueError, match="at most 10"):
        encode_points(np.zeros((3, 11)), np.zeros(3))
    with pytest.raises(ValueError, match="expected x"):
        encode_points(np.zeros((3, 2)), np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        encode_points(np.zeros((3, 2)), np.array([0.0, np.nan, 1.0]))


def test_every_value_below_the_limit_encodes_and_the_regressor_and_generator_share_it():
    from jaxsr.data.config import GeneratorConfig
    from jaxsr.expr.tokens import MAX_ABS_VALUE

    below = np.nextafter(MAX_ABS_VALUE, 0.0)
    assert decode_float(encode_float(-below)) == pytest.approx(-below, rel=1e-3)
    assert GeneratorConfig().max_abs_y == MAX_ABS_VALUE == 1e103
