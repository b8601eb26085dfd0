"""The ledger writer: one per partition, deciding batches of commands and legs.

Per batch, in this order (a crash between any two steps is repaired by replay):
1. read records (bad ones become dead letters),
2. prefetch the accounts and outcomes the batch names, per partition,
3. `decide` (pure) once per partition,
4. produce the changed accounts and outcomes to the tables' changelogs and wait for the acks,
5. write them to the local RocksDB tables (so local state never runs ahead of its changelog),
6. send journal events, results, legs and dead letters, and wait for the acks,
7. hand the batch back to Faust, which acks it and commits the offsets.
A replayed command finds its outcome and re-sends the same outputs (same entry ids), so
nothing is lost or counted twice. A bug in `decide` stops the worker before step 4.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import faust
import orjson
import rocksdict
from aiokafka import AIOKafkaProducer
from faust.types import TP, EventT, StreamT, TableT
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from pydantic import BaseModel

from ledger_stream.core import (
    Incoming,
    Reply,
    accounts_to_prefetch,
    decide,
    outcomes_to_prefetch,
)
from ledger_stream.intake import DeadLetter, Record, read_record
from ledger_stream.kafka.records import OutRecord, send_records
from ledger_stream.kafka.retry import retried
from ledger_stream.messages import AccountState, JournalEvent, Leg, Outcome
from ledger_stream.partitioning import partition_of
from ledger_stream.settings import Settings
from ledger_stream.topics import TopicNames

logger = logging.getLogger(__name__)

RESULTS = Counter("ledger_results_total", "Results written", ["status", "code"])
DEAD_LETTERS = Counter("ledger_dead_letters_total", "Records sent to the dead-letter topic")
BATCH_SIZE = Histogram(
    "ledger_writer_batch_inputs",
    "Commands and legs per writer batch",
    buckets=(1, 10, 100, 1000, 10_000, 100_000),
)

EXIT_DECIDE_BUG = 70  # EX_SOFTWARE
EXIT_BROKER_GONE = 75  # EX_TEMPFAIL


class TableStore:
    """The writer's access to one Faust table, a batch at a time.

    Faust's table API writes one key at a time under a current event and produces one
    changelog record per write through a per-message buffer. The writer instead reads the
    table's RocksDB partition databases directly, produces its changelog records in
    batches, and writes them locally with one RocksDB write batch, recording the changelog
    offset the way Faust's recovery expects (`set_persisted_offset`). The Faust table still
    owns the changelog topic, recovery, standbys and partition assignment.
    """

    def __init__(self, table: TableT[bytes, bytes]) -> None:
        self.table = table

    @property
    def changelog_topic(self) -> str:
        return str(self.table.changelog_topic.get_topic_name())

    def get(self, partition: int, key: str) -> bytes | None:
        value: bytes | None = self._db(partition).get(key.encode())
        return value

    def changelog(self, partition: int, items: dict[str, bytes]) -> list[OutRecord]:
        topic = self.changelog_topic
        return [OutRecord(topic, partition, key.encode(), value) for key, value in items.items()]

    def apply(self, partition: int, items: dict[str, bytes], offset: int) -> None:
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key, value in items.items():
            batch.put(key.encode(), value)
        self._db(partition).write(batch)
        self._store.set_persisted_offset(TP(self.changelog_topic, partition), offset)

    @property
    def _store(self) -> Any:
        """The table's faust RocksDB store (typed loosely by faust as a mapping)."""
        return self.table.data

    def _db(self, partition: int) -> Any:
        return self._store._db_for_partition(partition)


@dataclass
class PartitionWrites:
    accounts: dict[str, bytes] = field(default_factory=dict)
    outcomes: dict[str, bytes] = field(default_factory=dict)


@dataclass
class Outbox:
    """What a batch writes and sends once it is decided."""

    writes: dict[int, PartitionWrites] = field(default_factory=lambda: defaultdict(PartitionWrites))
    journal: list[tuple[int, JournalEvent]] = field(default_factory=list)
    results: list[Reply] = field(default_factory=list)
    legs: list[Leg] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)


class Writer:
    def __init__(self, app: faust.App, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.topics = TopicNames.from_settings(settings)
        table_options: dict[str, Any] = {
            "partitions": settings.partitions,
            "key_type": bytes,  # raw bytes both ways: keys are ids, values our JSON
            "value_type": bytes,
        }
        self.accounts = TableStore(app.Table("accounts", **table_options))
        self.outcomes = TableStore(app.Table("outcomes", **table_options))
        self.producer: AIOKafkaProducer | None = None

    async def run(self, stream: StreamT[bytes]) -> None:
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap_servers,
            acks="all",
            linger_ms=0,
            max_batch_size=1024 * 1024,
            max_request_size=8 * 1024 * 1024,
        )
        await self.producer.start()
        # Batches allocate many short-lived objects; collecting the young generation less
        # often, and never rescanning what existed at start-up, saves about a third of the
        # time a batch takes to decide.
        gc.freeze()
        gc.set_threshold(50_000, 20, 50)
        try:
            linger_s = self.settings.batch_linger_ms / 1000
            batch_size = self.settings.batch_size_max
            # take_events is on faust.Stream, not on the StreamT interface
            batches = stream.take_events(batch_size, within=linger_s)  # type: ignore[attr-defined]
            async for events in batches:
                await self.write_batch(events)
        finally:
            await self.producer.stop()

    async def write_batch(self, events: Sequence[EventT]) -> None:
        started = time.perf_counter()
        outbox = Outbox()
        for partition, group in _by_partition(events).items():
            try:
                self._decide_partition(partition, group, outbox)
            except Exception:
                span = f"{group[0].message.offset}..{group[-1].message.offset}"
                _stop_worker(
                    EXIT_DECIDE_BUG,
                    f"bug while deciding partition {partition} offsets {span}; stopping the "
                    "worker without acking the batch, so a fixed worker decides it again",
                )
        decided = time.perf_counter()
        offsets = await self._send(self._changelog_records(outbox), "table changelogs")
        self._apply_locally(outbox, offsets)
        stored = time.perf_counter()
        await self._send(list(self._output_records(outbox)), "outputs")
        logger.debug(
            "batch of %d records, %d results: decided in %.1f ms, stored in %.1f ms, sent in %.1f ms",  # noqa: E501
            len(events),
            len(outbox.results),
            (decided - started) * 1e3,
            (stored - decided) * 1e3,
            (time.perf_counter() - stored) * 1e3,
        )
        for reply in outbox.results:
            RESULTS.labels(reply.result.status, reply.result.code or "").inc()
        DEAD_LETTERS.inc(len(outbox.dead_letters))

    def _decide_partition(self, partition: int, group: list[EventT], outbox: Outbox) -> None:
        n = self.settings.partitions

        def is_here(account: str) -> bool:
            return partition_of(account, n) == partition

        batch: list[Incoming] = []
        for event in group:
            read = read_record(_record(event, self.topics.legs), is_here)
            batch.extend(read.inputs)
            if read.dead_letter is not None:
                outbox.dead_letters.append(read.dead_letter)
                outbox.results.extend(read.dead_letter.replies)
        if not batch:
            return
        BATCH_SIZE.observe(len(batch))
        # Each key once: a batch names the same accounts many times.
        account_names = {n for item in batch for n in accounts_to_prefetch(item.message, is_here)}
        outcome_keys = {key for item in batch for key in outcomes_to_prefetch(item.message)}
        accounts = {n: _parse(self.accounts.get(partition, n), AccountState) for n in account_names}
        outcomes = {key: _parse(self.outcomes.get(partition, key), Outcome) for key in outcome_keys}
        decision = decide(accounts, outcomes, batch, is_here)
        writes = outbox.writes[partition]
        for name, account in decision.accounts.items():
            writes.accounts[name] = account.model_dump_json().encode()
        for key, outcome in decision.outcomes.items():
            writes.outcomes[key] = outcome.model_dump_json().encode()
        outbox.journal.extend((partition, event) for event in decision.journal)
        outbox.results.extend(decision.results)
        outbox.legs.extend(decision.legs)

    def _changelog_records(self, outbox: Outbox) -> list[OutRecord]:
        records = []
        for partition, writes in outbox.writes.items():
            records += self.accounts.changelog(partition, writes.accounts)
            records += self.outcomes.changelog(partition, writes.outcomes)
        return records

    def _apply_locally(self, outbox: Outbox, offsets: dict[tuple[str, int], int]) -> None:
        for partition, writes in outbox.writes.items():
            for store, items in (
                (self.accounts, writes.accounts),
                (self.outcomes, writes.outcomes),
            ):
                if items:
                    store.apply(partition, items, offsets[(store.changelog_topic, partition)])

    def _output_records(self, outbox: Outbox) -> Iterator[OutRecord]:
        topics, n = self.topics, self.settings.partitions
        for partition, event in outbox.journal:
            yield OutRecord(topics.journal, partition, event.entry_id.encode(), _json(event))
        for reply in outbox.results:
            key = reply.result.command_id.encode()
            target = reply.partition
            if target is None or target >= n:  # unnamed or nonexistent: route by key
                target = partition_of(reply.result.command_id, n)
            yield OutRecord(topics.results, target, key, _json(reply.result))
        # Legs for one partition travel as one record (a JSON array), like client batches.
        legs: dict[int, list[Leg]] = defaultdict(list)
        for leg in outbox.legs:
            legs[partition_of(leg.account, n)].append(leg)
        for partition, group in legs.items():
            value = orjson.dumps([leg.model_dump(exclude_none=True) for leg in group])
            yield OutRecord(topics.legs, partition, group[0].account.encode(), value)
        for letter in outbox.dead_letters:
            record = letter.record
            yield OutRecord(topics.deadletter, 0, record.key, record.value, letter.headers)

    async def _send(self, records: list[OutRecord], what: str) -> dict[tuple[str, int], int]:
        """Send and wait for every ack, retrying the whole set with backoff.

        Re-sending is safe: changelog records are idempotent overwrites, journal events
        collapse by entry id, results by command id, and legs are deduplicated by the
        receiving writer.
        """
        producer = self.producer
        assert producer is not None
        if not records:
            return {}
        attempts_max = self.settings.send_attempts_max
        try:
            return await retried(
                lambda: send_records(producer, records),
                failure=f"sending {what} to Kafka failed",
                attempts_max=attempts_max,
                errors=(Exception,),
            )
        except Exception as error:
            _stop_worker(
                EXIT_BROKER_GONE,
                f"could not send {what} after {attempts_max} attempts ({error!r}); stopping "
                "the worker without acking the batch",
            )


def install(app: faust.App, settings: Settings) -> Writer:
    """Attach the writer agent, its tables and its HTTP views to `app`."""
    writer = Writer(app, settings)
    source = app.topic(
        writer.topics.commands,
        writer.topics.legs,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
    )

    async def ledger_writer(stream: StreamT[bytes]) -> None:
        await writer.run(stream)

    app.agent(source, name="ledger_writer")(ledger_writer)
    _install_views(app, writer)
    return writer


def _install_views(app: faust.App, writer: Writer) -> None:
    table = writer.accounts.table
    n = writer.settings.partitions

    @app.page("/accounts/{account}/")
    @app.table_route(table=table, match_info="account")
    async def account_view(web: View, request: Request, account: str) -> Response:
        raw = writer.accounts.get(partition_of(account, n), account)
        if raw is None:
            return web.json({"error": "account_not_found", "account": account}, status=404)
        state = AccountState.model_validate_json(raw)
        body = {"account": account, **state.model_dump()}
        return web.json({**body, "balance": state.balance, "available": state.available})

    @app.page("/metrics/")
    async def metrics_view(web: View, request: Request) -> Response:
        # aiohttp takes the charset separately from the content type
        return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])


def _by_partition(events: Sequence[EventT]) -> dict[int, list[EventT]]:
    groups: dict[int, list[EventT]] = defaultdict(list)
    for event in events:
        groups[event.message.partition].append(event)
    return groups


def _record(event: EventT, legs_topic: str) -> Record:
    message = event.message
    return Record(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        timestamp_ms=round(message.timestamp * 1000),
        key=message.key,
        value=event.value,
        is_leg=message.topic == legs_topic,
    )


def _parse(raw: bytes | None, model: Any) -> Any:
    return None if raw is None else model.model_validate_json(raw)


def _json(message: BaseModel) -> bytes:
    return message.model_dump_json(exclude_none=True).encode()


def _stop_worker(code: int, message: str) -> NoReturn:
    """Exit at once: Faust would ack (and commit) the batch on any orderly way out."""
    logger.critical(message, exc_info=True)
    logging.shutdown()
    os._exit(code)
