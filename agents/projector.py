"""The read side's agent: folds the journal partitions its worker writes into read models
(ledger_stream/readmodel.py), and publishes the notifications and anomaly flags they bring.

Each worker follows the partitions its writer owns, so reads of an account are answered by
the worker that writes it. A fold is idempotent by journal `seq` (an event re-sent after a
writer's crash is skipped), and what it writes goes to the store in one batch with the
offsets it folded up to. Notifications and flags are published before that batch is
written, so a crash between the two publishes them again, under the same ids (at least
once). A worker that takes a partition over publishes only for events after the last one its
previous owner published for (read back from the topics), so a refold from offset 0 does not
notify anyone twice about old events.

`limit_reached` notifications come from rejected commands, which the journal does not hold:
the results topic's partition of the same number is followed for `limit_exceeded` answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord
from msgspec import to_builtins
from prometheus_client import Counter, Gauge

from agents.freshness import Freshness
from ledger_stream.anomaly import AnomalyRules
from ledger_stream.codes import Code
from ledger_stream.kafka.reading import read_range, reader, true_ends
from ledger_stream.kafka.retry import retried, started
from ledger_stream.kafka.security import connection_options
from ledger_stream.messages import JournalEvent, Result, from_json, to_json
from ledger_stream.notify import Notification
from ledger_stream.partitioning import partition_of
from ledger_stream.readmodel import Folded, ReadFold, folded_head
from ledger_stream.settings import Settings
from ledger_stream.state.readstore import ReadStore, read_store_path
from ledger_stream.topics import TopicNames

logger = logging.getLogger(__name__)

FOLDED = Counter("ledger_read_events_folded_total", "Journal events folded into read models")
NOTIFIED = Counter("ledger_notifications_published_total", "Notifications published", ["type"])
FLAGGED = Counter("ledger_flags_published_total", "Anomaly flags published", ["rule"])
LAG = Gauge(
    "ledger_read_lag_records",
    "Journal records behind the partition's end, as last fetched",
    ["partition"],
)
GAPS = Counter("ledger_read_seq_gaps_total", "Journal events found after a missing seq")

# Records folded between two looks at the event loop: a fold holds the loop (HTTP reads
# included) for about 20 us a record.
RECORDS_PER_POLL_MAX = 1000
_LIMIT_EXCEEDED = f'"{Code.LIMIT_EXCEEDED.value}"'.encode()
SEQ_HEADER = "seq"
MARK_SCAN_RECORDS = 200  # records read back at a time to find the last published seq


@dataclass
class _Partition:
    store: ReadStore
    head: int  # seq folded
    published: int  # seq up to which notifications and flags were published
    results_from: int  # where results are read from while none has been folded


class Projector:
    def __init__(
        self,
        settings: Settings,
        owned: Callable[[], Iterable[int]],
        freshness: Freshness,
    ) -> None:
        self.settings = settings
        self.topics = TopicNames.from_settings(settings)
        self.owned = owned
        self.freshness = freshness
        self.rules: AnomalyRules | None = settings.anomaly_rules
        self.identity = f"{self.topics.journal}/{settings.partitions}"
        self.partitions: dict[int, _Partition] = {}
        self.progress = asyncio.Condition()
        self.consumer: AIOKafkaConsumer | None = None
        self.marks: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None

    # -- reads wait here ------------------------------------------------------------------

    def store(self, partition: int) -> ReadStore | None:
        followed = self.partitions.get(partition)
        return None if followed is None else followed.store

    def shows(self, partition: int, account: str) -> bool:
        """Whether the read models of `partition` show every write to `account` this worker
        has answered (agents/freshness.py). Plain reads: safe from the HTTP thread."""
        followed = self.partitions.get(partition)
        return followed is not None and followed.head >= self.freshness.needed(partition, account)

    async def caught_up(self, partition: int, account: str, timeout_s: float) -> bool:
        """Wait until the read models of `partition` show every write to `account` this
        worker has answered (agents/freshness.py); False when `timeout_s` passes first."""

        if self.shows(partition, account):
            return True
        async with self.progress:
            try:
                shown = self.progress.wait_for(lambda: self.shows(partition, account))
                await asyncio.wait_for(shown, timeout_s)
            except TimeoutError:
                return False
        return True

    # -- running --------------------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        servers = self.settings.bootstrap_servers
        security = connection_options(self.settings)

        async def close(client: Any) -> None:
            await client.stop()

        self.producer = await started(
            lambda: AIOKafkaProducer(
                bootstrap_servers=servers, acks="all", linger_ms=5, **security
            ),
            servers,
            self.settings.connect_attempts_max,
            close,
        )
        self.consumer = reader(servers, fetch_max_wait_ms=self.settings.fetch_wait_ms, **security)
        self.marks = reader(servers, fetch_max_wait_ms=self.settings.fetch_wait_ms, **security)
        await self.consumer.start()
        await self.marks.start()
        try:
            while not stopping.is_set():
                await self._follow(set(self.owned()))
                if not self.partitions:
                    await asyncio.sleep(0.2)
                    continue
                batch = await self.consumer.getmany(
                    timeout_ms=200, max_records=RECORDS_PER_POLL_MAX
                )
                folds = []
                for number, records in _by_partition(batch).items():
                    if number in self.partitions:
                        folds.append(self._fold(number, records))
                        await asyncio.sleep(0)  # let reads in between partitions
                await self._publish(folds)
                for fold in folds:
                    self._write(fold)
                async with self.progress:
                    self.progress.notify_all()
        finally:
            for client in (self.consumer, self.marks, self.producer):
                await client.stop()
            for followed in self.partitions.values():
                followed.store.close()
            self.partitions.clear()

    async def _follow(self, wanted: set[int]) -> None:
        if wanted == set(self.partitions):
            return
        assert self.consumer is not None
        for number in sorted(set(self.partitions) - wanted):
            self.partitions.pop(number).store.close()
        new = sorted(wanted - set(self.partitions))
        # One read of the ends of every partition that tells where to start (a fetch each
        # would wait out the broker's fetch wait, one after another).
        marks = [
            TopicPartition(topic, number)
            for number in new
            for topic in (self.topics.notifications, self.topics.flags, self.topics.results)
        ]
        ends = await true_ends(self._marks(), marks)
        for number in new:
            store = ReadStore(read_store_path(Path(self.settings.data_dir), number), self.identity)
            head = folded_head(store.get).seq
            published = 0
            for topic in (self.topics.notifications, self.topics.flags):
                mark = await self._published(TopicPartition(topic, number), ends)
                published = max(published, mark)
            # Results are answers of the moment: a fresh store notifies only of new ones.
            results_from = ends[TopicPartition(self.topics.results, number)]
            self.partitions[number] = _Partition(store, head, published, results_from)
        # Assigning anew forgets every position: all start where their store says.
        starts: dict[TopicPartition, int] = {}
        for number, followed in self.partitions.items():
            journal = TopicPartition(self.topics.journal, number)
            results = TopicPartition(self.topics.results, number)
            starts[journal] = followed.store.position(journal.topic)
            starts[results] = followed.store.position(results.topic) or followed.results_from
        self.consumer.assign(sorted(starts, key=lambda tp: (tp.topic, tp.partition)))
        for tp, offset in starts.items():
            self.consumer.seek(tp, offset)
        logger.info("folding journal partitions %s into read models", sorted(self.partitions))

    def _marks(self) -> AIOKafkaConsumer:
        assert self.marks is not None
        return self.marks

    async def _published(self, tp: TopicPartition, ends: dict[TopicPartition, int]) -> int:
        """The greatest seq a notifications or flags partition was published for, read back
        from its end."""
        end = ends[tp]
        while end > 0:
            start = max(0, end - MARK_SCAN_RECORDS)
            found = 0
            async for records in read_range(self._marks(), {tp: start}, {tp: end}):
                for record in records:
                    found = max(found, _seq_header(record))
            if found:
                return found
            end = start
        return 0

    def _fold(self, number: int, records: list[ConsumerRecord[Any, Any]]) -> _Fold:
        """Fold a partition's records (its journal's, then its results') over its store."""
        followed = self.partitions[number]
        fold = ReadFold(followed.store.get, self.rules)
        limits: list[Notification] = []
        positions: dict[str, int] = {}
        for record in records:
            positions[record.topic] = record.offset + 1
            if record.value is None:
                continue
            if record.topic == self.topics.journal:
                fold.event(from_json(record.value, JournalEvent))
            elif _LIMIT_EXCEEDED in record.value:  # most results are not: skip decoding them
                limits.extend(_limit_reached(from_json(record.value, Result), record.timestamp))
        for expected, found in fold.out.gaps:
            GAPS.inc()
            logger.warning(
                "journal partition %d: seq %d follows a missing %d; folding on",
                number,
                found,
                expected,
            )
        return _Fold(number, fold.out, fold.head.seq, positions, limits)

    def _write(self, fold: _Fold) -> None:
        """Write a fold and its positions at once, and tell the readers waiting for it."""
        followed = self.partitions[fold.number]
        followed.store.write(fold.out.writes, fold.positions)
        folded_to = fold.positions.get(self.topics.journal)
        assert self.consumer is not None
        high = self.consumer.highwater(TopicPartition(self.topics.journal, fold.number))
        if folded_to is not None and high is not None:
            LAG.labels(str(fold.number)).set(max(0, high - folded_to))
        FOLDED.inc(fold.out.folded)
        followed.head = fold.head
        followed.published = max(followed.published, fold.head)
        self.freshness.folded(fold.number, followed.head)

    async def _publish(self, folds: list[_Fold]) -> None:
        """Publish the notifications and flags of every fold of a poll, and wait for Kafka
        to have them all, before any of the folds is written."""
        sends: list[tuple[str, int, str, bytes, int]] = []
        counted: list[tuple[Counter, str]] = []
        for fold in folds:
            published = self.partitions[fold.number].published
            for seq, note in fold.out.notifications:
                if seq > published:
                    value = to_json(note)
                    sends.append((self.topics.notifications, fold.number, note.account, value, seq))
                    counted.append((NOTIFIED, note.type))
            for note in fold.limits:
                partition = partition_of(note.account, self.settings.partitions)
                sends.append((self.topics.notifications, partition, note.account, to_json(note), 0))
                counted.append((NOTIFIED, note.type))
            for seq, flag in fold.out.flags:
                if seq > published:
                    sends.append((self.topics.flags, fold.number, flag.account, to_json(flag), seq))
                    counted.append((FLAGGED, flag.rule))
        if not sends:
            return
        assert self.producer is not None
        producer = self.producer

        async def attempt() -> None:
            acks = []
            for topic, partition, key, value, seq in sends:
                headers = [(SEQ_HEADER, str(seq).encode())] if seq else []
                acks.append(
                    await producer.send(
                        topic, value, key=key.encode(), partition=partition, headers=headers
                    )
                )
            await asyncio.gather(*acks)

        await retried(
            attempt,
            failure="could not publish notifications and flags",
            attempts_max=self.settings.send_attempts_max,
            errors=(KafkaError,),
        )
        for metric, label in counted:
            metric.labels(label).inc()


@dataclass
class _Fold:
    number: int
    out: Folded
    head: int  # seq folded up to
    positions: dict[str, int]  # by topic, the next offset to fold
    limits: list[Notification]


def _seq_header(record: ConsumerRecord[Any, Any]) -> int:
    for name, value in record.headers or ():
        if name == SEQ_HEADER:
            return int(value)
    return 0


def _limit_reached(result: Result, timestamp_ms: int) -> list[Notification]:
    if result.code != Code.LIMIT_EXCEEDED or result.account is None or result.duplicate:
        return []
    breach = result.limit
    # What was refused: the amount asked for, unless a count was the limit.
    asked = None if breach is None or "count" in breach.limit else breach.requested
    return [
        Notification(
            id=f"{result.command_id}:limit_reached",
            type="limit_reached",
            account=result.account,
            amount=asked,
            command_id=result.command_id,
            timestamp_ms=timestamp_ms,
            details=None if breach is None else {"limit": to_builtins(breach)},
        )
    ]


def _by_partition(
    batch: dict[TopicPartition, list[ConsumerRecord[Any, Any]]],
) -> dict[int, list[ConsumerRecord[Any, Any]]]:
    """Each partition's records: the journal's first (in offset order), then the results'."""
    numbers: dict[int, list[ConsumerRecord[Any, Any]]] = {}
    for tp in sorted(batch, key=lambda tp: (tp.partition, tp.topic.endswith("results"))):
        numbers.setdefault(tp.partition, []).extend(batch[tp])
    return numbers
