"""Wire amounts: strict parsing into integer minor units, and rendering back."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger_stream.money import (
    AMOUNT_MAX,
    BALANCE_MAX,
    CURRENCY_EXPONENTS,
    AmountSyntaxError,
    exponent_of,
    format_amount,
    parse_amount,
)

# The pattern the published JSON Schema gives for a string amount (ECMA-262: ASCII digits,
# `$` only at the very end).
SCHEMA_AMOUNT = re.compile(r"-?[0-9]+(\.[0-9]+)?")


def test_limits_are_the_documented_powers_of_two() -> None:
    assert AMOUNT_MAX == 2**53 - 1
    assert BALANCE_MAX == 2**63 - 1


@pytest.mark.parametrize(
    ("currency", "exponent"),
    [("USD", 2), ("EUR", 2), ("JPY", 0), ("KRW", 0), ("KWD", 3), ("BHD", 3)],
)
def test_exponent_of_known_currencies(currency: str, exponent: int) -> None:
    assert exponent_of(currency) == exponent


def test_exponent_of_an_unknown_currency_is_refused() -> None:
    with pytest.raises(KeyError):
        exponent_of("XYZ")


# (raw wire value, currency, minor units)
PARSED = [
    # Integers are minor units already; range is the core's business, not the parser's.
    (1250, "USD", 1250),
    (0, "USD", 0),
    (-5, "USD", -5),
    (2**80, "USD", 2**80),
    (7, "JPY", 7),
    # Decimal strings, at most the currency's exponent of fraction digits.
    ("12.50", "USD", 1250),
    ("12.5", "USD", 1250),
    ("12", "USD", 1200),
    ("0.01", "USD", 1),
    ("0", "USD", 0),
    ("-0", "USD", 0),
    ("-3.07", "USD", -307),
    ("007", "USD", 700),
    ("90071992547409.91", "USD", AMOUNT_MAX),
    ("7", "JPY", 7),
    ("1000", "JPY", 1000),
    ("-1", "JPY", -1),
    ("1.234", "KWD", 1234),
    ("1.2", "KWD", 1200),
    ("0.001", "KWD", 1),
    ("5", "KWD", 5000),
    ("9" * 30, "USD", int("9" * 30) * 100),
    ("1." + "0" * 3, "KWD", 1000),
]


@pytest.mark.parametrize(("raw", "currency", "minor"), PARSED)
def test_parse_amount_gives_minor_units(raw: object, currency: str, minor: int) -> None:
    parsed = parse_amount(raw, currency)
    assert parsed == minor
    assert type(parsed) is int


# (raw wire value, currency, why it is refused)
REFUSED = [
    (12.5, "USD", "float"),
    (1250.0, "USD", "float with an integral value"),
    (float("nan"), "USD", "float NaN"),
    (True, "USD", "bool"),
    (False, "USD", "bool"),
    (None, "USD", "None"),
    ([1], "USD", "list"),
    (b"1", "USD", "bytes"),
    ("1e5", "USD", "exponent"),
    ("1E5", "JPY", "exponent"),
    ("NaN", "USD", "NaN"),
    ("nan", "USD", "NaN"),
    ("inf", "USD", "infinity"),
    ("Infinity", "USD", "infinity"),
    ("1.234", "USD", "three fraction digits for USD"),
    ("1.5", "JPY", "any fraction digit for JPY"),
    ("1.0", "JPY", "any fraction digit for JPY, even zero"),
    ("1.2345", "KWD", "four fraction digits for KWD"),
    ("1.", "USD", "dot without fraction"),
    (".5", "USD", "fraction without whole part"),
    (" 1", "USD", "leading space"),
    ("1 ", "USD", "trailing space"),
    ("+1", "USD", "plus sign"),
    ("--1", "USD", "double minus"),
    ("", "USD", "empty string"),
    ("-", "USD", "sign alone"),
    ("1,000", "USD", "thousands separator"),
    ("1_000", "USD", "underscore separator"),
    ("0x10", "USD", "hexadecimal"),
    ("1" * 31, "USD", "31 whole digits"),
    ("1." + "0" * 31, "KWD", "31 fraction digits"),
    ("1" * 100_000, "USD", "very long string"),
]


@pytest.mark.parametrize(("raw", "currency", "why"), REFUSED, ids=[row[2] for row in REFUSED])
def test_parse_amount_refuses(raw: object, currency: str, why: str) -> None:
    with pytest.raises(AmountSyntaxError):
        parse_amount(raw, currency)


def test_amount_syntax_error_is_a_value_error_so_pydantic_reports_it() -> None:
    assert issubclass(AmountSyntaxError, ValueError)


def test_refusal_of_a_very_long_string_does_not_repeat_it_in_the_message() -> None:
    with pytest.raises(AmountSyntaxError) as refused:
        parse_amount("1" * 100_000, "USD")
    assert len(str(refused.value)) < 200


def test_parse_amount_refuses_a_trailing_newline() -> None:
    with pytest.raises(AmountSyntaxError):
        parse_amount("12.50\n", "USD")


def test_parse_amount_refuses_non_ascii_digits() -> None:
    with pytest.raises(AmountSyntaxError):
        parse_amount("\u0661\u0662", "USD")


# (minor units, currency, rendering)
FORMATTED = [
    (1250, "USD", "12.50"),
    (1, "USD", "0.01"),
    (0, "USD", "0.00"),
    (-1, "USD", "-0.01"),
    (-307, "USD", "-3.07"),
    (AMOUNT_MAX, "USD", "90071992547409.91"),
    (7, "JPY", "7"),
    (-7, "JPY", "-7"),
    (0, "JPY", "0"),
    (1234, "KWD", "1.234"),
    (1, "KWD", "0.001"),
    (-1000, "KWD", "-1.000"),
]


@pytest.mark.parametrize(("minor", "currency", "text"), FORMATTED)
def test_format_amount_renders_the_currency_exponent(minor: int, currency: str, text: str) -> None:
    assert format_amount(minor, currency) == text


@given(
    minor=st.integers(min_value=-(10**27), max_value=10**27),
    currency=st.sampled_from(sorted(CURRENCY_EXPONENTS)),
)
def test_format_then_parse_gives_the_same_minor_units(minor: int, currency: str) -> None:
    text = format_amount(minor, currency)
    assert SCHEMA_AMOUNT.fullmatch(text)
    fraction = text.partition(".")[2]
    assert len(fraction) == exponent_of(currency)
    assert parse_amount(text, currency) == minor
