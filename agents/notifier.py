"""The notifier: delivers every notification of `<prefix>notifications` to every webhook,
signed, at least once, in order per partition.

Per notification, in this order, written down here and nowhere else:
1. POST the record's value, unchanged, to each webhook (the webhooks side by side), signed
   (`ledger_stream.notify.sign`); a 2xx answer is a delivery;
2. anything else (another status, a timeout, a connection error) is tried again after a
   growing, jittered wait (`backoff_s`), up to `webhook_attempts_max` attempts in all; then
   the notification is written to `<prefix>notifications.undelivered` and the broker's ack
   awaited;
3. only once every webhook took it or it was written there, its offset is acknowledged.
A stop or a crash before step 3 delivers it again: receivers deduplicate by its id.

A partition's fetched records are delivered one after the other by a task of their own,
partitions side by side; the partition is paused meanwhile, so the consumer goes on polling
(and stays in its group) however long a webhook keeps failing.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Iterable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata
from prometheus_client import Counter

import ledger_stream.kafka.group  # noqa: F401  (leave the group properly on the embedded broker)
from ledger_stream.errors import BrokerUnavailable, ConfigurationError
from ledger_stream.kafka.retry import retried, started
from ledger_stream.kafka.security import connection_options
from ledger_stream.logs import RepeatFolder
from ledger_stream.messages import from_json, to_json
from ledger_stream.notify import (
    NOTIFICATION_ID_HEADER,
    SIGNATURE_HEADER,
    Notification,
    Undelivered,
    backoff_s,
    sign,
)
from ledger_stream.settings import Settings
from ledger_stream.topics import TopicNames

logger = logging.getLogger(__name__)
# While a webhook is down every notification retries: one line per interval, saying how
# many like it were folded.
retries_logger = logging.getLogger(f"{__name__}.retries")
retries_logger.addFilter(RepeatFolder(prefix=retries_logger.name))

DELIVERED = Counter(
    "ledger_notifications_delivered_total", "Notifications a webhook took (2xx), per webhook"
)
ATTEMPTS_FAILED = Counter(
    "ledger_notification_attempts_failed_total",
    "Deliveries that failed: a status other than 2xx, a timeout or a connection error",
)
UNDELIVERED = Counter(
    "ledger_notifications_undelivered_total",
    "Notifications written to the undelivered topic, per webhook that did not take them",
)

POLL_MS = 200
RECORDS_PER_POLL_MAX = 100
ACKNOWLEDGE_TIMEOUT_S = 30.0  # aiokafka retries a commit for as long as the broker is away
ANSWER_CHARS_MAX = 200  # of a refusing webhook's answer, kept in the error


class Notifier:
    def __init__(self, settings: Settings) -> None:
        secret = settings.webhook_secret
        if not settings.webhooks or secret is None:
            raise ConfigurationError(
                "the notifier needs webhooks (LEDGER_WEBHOOK_URLS) and the secret that signs "
                "their deliveries (LEDGER_WEBHOOK_SECRET)"
            )
        self.settings = settings
        self.topics = TopicNames.from_settings(settings)
        self.group_id = f"{settings.topic_prefix}notifier"
        self.urls = settings.webhooks
        self.secret = secret.get_secret_value().encode()
        self.rng = random.Random()
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.session: aiohttp.ClientSession | None = None
        # Per partition being delivered: its task; per partition fetched from: the offset
        # before which every record is settled (step 3), and the offset acknowledged.
        self.delivering: dict[TopicPartition, asyncio.Task[None]] = {}
        self.settled: dict[TopicPartition, int] = {}
        self.acknowledged: dict[TopicPartition, int] = {}

    # -- running ------------------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        """Deliver until `stopping` is set. Deliveries under way then are dropped, not
        acknowledged: they are made again when a notifier runs next."""
        settings = self.settings
        producer = await started(
            lambda: AIOKafkaProducer(
                bootstrap_servers=settings.bootstrap_servers,
                acks="all",
                linger_ms=0,
                **connection_options(settings),
            ),
            settings.bootstrap_servers,
            settings.connect_attempts_max,
            _stop,
        )
        try:
            consumer = await started(
                self._new_consumer, settings.bootstrap_servers, settings.connect_attempts_max, _stop
            )
        except BaseException:
            await producer.stop()
            raise
        self.producer, self.consumer = producer, consumer
        session = self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=settings.webhook_timeout_s)
        )
        try:
            consumer.subscribe([self.topics.notifications], listener=_Listener(self))
            logger.info(
                "delivering %s to %d webhook(s): %s",
                self.topics.notifications,
                len(self.urls),
                ", ".join(_shown(url) for url in self.urls),
            )
            while not stopping.is_set():
                fetched = await consumer.getmany(
                    timeout_ms=POLL_MS, max_records=RECORDS_PER_POLL_MAX
                )
                for tp, records in fetched.items():
                    if records:
                        self._start(tp, records)
                self._resume_finished()
                await self._acknowledge(list(self.settled))
        finally:
            await self.give_up(set(self.delivering) | set(self.settled))
            await consumer.stop()  # leaves the group: the partitions move at once
            await producer.stop()
            await session.close()
        logger.info("notifier stopped")

    def _new_consumer(self) -> AIOKafkaConsumer:
        settings = self.settings
        return AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            partition_assignment_strategy=(RangePartitionAssignor,),
            session_timeout_ms=int(settings.session_timeout_s * 1000),
            rebalance_timeout_ms=int(settings.rebalance_timeout_s * 1000),
            heartbeat_interval_ms=int(settings.heartbeat_interval_s * 1000),
            fetch_max_wait_ms=settings.fetch_wait_ms,
            **connection_options(settings),
        )

    def _start(self, tp: TopicPartition, records: list[ConsumerRecord[Any, Any]]) -> None:
        """Deliver a partition's fetched records; fetch no more of it until they are done."""
        assert tp not in self.delivering, tp  # paused while delivering
        consumer = self.consumer
        assert consumer is not None
        consumer.pause(tp)
        if tp not in self.settled:
            self.settled[tp] = self.acknowledged[tp] = records[0].offset
        self.delivering[tp] = asyncio.create_task(self._deliver_records(tp, records))

    def _resume_finished(self) -> None:
        """Fetch again from partitions whose records are all settled. A task that failed
        (the undelivered topic could not be written) stops the notifier."""
        consumer = self.consumer
        assert consumer is not None
        for tp, task in list(self.delivering.items()):
            if task.done():
                del self.delivering[tp]
                task.result()
                consumer.resume(tp)

    async def give_up(self, partitions: set[TopicPartition]) -> None:
        """Stop delivering `partitions` (revoked, or the notifier stopping): drop deliveries
        under way, and acknowledge what was settled before."""
        tasks = [self.delivering.pop(tp) for tp in partitions if tp in self.delivering]
        for task in tasks:
            task.cancel()
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, Exception):
                logger.warning("a partition's deliveries failed while given up: %r", outcome)
        await self._acknowledge([tp for tp in partitions if tp in self.settled])
        for tp in partitions:
            self.settled.pop(tp, None)
            self.acknowledged.pop(tp, None)

    async def _acknowledge(self, partitions: list[TopicPartition]) -> None:
        """Step 3: commit the settled offsets that moved. A failed commit (a rebalance under
        way, the broker away) only means those notifications are delivered again."""
        consumer = self.consumer
        assert consumer is not None
        offsets = {
            tp: self.settled[tp] for tp in partitions if self.settled[tp] > self.acknowledged[tp]
        }
        if not offsets:
            return
        try:
            await asyncio.wait_for(
                consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in offsets.items()}),
                ACKNOWLEDGE_TIMEOUT_S,
            )
        except (TimeoutError, KafkaError) as error:
            retries_logger.warning(
                "could not acknowledge notification offsets (%r); they will be delivered "
                "again if this notifier stops first",
                error,
            )
            return
        self.acknowledged.update(offsets)

    # -- one partition, one notification ------------------------------------------------

    async def _deliver_records(
        self, tp: TopicPartition, records: list[ConsumerRecord[Any, Any]]
    ) -> None:
        for record in records:
            await self._deliver_record(record)
            self.settled[tp] = record.offset + 1

    async def _deliver_record(self, record: ConsumerRecord[Any, Any]) -> None:
        """Steps 1 and 2 for every webhook; returns once each took it or it was written to
        the undelivered topic. A record that is not a notification is written there as is."""
        body: bytes = record.value or b""
        try:
            notification = from_json(body, Notification)
        except (msgspec.ValidationError, msgspec.DecodeError) as error:
            origin = f"{record.topic}/{record.partition}/{record.offset}"
            await self._write_undelivered(
                origin, _as_json(body), None, 0, f"not a notification ({error}) at {origin}"
            )
            return
        await _every(self._deliver(url, notification.id, body) for url in self.urls)

    async def _deliver(self, url: str, notification_id: str, body: bytes) -> None:
        attempts_max = self.settings.webhook_attempts_max
        attempt = 1
        while True:
            error = await self._post(url, notification_id, body)
            if error is None:
                DELIVERED.inc()
                return
            ATTEMPTS_FAILED.inc()
            if attempt == attempts_max:
                break
            wait_s = backoff_s(
                attempt,
                self.settings.webhook_backoff_s,
                self.settings.webhook_backoff_max_s,
                self.rng,
            )
            retries_logger.warning(
                "notification %s not delivered to %s (%s); attempt %d of %d failed, next in %.2f s",
                notification_id,
                _shown(url),
                error,
                attempt,
                attempts_max,
                wait_s,
            )
            await asyncio.sleep(wait_s)
            attempt += 1
        await self._write_undelivered(notification_id, body, url, attempts_max, error)

    async def _post(self, url: str, notification_id: str, body: bytes) -> str | None:
        """One delivery, signed as it is sent: None when the webhook took it, else why not."""
        session = self.session
        assert session is not None
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.secret, int(time.time()), body),
            NOTIFICATION_ID_HEADER: notification_id,
        }
        try:
            async with session.post(
                url, data=body, headers=headers, allow_redirects=False
            ) as response:
                if 200 <= response.status < 300:
                    return None
                answer = await response.content.read(ANSWER_CHARS_MAX)
                said = answer.decode("utf-8", "replace").strip()
                return f"HTTP {response.status}" + (f": {said}" if said else "")
        except TimeoutError:
            return f"no answer within {self.settings.webhook_timeout_s} s"
        except aiohttp.ClientError as error:
            return f"{type(error).__name__}: {error}"

    async def _write_undelivered(
        self, key: str, notification: bytes, url: str | None, attempts: int, last_error: str
    ) -> None:
        """Step 2's end: the notification on the undelivered topic, acked; Kafka refusing
        it stops the notifier without acknowledging the notification."""
        producer = self.producer
        assert producer is not None
        topic = self.topics.undelivered
        value = to_json(
            Undelivered(
                notification=msgspec.Raw(notification),
                url=url,
                attempts=attempts,
                last_error=last_error,
            )
        )
        attempts_max = self.settings.send_attempts_max
        try:
            await retried(
                lambda: producer.send_and_wait(topic, value, key=key.encode()),
                failure=f"could not write notification {key} to {topic}",
                attempts_max=attempts_max,
                errors=(KafkaError,),
            )
        except KafkaError as error:
            raise BrokerUnavailable(
                f"could not write notification {key!r} to {topic} after {attempts_max} "
                f"attempts ({error!r}); the notifier stops without acknowledging it, so it is "
                "delivered again when a notifier runs next"
            ) from error
        UNDELIVERED.inc()
        logger.warning(
            "notification %s not delivered to %s after %d attempts (%s); written to %s",
            key,
            _shown(url) if url is not None else "any webhook",
            attempts,
            last_error,
            topic,
        )


class _Listener(ConsumerRebalanceListener):
    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.notifier.give_up(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        numbers = sorted(tp.partition for tp in assigned)
        logger.info("delivering notifications of partitions %s", numbers or "none")


async def _every(deliveries: Iterable[Awaitable[None]]) -> None:
    """Await all side by side; when one fails, the others are cancelled, then it is raised."""
    tasks = [asyncio.ensure_future(delivery) for delivery in deliveries]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _as_json(value: bytes) -> bytes:
    """`value` if it is JSON, else its text as a JSON string: to embed it in a record."""
    try:
        msgspec.json.decode(value)
    except msgspec.DecodeError:
        return msgspec.json.encode(value.decode("utf-8", "replace"))
    return value


def _shown(url: str) -> str:
    """A webhook's URL for a log line: without its query, which may hold a token."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


async def _stop(client: AIOKafkaConsumer | AIOKafkaProducer) -> None:
    await client.stop()
