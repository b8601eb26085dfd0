"""The notifier on the embedded broker, delivering to a real local HTTP server that checks the
signature of every request: a webhook that fails at first takes every notification in the
end, in order per account; one that never takes them gets each exactly `webhook_attempts_max`
attempts, and the undelivered topic gets each notification; a notifier stopped before a
webhook answered delivers the notification again when it runs next.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import pytest
from aiohttp import web
from aiokafka import AIOKafkaProducer
from prometheus_client import REGISTRY

from agents.notifier import Notifier
from ledger_stream.kafka.broker import EmbeddedBroker
from ledger_stream.kafka.reading import read_topic
from ledger_stream.local import EMBEDDED_FETCH_WAIT_MS
from ledger_stream.messages import from_json, to_json
from ledger_stream.notify import Notification, Undelivered, verify
from ledger_stream.partitioning import partition_of
from ledger_stream.settings import Settings
from ledger_stream.topics import TopicNames, ensure_topics

SECRET = "whsec-integration"
PARTITIONS = 4
NOTIFICATIONS = 12
ACCOUNTS = 5  # fewer than the notifications: an account gets several, in order
WAIT_S = 120.0  # a generous bound on every wait; nothing is asserted about durations
POLL_S = 0.05


class Webhook:
    """A receiver: checks every request's signature, headers and body, counts the attempts
    of each notification, answers the first `failures` of them 500 (every one, with None)
    and 200 afterwards. With `hold_first`, the first attempt of each notification gets no
    answer until `release` is set, and is not taken."""

    def __init__(self, failures: int | None, *, hold_first: bool = False) -> None:
        self.failures = failures
        self.hold_first = hold_first
        self.attempts: Counter[str] = Counter()
        self.taken: list[str] = []  # ids answered 200, in the order they were
        self.refused: list[str] = []  # requests that failed a check
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        notification_id = request.headers.get("Ledger-Notification-Id", "")
        problem = _problem(request, body, notification_id)
        if problem is not None:
            self.refused.append(f"{notification_id}: {problem}")
            return web.Response(status=400, text=problem)
        self.attempts[notification_id] += 1
        attempt = self.attempts[notification_id]
        if self.hold_first and attempt == 1:
            self.arrived.set()
            await self.release.wait()
            return web.Response(status=200)  # to a notifier that has stopped waiting for it
        if self.failures is None or attempt <= self.failures:
            return web.Response(status=500, text="failing on purpose")
        self.taken.append(notification_id)
        return web.Response(status=200)


def _problem(request: web.Request, body: bytes, notification_id: str) -> str | None:
    """What is wrong with a delivery, None when nothing is."""
    signature = request.headers.get("Ledger-Signature", "")
    if not verify(SECRET.encode(), signature, body, tolerance_s=300, now_s=time.time()):
        return f"bad signature {signature!r}"
    if request.content_type != "application/json":
        return f"content type {request.content_type}"
    if from_json(body, Notification).id != notification_id:
        return "the id header is not the body's id"
    return None


@asynccontextmanager
async def serving(webhook: Webhook) -> AsyncIterator[str]:
    """The webhook on a free port of 127.0.0.1; yields its URL."""
    app = web.Application()
    app.router.add_post("/hooks/ledger", webhook.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/hooks/ledger"
    finally:
        webhook.release.set()
        await runner.cleanup()


async def webhook_ledger(broker: EmbeddedBroker, url: str, **settings: Any) -> Settings:
    """A ledger of its own (fresh topic prefix, topics created) delivering to `url`."""
    ledger = Settings(
        _env_file=None,
        bootstrap_servers=broker.bootstrap,
        topic_prefix=f"t{uuid.uuid4().hex[:12]}.",
        partitions=PARTITIONS,
        fetch_wait_ms=EMBEDDED_FETCH_WAIT_MS,
        session_timeout_s=6,
        rebalance_timeout_s=5,
        heartbeat_interval_s=1,
        webhook_urls=url,
        webhook_secret=SECRET,
        webhook_backoff_s=0.01,
        webhook_backoff_max_s=0.05,
        **settings,
    )
    await ensure_topics(ledger)
    return ledger


def notifications(count: int) -> list[Notification]:
    test = uuid.uuid4().hex[:8]
    return [
        Notification(
            id=f"{test}-c{n}:0:money_received",
            type="money_received",
            account=f"acct-{test}-{n % ACCOUNTS}",
            currency="EUR",
            amount=100 + n,
            balance=1000 + n,
            entry_id=f"{test}-c{n}:0",
            command_id=f"{test}-c{n}",
            timestamp_ms=1_700_000_000_000 + n,
            details={"counterparty": "bank"},
        )
        for n in range(count)
    ]


async def produce(settings: Settings, sent: list[Notification | tuple[str, bytes]]) -> None:
    """Each notification (or (account, raw value)) to its account's partition of the
    notifications topic, in order."""
    topic = TopicNames.from_settings(settings).notifications
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    await producer.start()
    try:
        for item in sent:
            account, value = (
                (item.account, to_json(item)) if isinstance(item, Notification) else item
            )
            await producer.send_and_wait(
                topic,
                value,
                key=account.encode(),
                partition=partition_of(account, settings.partitions),
            )
    finally:
        await producer.stop()


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[asyncio.Task[None]]:
    """A notifier running as a task; stopped (and its own failure raised) on the way out."""
    stopping = asyncio.Event()
    task = asyncio.create_task(Notifier(settings).run(stopping))
    try:
        yield task
    finally:
        stopping.set()
        await asyncio.wait_for(task, WAIT_S)


async def until(condition: Callable[[], bool], notifier: asyncio.Task[None], what: str) -> None:
    """Poll `condition` up to WAIT_S; a notifier that ended meanwhile fails the wait at once."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if notifier.done():
            notifier.result()
            pytest.fail(f"the notifier stopped while waiting for {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"waited {WAIT_S} s for {what}")
        await asyncio.sleep(POLL_S)


async def undelivered(settings: Settings) -> list[Undelivered]:
    topic = TopicNames.from_settings(settings).undelivered
    return [
        from_json(record.value, Undelivered)
        async for records in read_topic(settings.bootstrap_servers, topic)
        for record in records
    ]


async def polled(
    read: Callable[[], Awaitable[list[Undelivered]]],
    count: int,
    notifier: asyncio.Task[None],
) -> None:
    """Read until `count` records are there, up to WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while len(await read()) < count:
        if notifier.done():
            notifier.result()
            pytest.fail("the notifier stopped before the undelivered topic filled")
        if time.monotonic() > deadline:
            pytest.fail(f"fewer than {count} undelivered notifications within {WAIT_S} s")
        await asyncio.sleep(0.25)


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def test_every_notification_reaches_a_webhook_that_fails_at_first_signed_in_order(
    broker: EmbeddedBroker,
) -> None:
    webhook = Webhook(failures=2)
    sent = notifications(NOTIFICATIONS)
    delivered_before = metric("ledger_notifications_delivered_total")
    failed_before = metric("ledger_notification_attempts_failed_total")
    async with serving(webhook) as url:
        ledger = await webhook_ledger(broker, url)
        await produce(ledger, sent)
        async with running(ledger) as notifier:
            await until(
                lambda: set(webhook.taken) >= {n.id for n in sent},
                notifier,
                "every notification to be taken",
            )
    assert webhook.refused == []
    assert all(webhook.attempts[n.id] >= 3 for n in sent)  # two 500s before each 200
    first_taken = list(dict.fromkeys(webhook.taken))
    for account in {n.account for n in sent}:
        ordered = [n.id for n in sent if n.account == account]
        assert [i for i in first_taken if i in ordered] == ordered, account
    assert await undelivered(ledger) == []
    assert metric("ledger_notifications_delivered_total") - delivered_before >= NOTIFICATIONS
    assert metric("ledger_notification_attempts_failed_total") - failed_before >= 2 * NOTIFICATIONS


async def test_a_webhook_that_never_takes_them_gets_each_attempts_max_times_then_undelivered(
    broker: EmbeddedBroker,
) -> None:
    webhook = Webhook(failures=None)
    sent = notifications(NOTIFICATIONS)
    failed_before = metric("ledger_notification_attempts_failed_total")
    undelivered_before = metric("ledger_notifications_undelivered_total")
    async with serving(webhook) as url:
        ledger = await webhook_ledger(broker, url, webhook_attempts_max=3)
        await produce(ledger, sent)
        async with running(ledger) as notifier:
            await polled(lambda: undelivered(ledger), NOTIFICATIONS, notifier)
    letters = await undelivered(ledger)
    assert webhook.refused == []
    assert webhook.taken == []
    assert {n.id: webhook.attempts[n.id] for n in sent} == {n.id: 3 for n in sent}
    assert sorted(from_json(letter.notification, Notification).id for letter in letters) == sorted(
        n.id for n in sent
    )
    by_id = {n.id: n for n in sent}
    for letter in letters:
        notification = from_json(letter.notification, Notification)
        assert notification == by_id[notification.id]
        assert (letter.url, letter.attempts) == (url, 3)
        assert letter.last_error.startswith("HTTP 500")
    assert metric("ledger_notification_attempts_failed_total") - failed_before == 3 * NOTIFICATIONS
    assert metric("ledger_notifications_undelivered_total") - undelivered_before == NOTIFICATIONS


async def test_a_notifier_stopped_before_the_webhook_answered_delivers_it_again(
    broker: EmbeddedBroker,
) -> None:
    webhook = Webhook(failures=0, hold_first=True)
    [held] = notifications(1)
    async with serving(webhook) as url:
        ledger = await webhook_ledger(broker, url)
        await produce(ledger, [held])
        async with running(ledger) as first:
            await until(webhook.arrived.is_set, first, "the first attempt")
        # Stopped while the webhook holds its answer: nothing taken, nothing acknowledged.
        assert webhook.taken == []
        async with running(ledger) as second:
            await until(lambda: held.id in webhook.taken, second, "the notification to be taken")
    assert webhook.refused == []
    assert webhook.attempts[held.id] >= 2
    assert await undelivered(ledger) == []


async def test_a_record_that_is_not_a_notification_is_set_aside_and_the_next_ones_delivered(
    broker: EmbeddedBroker,
) -> None:
    webhook = Webhook(failures=0)
    before, after = notifications(2)
    after = msgspec.structs.replace(after, account=before.account)  # one partition, in order
    garbage = b"not json at all"
    async with serving(webhook) as url:
        ledger = await webhook_ledger(broker, url)
        await produce(ledger, [before, (before.account, garbage), after])
        async with running(ledger) as notifier:
            await until(lambda: after.id in webhook.taken, notifier, "the notification after")
    assert webhook.taken == [before.id, after.id]
    assert webhook.refused == []
    [letter] = await undelivered(ledger)
    assert (letter.url, letter.attempts) == (None, 0)
    assert msgspec.json.decode(letter.notification) == garbage.decode()
    assert letter.last_error.startswith("not a notification")
