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

The fold also sums each partition's postings to @transit, which the read models leave out
(system accounts are journal-only), for the `ledger_transit_balance_minor_units` metric.
The sums are written with the positions, in the same batch as the fold, so they stay exact
across restarts; they are not read models, and `ledger-stream rebuild`, which compares the
read models key for key, leaves them out. A store that has folded events without summing
them (written by an older worker, or by `rebuild --replace`) has them summed again from the
journal when the partition is followed.
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
from ledger_stream.core import TRANSIT
from ledger_stream.kafka.reading import read_range, reader, true_ends
from ledger_stream.kafka.records import OutRecord, send_records
from ledger_stream.kafka.retry import retried, started
from ledger_stream.kafka.security import connection_options
from ledger_stream.messages import JournalEvent, Result, from_json, to_json
from ledger_stream.money import CURRENCY_EXPONENTS
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
# Exact for the partitions this worker folds, as far as it has folded them; the money in
# transit is the sum over every partition, so over the workers: a partition's own balance
# is what it sent to others and has not landed or come back, less what landed from others.
# While a partition moves, its old and new owners may both show it: `max by (partition,
# currency)` before summing counts it once.
TRANSIT_BALANCE = Gauge(
    "ledger_transit_balance_minor_units",
    "Balance of @transit (credits less debits, in the currency's minor units) in the journal "
    "partitions this worker folds; summed over all partitions, the money in transit",
    ["partition", "currency"],
)

# Records folded between two looks at the event loop: a fold holds the loop (HTTP reads
# included) for about 20 us a record.
RECORDS_PER_POLL_MAX = 1000
_LIMIT_EXCEEDED = f'"{Code.LIMIT_EXCEEDED.value}"'.encode()
SEQ_HEADER = "seq"
MARK_SCAN_RECORDS = 200  # records read back at a time to find the last published seq
# Kept with a read store's positions: the journal seq its @transit sums count up to, and
# the sum of each currency.
TRANSIT_SEQ = TRANSIT
TRANSIT_SUM = TRANSIT + "|{currency}"


@dataclass
class _Partition:
    store: ReadStore
    head: int  # seq folded
    published: int  # seq up to which notifications and flags were published
    results_from: int  # where results are read from while none has been folded
    transit: dict[str, int]  # @transit's balance, by currency, up to `head`


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
            gone = self.partitions.pop(number)
            gone.store.close()
            LAG.remove(str(number))
            for currency in gone.transit:
                TRANSIT_BALANCE.remove(str(number), currency)
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
            transit = _stored_transit(store, head)
            if transit is None:
                transit = await self._summed_transit(number, store, head)
            for currency, balance in transit.items():
                TRANSIT_BALANCE.labels(str(number), currency).set(balance)
            self.partitions[number] = _Partition(store, head, published, results_from, transit)
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

    async def _summed_transit(self, number: int, store: ReadStore, head: int) -> dict[str, int]:
        """Sum @transit's postings in the journal events `store` has folded (up to seq
        `head`), reading them again and skipping what the fold skipped, and keep the sums
        with its positions."""
        tp = TopicPartition(self.topics.journal, number)
        end = store.position(tp.topic)
        start = (await self._marks().beginning_offsets([tp]))[tp]
        logger.info(
            "journal partition %d: summing @transit over offsets %d to %d (the read models "
            "were folded without it)",
            number,
            start,
            end,
        )
        transit: dict[str, int] = {}
        seq = 0
        async for records in read_range(self._marks(), {tp: start}, {tp: end}):
            for record in records:
                if record.value is None:
                    continue
                event = from_json(record.value, JournalEvent)
                if event.seq is not None and event.seq > seq:
                    seq = event.seq
                    _add_transit(transit, event)
        store.write({}, _transit_positions(head, transit))
        return transit

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
        transit: dict[str, int] = {}  # what the fold posts to @transit, by currency
        for record in records:
            positions[record.topic] = record.offset + 1
            if record.value is None:
                continue
            if record.topic == self.topics.journal:
                event = from_json(record.value, JournalEvent)
                before = fold.head.seq
                fold.event(event)
                if fold.head.seq > before:  # folded, not skipped
                    _add_transit(transit, event)
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
        balances = {c: followed.transit.get(c, 0) + posted for c, posted in transit.items()}
        return _Fold(number, fold.out, fold.head.seq, positions, limits, balances)

    def _write(self, fold: _Fold) -> None:
        """Write a fold and its positions at once, and tell the readers waiting for it."""
        followed = self.partitions[fold.number]
        positions = {**fold.positions, **_transit_positions(fold.head, fold.transit)}
        followed.store.write(fold.out.writes, positions)
        followed.transit.update(fold.transit)
        for currency, balance in fold.transit.items():
            TRANSIT_BALANCE.labels(str(fold.number), currency).set(balance)
        folded_to = fold.positions.get(self.topics.journal)
        assert self.consumer is not None
        high = self.consumer.highwater(TopicPartition(self.topics.journal, fold.number))
        if folded_to is not None and high is not None:
            LAG.labels(str(fold.number)).set(max(0, high - folded_to))
        FOLDED.inc(fold.out.folded)
        followed.head = fold.head
        followed.published = max(followed.published, fold.head)

    async def _publish(self, folds: list[_Fold]) -> None:
        """Publish the notifications and flags of every fold of a poll, and wait for Kafka
        to have them all, before any of the folds is written."""
        sends: list[OutRecord] = []
        counted: list[tuple[Counter, str]] = []

        def send(topic: str, partition: int, account: str, value: bytes, seq: int) -> None:
            headers = [(SEQ_HEADER, str(seq).encode())] if seq else None
            sends.append(OutRecord(topic, partition, account.encode(), value, headers))

        for fold in folds:
            published = self.partitions[fold.number].published
            for seq, note in fold.out.notifications:
                if seq > published:
                    send(self.topics.notifications, fold.number, note.account, to_json(note), seq)
                    counted.append((NOTIFIED, note.type))
            for note in fold.limits:
                partition = partition_of(note.account, self.settings.partitions)
                send(self.topics.notifications, partition, note.account, to_json(note), 0)
                counted.append((NOTIFIED, note.type))
            for seq, flag in fold.out.flags:
                if seq > published:
                    send(self.topics.flags, fold.number, flag.account, to_json(flag), seq)
                    counted.append((FLAGGED, flag.rule))
        if not sends:
            return
        assert self.producer is not None
        producer = self.producer

        async def attempt() -> None:
            await send_records(producer, sends)

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
    transit: dict[str, int]  # @transit's balance after the fold, where the fold posted to it


def _add_transit(transit: dict[str, int], event: JournalEvent) -> None:
    """Add what `event` posts to @transit (credits less debits) to `transit`'s currency."""
    for posting in event.postings:
        if posting.account == TRANSIT:
            transit[event.currency] = (
                transit.get(event.currency, 0) + posting.credit - posting.debit
            )


def _transit_positions(seq: int, transit: dict[str, int]) -> dict[str, int]:
    """What to keep with a read store's positions: @transit's balances up to `seq`."""
    kept = {TRANSIT_SUM.format(currency=c): balance for c, balance in transit.items()}
    return {TRANSIT_SEQ: seq, **kept}


def _stored_transit(store: ReadStore, head: int) -> dict[str, int] | None:
    """@transit's balances `store` keeps, by currency; None when they do not count up to the
    events it has folded (`head`)."""
    if store.position(TRANSIT_SEQ) != head:
        return None
    sums = {c: store.position(TRANSIT_SUM.format(currency=c)) for c in CURRENCY_EXPONENTS}
    return {currency: balance for currency, balance in sums.items() if balance}


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
