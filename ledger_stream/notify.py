"""Notifications for webhooks: the message the read side produces, how a delivery is signed
(and checked by its receiver), and how long a failed delivery waits before the next attempt.

Pure: no I/O, no clock. The notifier agent (agents/notifier.py) does the sending.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from ledger_stream.messages import WriterMessage

NotificationType = Literal[
    "money_received", "money_sent", "low_balance", "limit_reached", "hold_expired", "invoice_paid"
]

SIGNATURE_HEADER = "Ledger-Signature"
NOTIFICATION_ID_HEADER = "Ledger-Notification-Id"
SIGNATURE_SCHEME = "v1"  # HMAC-SHA256; a later scheme would add v2 beside it


class Notification(WriterMessage, frozen=True, kw_only=True):
    """What happened to an account, for its webhooks; keyed by `account` on
    `<prefix>notifications`. The webhook's body is this record's JSON, as it is on the topic."""

    id: Annotated[
        str,
        Meta(
            description="Unique and deterministic (e.g. <entry_id>:money_received): a "
            "re-delivered notification has the same id, and receivers deduplicate on it"
        ),
    ]
    type: Annotated[NotificationType, Meta(description="What happened")]
    account: Annotated[str, Meta(description="The account it is about; the record key")]
    currency: Annotated[str, Meta(description="ISO 4217 code of amount and balance")] = ""
    amount: Annotated[
        int | None, Meta(description="Minor units moved, held or released, when money moved")
    ] = None
    balance: Annotated[
        int | None, Meta(description="The account's posted balance after it, in minor units")
    ] = None
    entry_id: Annotated[str | None, Meta(description="The journal event that caused it")] = None
    command_id: Annotated[str | None, Meta(description="The command that caused it")] = None
    timestamp_ms: Annotated[
        int, Meta(description="The journal event's timestamp_ms (its command record's time)")
    ]
    details: Annotated[
        dict[str, Any] | None,
        Meta(
            description="By type: counterparty, threshold, limit figures, invoice_id, hold_id, ..."
        ),
    ] = None


class Undelivered(WriterMessage, frozen=True, omit_defaults=False):
    """A notification a webhook did not take after every attempt; keyed by the notification
    id on `<prefix>notifications.undelivered`."""

    notification: Annotated[
        msgspec.Raw,
        Meta(
            description="The notification as it was read (a record that is not one: its "
            "value as it was, or as a string when it is not JSON)"
        ),
    ]
    url: Annotated[str | None, Meta(description="The webhook that did not take it")]
    attempts: Annotated[int, Meta(ge=0, description="Deliveries tried (0: not a notification)")]
    last_error: Annotated[str, Meta(description="Why the last attempt failed")]


def sign(secret: bytes, timestamp_s: int, body: bytes) -> str:
    """The `Ledger-Signature` header of a delivery of `body` at `timestamp_s` (Unix seconds).

    Stripe's scheme: `t=<timestamp_s>,v1=<hex>`, where hex is the HMAC-SHA256, keyed with
    the webhook secret, of the timestamp, a dot, and the body's bytes as sent. The timestamp
    is signed too, so an old delivery replayed later is refused for its age (`verify`).

    >>> sign(b"secret", 1700000000, b'{"id":"e1:0:money_received"}')[:15]
    't=1700000000,v1'
    """
    return f"t={timestamp_s},{SIGNATURE_SCHEME}={_digest(secret, timestamp_s, body)}"


def verify(secret: bytes, header: str, body: bytes, tolerance_s: float, now_s: float) -> bool:
    """Whether `header` is a valid signature of `body` with `secret`, made at most
    `tolerance_s` away from `now_s`. Compares in constant time; any `v1` may match (a sender
    rotating its secret signs with both).

    >>> header = sign(b"secret", 1700000000, b"{}")
    >>> verify(b"secret", header, b"{}", tolerance_s=300, now_s=1700000060)
    True
    >>> verify(b"secret", header, b"{ }", tolerance_s=300, now_s=1700000060)
    False
    >>> verify(b"secret", header, b"{}", tolerance_s=300, now_s=1700000600)
    False
    """
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == SIGNATURE_SCHEME:
            signatures.append(value)
    if timestamp is None or not signatures or abs(now_s - timestamp) > tolerance_s:
        return False
    expected = _digest(secret, timestamp, body)
    # Every candidate is compared, so the time taken does not tell which one matched.
    matched = [hmac.compare_digest(expected, signature) for signature in signatures]
    return any(matched)


def _digest(secret: bytes, timestamp_s: int, body: bytes) -> str:
    return hmac.new(secret, f"{timestamp_s}.".encode() + body, hashlib.sha256).hexdigest()


# 2.0 ** 1023 is the largest power of two a float holds; past it the ceiling is max_s anyway.
_DOUBLINGS_MAX = 1023


def backoff_s(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Seconds to wait after failed attempt number `attempt` (from 1): exponential backoff
    with full jitter (AWS's), uniform between 0 and min(max_s, base_s * 2 ** (attempt - 1)).
    The jitter spreads out receivers' retries after an outage.

    >>> rng = random.Random(7)
    >>> [round(backoff_s(n, 0.5, 30.0, rng), 3) for n in (1, 2, 3, 10)]
    [0.162, 0.151, 1.302, 2.173]
    >>> max(backoff_s(10, 0.5, 30.0, rng) for _ in range(1000)) <= 30.0
    True
    """
    assert attempt >= 1, attempt
    assert base_s >= 0 and max_s >= 0, (base_s, max_s)
    ceiling_s = min(max_s, base_s * 2.0 ** min(attempt - 1, _DOUBLINGS_MAX))
    wait_s = rng.uniform(0, ceiling_s)
    assert 0 <= wait_s <= max_s, wait_s
    return wait_s
