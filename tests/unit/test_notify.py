"""Notifications: their signature (made, checked, refused when tampered with or old), the
backoff between deliveries, the message itself, and the webhook settings' errors."""

from __future__ import annotations

import doctest
import hashlib
import hmac
import random

import msgspec
import pytest
from pydantic import ValidationError

from ledger_stream import notify
from ledger_stream.messages import from_json, to_json
from ledger_stream.notify import Notification, Undelivered, backoff_s, sign, verify
from ledger_stream.settings import Settings

SECRET = b"whsec-test"
NOW_S = 1_700_000_000
BODY = to_json(
    Notification(
        id="c1:0:money_received",
        type="money_received",
        account="alice",
        currency="EUR",
        amount=1250,
        balance=5000,
        entry_id="c1:0",
        command_id="c1",
        timestamp_ms=NOW_S * 1000,
        details={"counterparty": "bob"},
    )
)


def test_docstring_examples_hold() -> None:
    failed, attempted = doctest.testmod(notify)
    assert attempted > 0 and failed == 0


# -- signature ------------------------------------------------------------------------


def test_a_signature_verifies_with_its_secret_body_and_time() -> None:
    header = sign(SECRET, NOW_S, BODY)
    assert header.startswith(f"t={NOW_S},v1=")
    assert verify(SECRET, header, BODY, tolerance_s=300, now_s=NOW_S + 10)


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET, f"{NOW_S}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, NOW_S, BODY) == f"t={NOW_S},v1={expected}"


_GOOD = sign(SECRET, NOW_S, BODY)
_DIGEST = _GOOD.split("v1=")[1]


@pytest.mark.parametrize(
    ("case", "secret", "header", "body", "now_s"),
    [
        ("tampered body", SECRET, _GOOD, BODY.replace(b"1250", b"9250"), NOW_S),
        ("body with a byte more", SECRET, _GOOD, BODY + b" ", NOW_S),
        ("other secret", b"whsec-other", _GOOD, BODY, NOW_S),
        ("older than the tolerance", SECRET, _GOOD, BODY, NOW_S + 301),
        ("newer than the tolerance", SECRET, _GOOD, BODY, NOW_S - 301),
        ("timestamp changed", SECRET, f"t={NOW_S + 1},v1={_DIGEST}", BODY, NOW_S),
        ("no timestamp", SECRET, f"v1={_DIGEST}", BODY, NOW_S),
        ("timestamp not a number", SECRET, f"t=soon,v1={_DIGEST}", BODY, NOW_S),
        ("no signature", SECRET, f"t={NOW_S}", BODY, NOW_S),
        ("other scheme only", SECRET, f"t={NOW_S},v0={_DIGEST}", BODY, NOW_S),
        ("digest cut short", SECRET, f"t={NOW_S},v1={_DIGEST[:-1]}", BODY, NOW_S),
        ("empty header", SECRET, "", BODY, NOW_S),
    ],
)
def test_a_signature_is_refused(
    case: str, secret: bytes, header: str, body: bytes, now_s: int
) -> None:
    assert not verify(secret, header, body, tolerance_s=300, now_s=now_s), case


def test_any_v1_may_match_while_a_secret_is_rotated() -> None:
    old = sign(b"whsec-old", NOW_S, BODY).split("v1=")[1]
    header = f"t={NOW_S},v1={old},v1={_DIGEST}"
    assert verify(SECRET, header, BODY, tolerance_s=300, now_s=NOW_S)
    assert verify(b"whsec-old", header, BODY, tolerance_s=300, now_s=NOW_S)


def test_a_signature_at_the_edge_of_the_tolerance_verifies() -> None:
    assert verify(SECRET, _GOOD, BODY, tolerance_s=300, now_s=NOW_S + 300)


# -- backoff ---------------------------------------------------------------------------


class Highest(random.Random):
    """A random source that always draws the top of the range: the backoff's ceiling."""

    def random(self) -> float:
        return 1.0


class Lowest(random.Random):
    def random(self) -> float:
        return 0.0


@pytest.mark.parametrize(
    ("attempt", "ceiling_s"),
    [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (6, 16.0), (7, 30.0), (100, 30.0), (5000, 30.0)],
)
def test_the_backoff_ceiling_doubles_from_base_up_to_max(attempt: int, ceiling_s: float) -> None:
    assert backoff_s(attempt, 0.5, 30.0, Highest()) == ceiling_s
    assert backoff_s(attempt, 0.5, 30.0, Lowest()) == 0.0


def test_the_backoff_is_jittered_over_the_whole_range_and_never_above_max() -> None:
    rng = random.Random(1)
    for attempt in range(1, 40):
        ceiling_s = min(30.0, 0.5 * 2 ** (attempt - 1))
        waits = [backoff_s(attempt, 0.5, 30.0, rng) for _ in range(200)]
        assert all(0 <= wait <= ceiling_s for wait in waits)
        # Full jitter: the draws spread over the range, not bunched at its top.
        assert min(waits) < ceiling_s / 4 and max(waits) > ceiling_s * 3 / 4


def test_the_backoff_grows_on_average() -> None:
    rng = random.Random(2)
    means = [sum(backoff_s(n, 0.5, 30.0, rng) for _ in range(500)) / 500 for n in (1, 3, 5, 7)]
    assert means == sorted(means)


def test_the_backoff_is_deterministic_with_a_seeded_random_source() -> None:
    first = [backoff_s(n, 0.5, 30.0, random.Random(42)) for n in range(1, 10)]
    again = [backoff_s(n, 0.5, 30.0, random.Random(42)) for n in range(1, 10)]
    assert first == again


def test_a_max_below_the_base_bounds_every_wait() -> None:
    assert backoff_s(1, 5.0, 1.0, Highest()) == 1.0


# -- the messages ----------------------------------------------------------------------


def test_a_notification_round_trips_without_its_defaults() -> None:
    notification = Notification(
        id="c2:0:low_balance", type="low_balance", account="bob", timestamp_ms=1
    )
    raw = to_json(notification)
    assert raw == b'{"id":"c2:0:low_balance","type":"low_balance","account":"bob","timestamp_ms":1}'
    assert from_json(raw, Notification) == notification
    assert from_json(BODY, Notification).details == {"counterparty": "bob"}


@pytest.mark.parametrize(
    "raw",
    [
        b'{"id":"x","type":"money_lost","account":"a","timestamp_ms":1}',
        b'{"id":"x","type":"money_sent","account":"a"}',
        b'{"id":"x","type":"money_sent","account":"a","timestamp_ms":1,"extra":1}',
        b'{"id":"x","type":"money_sent","account":"a","timestamp_ms":1,"amount":"1.00"}',
    ],
    ids=["unknown type", "no timestamp", "unknown field", "amount not minor units"],
)
def test_a_record_that_is_not_a_notification_is_refused(raw: bytes) -> None:
    with pytest.raises(msgspec.ValidationError):
        from_json(raw, Notification)


def test_an_undelivered_record_carries_the_notification_as_it_was() -> None:
    raw = to_json(
        Undelivered(
            notification=msgspec.Raw(BODY), url="http://h/p", attempts=3, last_error="HTTP 500"
        )
    )
    read = from_json(raw, Undelivered)
    assert bytes(read.notification) == BODY
    assert (read.url, read.attempts, read.last_error) == ("http://h/p", 3, "HTTP 500")


# -- settings --------------------------------------------------------------------------


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)


@pytest.mark.parametrize(
    "urls",
    [
        "ftp://hooks.example/in",
        "hooks.example/in",
        "http:///in",
        "http://hooks.example:99999/in",
        "http://user:pass@hooks.example/in",
        "http://hooks.example/in#part",
        "http://hooks.example/in,",
        "http://hooks.example/in,,https://other.example/in",
        "http://hooks.example/in path",
    ],
)
def test_a_bad_webhook_url_is_refused_naming_the_variable(urls: str) -> None:
    with pytest.raises(ValidationError, match="LEDGER_WEBHOOK_URLS"):
        settings(webhook_urls=urls, webhook_secret="s")


@pytest.mark.parametrize("secret", [None, ""])
def test_webhooks_without_a_secret_are_refused_naming_the_variable(secret: str | None) -> None:
    with pytest.raises(ValidationError, match="LEDGER_WEBHOOK_SECRET"):
        settings(webhook_urls="https://hooks.example/in", webhook_secret=secret)


def test_webhooks_are_read_from_the_comma_separated_list() -> None:
    read = settings(
        webhook_urls=" https://hooks.example/in , http://127.0.0.1:8080/ledger?k=1",
        webhook_secret="s",
    )
    assert read.webhooks == ["https://hooks.example/in", "http://127.0.0.1:8080/ledger?k=1"]
    assert settings().webhooks == []


@pytest.mark.parametrize("attempts", [0, 101])
def test_webhook_attempts_are_bounded(attempts: int) -> None:
    with pytest.raises(ValidationError, match="webhook_attempts_max"):
        settings(webhook_attempts_max=attempts)


def test_the_secret_is_not_shown() -> None:
    read = settings(webhook_urls="https://hooks.example/in", webhook_secret="whsec-hidden")
    assert "whsec-hidden" not in repr(read)
