"""Money on the wire: currencies, their exponents, and strict parsing into integer minor units.

Amounts are never floats. A wire amount is either an integer count of minor units or a decimal
string with at most the currency's exponent of fraction digits ("12.50" USD is 1250).
"""

from __future__ import annotations

import re

# Largest amount a single command may move. 2**53 - 1 keeps every amount exact for JSON
# consumers that parse numbers as IEEE doubles (JavaScript), and leaves a signed 64-bit
# balance room for about a thousand maximal postings before `overflow` is reached.
AMOUNT_MAX = 2**53 - 1

# Posted debits and credits of an account are each kept below this (signed 64-bit), so a
# balance fits the int64 column of any consumer.
BALANCE_MAX = 2**63 - 1

# ISO 4217 codes and their minor-unit exponents. Unknown codes are refused rather than guessed.
CURRENCY_EXPONENTS: dict[str, int] = {
    **dict.fromkeys(
        [
            "AED",
            "AUD",
            "BRL",
            "CAD",
            "CHF",
            "CNY",
            "CZK",
            "DKK",
            "EUR",
            "GBP",
            "HKD",
            "HUF",
            "ILS",
            "INR",
            "MXN",
            "NOK",
            "NZD",
            "PHP",
            "PLN",
            "RON",
            "SEK",
            "SGD",
            "THB",
            "TRY",
            "USD",
            "ZAR",
        ],
        2,
    ),
    **dict.fromkeys(["CLP", "ISK", "JPY", "KRW", "UGX", "VND", "XAF", "XOF"], 0),
    **dict.fromkeys(["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"], 3),
}

# Amounts of more digits than this are not amounts (an int or a string alike).
_DIGITS_MAX = 30
# ASCII digits only; matched whole (`$` would also match before a final newline).
_DECIMAL = re.compile(rf"(-?)([0-9]{{1,{_DIGITS_MAX}}})(?:\.([0-9]{{1,{_DIGITS_MAX}}}))?")


class AmountSyntaxError(ValueError):
    """The wire amount is not an integer or a decimal string in the currency's exponent."""


def exponent_of(currency: str) -> int:
    """Minor-unit exponent of an ISO 4217 currency code; KeyError when it is not known."""
    return CURRENCY_EXPONENTS[currency]


def parse_amount(raw: object, currency: str) -> int:
    """Turn a wire amount into integer minor units of `currency`.

    Only the syntax is checked here: zero, negatives and the maximum are decided by the core,
    which answers with a rejection code instead of an error.

    >>> parse_amount("12.5", "USD"), parse_amount(1250, "USD"), parse_amount("7", "JPY")
    (1250, 1250, 7)
    """
    if isinstance(raw, bool) or not isinstance(raw, (int, str)):
        raise AmountSyntaxError(
            "amount must be an integer of minor units or a decimal string,"
            f" not {type(raw).__name__}"
        )
    if isinstance(raw, int):
        if abs(raw) >= 10**_DIGITS_MAX:
            raise AmountSyntaxError(f"amount has more than {_DIGITS_MAX} digits")
        return raw
    match = _DECIMAL.fullmatch(raw)
    if match is None:
        raise AmountSyntaxError(
            f"amount {raw[:40]!r} is not a plain decimal string (digits, optional '.', no exponent)"
        )
    sign, whole, fraction = match.group(1), match.group(2), match.group(3) or ""
    exponent = CURRENCY_EXPONENTS.get(currency)
    if exponent is None:
        raise AmountSyntaxError(f"unknown currency {currency!r}")
    if len(fraction) > exponent:
        raise AmountSyntaxError(
            f"amount {raw!r} has {len(fraction)} fraction digits; {currency} has {exponent}"
        )
    minor = int(whole) * 10**exponent + int(fraction.ljust(exponent, "0") or "0")
    return -minor if sign else minor


def format_amount(minor: int, currency: str) -> str:
    """Render integer minor units as a decimal string: format_amount(1250, "USD") == "12.50"."""
    exponent = exponent_of(currency)
    if exponent == 0:
        return str(minor)
    sign = "-" if minor < 0 else ""
    whole, fraction = divmod(abs(minor), 10**exponent)
    return f"{sign}{whole}.{fraction:0{exponent}d}"
