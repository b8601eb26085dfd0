"""The ledger writer: one per partition, deciding batches of commands and legs.

Per batch, in this order, written down here and nowhere else:
1. read the records (bad ones become dead letters);
2. decide (pure: it reads the state through the overlay, and returns the changes), per
   partition, in pieces whose state changes fit one state record;
3. commit each piece to the state log, one record each, and wait for the acks; a commit that
   landed anywhere but where this writer expected means another writer owns the partition:
   stop, sending nothing (`state/log.py`);
4. write the committed changes to the local store (in step 3, right after each ack);
5. send journal events, results, legs, dead letters and the commands sent on to another
   writer (an alias resolved), and wait for every ack;
6. only then acknowledge the input (commit the group's offsets);
7. now and then, between batches, snapshot a partition's state into its state log (compacting
   outcomes past their window), and delete the log before the snapshot that came before.
An error at any step stops the worker without acknowledging the batch: a restarted worker
restores from the state log and reads the batch again, and a command that already has an
outcome re-sends the same outputs (same keys, same bytes), so nothing is lost or counted
twice. A command sent on keeps no outcome here: read again, it resolves the same way (an
alias names its account for good) and is sent on again, and its account's writer answers
the second as a repeat.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import logging
import os
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Generic, NoReturn, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata
from prometheus_client import Counter, Gauge, Histogram

from agents.expiry import Deadlines, expire_command, pending_deadline
from agents.freshness import Freshness
from agents.progress import Progress
from ledger_stream.core import (
    Decision,
    Incoming,
    Rules,
    compacted,
    decide,
    outcome_from_compact,
)
from ledger_stream.errors import LedgerError
from ledger_stream.faults import Faults
from ledger_stream.intake import DeadLetter, Record, read_record
from ledger_stream.kafka import group  # leave the group properly on the embedded broker
from ledger_stream.kafka.broker import CLUSTER_ID as EMBEDDED_CLUSTER_ID
from ledger_stream.kafka.reading import reader
from ledger_stream.kafka.records import OutRecord, send_records
from ledger_stream.kafka.retry import retried
from ledger_stream.kafka.security import connection_options
from ledger_stream.messages import (
    COMMAND_MODELS,
    AccountState,
    Limits,
    Outcome,
    from_builtins,
    from_json,
    to_json,
)
from ledger_stream.outputs import Outbox
from ledger_stream.partitioning import partition_of
from ledger_stream.settings import Settings
from ledger_stream.state.log import Fenced, Part, PartitionLog, RestoreProgress, commit_bytes_max
from ledger_stream.state.store import Changes, PartitionStore
from ledger_stream.topics import STATE_RECORD_BYTES_MAX, TopicNames, connected_admin

logger = logging.getLogger(__name__)

# Metrics, updated once per batch, partition or state record, never per command. Each
# worker counts what it writes; the dashboard sums over workers.
# A result's type label is one of the ledger's command types, or "unknown": a record that
# could not be read names none, and a leg (any producer may write one) could name anything.
COMMAND_TYPES = frozenset(COMMAND_MODELS)
RESULTS = Counter(
    "ledger_results_total",
    "Results written, by command type, status and code (empty when accepted); the answers "
    "to repeats included",
    ["type", "status", "code"],
)
JOURNAL_EVENTS = Counter(
    "ledger_journal_events_total",
    "Journal events appended (a repeat's events, sent again, are not counted again)",
)
DEAD_LETTERS = Counter("ledger_dead_letters_total", "Records sent to the dead-letter topic")
COMMITS = Counter("ledger_state_commits_total", "State records committed")
SNAPSHOTS = Counter("ledger_state_snapshots_total", "Snapshots written to the state log")
WRITTEN_BYTES = Counter(
    "ledger_written_bytes_total",
    "Bytes of keys and values the writer sent, by topic (state, outcomes, journal, results, "
    "legs, deadletter); for sizing disks",
    ["topic"],
)
STATE_BYTES = WRITTEN_BYTES.labels("state")
# Four buckets a decade (1, 2, 3, 5, 10, ...) from 1 to 100,000 inputs (a record may carry
# up to COMMAND_BATCH_MAX commands), so quantiles are off by less than a factor of 2.
BATCH_INPUTS_BUCKETS = (
    1, 2, 3, 5, 10, 20, 30, 50, 100, 200, 300, 500,
    1000, 2000, 3000, 5000, 10_000, 20_000, 30_000, 50_000, 100_000,
)  # fmt: skip
# From half a millisecond (a small batch decided, a record acked by a local broker) to 10 s.
STEP_SECONDS_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
)  # fmt: skip
BATCH_SIZE = Histogram(
    "ledger_writer_batch_inputs",
    "Commands and legs of one partition in a writer batch",
    buckets=BATCH_INPUTS_BUCKETS,
)
BATCH_SECONDS = Histogram("ledger_writer_batch_seconds", "Time to decide, commit and send a batch")
DECIDE_SECONDS = Histogram(
    "ledger_writer_decide_seconds",
    "Time the pure core took to decide one partition's inputs of a batch (step 2)",
    buckets=STEP_SECONDS_BUCKETS,
)
COMMIT_SECONDS = Histogram(
    "ledger_state_commit_seconds",
    "Time to append one state record until acked and apply it locally (steps 3 and 4)",
    buckets=STEP_SECONDS_BUCKETS,
)
RESTORE_LEFT = Gauge(
    "ledger_state_restore_records_remaining",
    "State log records a partition being restored has yet to read (0 once restored)",
    ["partition"],
)
RESTORED_RECORDS = Counter(
    "ledger_state_restored_records_total", "State log records read while restoring partitions"
)
RESTORE_SECONDS = Histogram(
    "ledger_state_restore_seconds",
    "Time to restore a partition from its state log and claim it",
    buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0),
)

# A batch of at most this many records finds the ledger nearly idle (pause_while_writing).
NEARLY_IDLE_RECORDS_MAX = 8
EXIT_BUG = 70  # EX_SOFTWARE
EXIT_BROKER_GONE = 75  # EX_TEMPFAIL
EXIT_FENCED = 76  # another writer owns a partition this one was writing

COMMIT_INPUTS_MAX = 5000  # inputs decided into one state record, before any size check
# Decoded state a writer keeps between batches (`_Overlay`): the accounts it decides again,
# up to this many in all, shared evenly by the partitions it owns (a bound per partition let
# a worker's memory grow with its partitions), and per partition the outcomes of transfers
# whose legs come back within seconds.
ACCOUNTS_KEPT_MAX = 400_000
OUTCOMES_KEPT_MAX = 20_000


@dataclass
class Piece:
    """One commit's worth of a partition's batch: its changes, and the outputs they bring."""

    changes: Changes
    outbox: Outbox


class _Moved(Exception):
    """The partition a snapshot was being written for has moved to another worker."""


class Writer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # The consumer's client id, set before `run`: the URL reads are routed to (routing.py).
        self.client_id: str | None = None
        self.topics = TopicNames.from_settings(settings)
        self.faults = Faults(settings.fault_point, settings.fault_after, settings.fault_action)
        self.writer_id = uuid.uuid4().hex  # one per process incarnation
        # Which ledger a local store mirrors; which incarnation of its log, the store checks
        # against the log itself (state/log.py). Not the bootstrap list: it may change.
        self.identity = f"{self.topics.state}/{settings.partitions}"
        self.logs: dict[int, PartitionLog] = {}
        self.lock = asyncio.Lock()  # one batch or one rebalance at a time
        self.ready = asyncio.Event()
        self.progress = Progress(settings.stall_timeout_s)
        self.producer: AIOKafkaProducer | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.reader: AIOKafkaConsumer | None = None
        self.admin: AIOKafkaAdminClient | None = None  # deletes state log before snapshots
        self.embedded = False  # on the embedded broker (as its cluster id says)
        self.trim_refused = False
        self.latest_ms: dict[int, int] = {}  # newest record time seen, by partition
        self.snapshotting: asyncio.Task[None] | None = None  # the snapshot under way
        self.overlays: dict[int, _Overlay] = {}  # decoded state kept, by partition
        self.deadlines = Deadlines()  # of the pending holds of the partitions written here
        self.freshness = Freshness()  # what the read models must show (read-your-writes)
        self.rules = Rules(
            default_limits=None
            if settings.default_limits is None
            else from_builtins(settings.default_limits.model_dump(), Limits),
            payment_timeout_ms=settings.payment_timeout_s * 1000,
        )

    # -- running ------------------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        settings = self.settings
        security = connection_options(settings)
        self.producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap_servers,
            acks="all",
            linger_ms=0,
            max_batch_size=1024 * 1024,
            max_request_size=STATE_RECORD_BYTES_MAX + 1024 * 1024,
            **security,
        )
        self.reader = reader(settings.bootstrap_servers, **security)
        self.admin = await connected_admin(settings)
        self.embedded = (await self.admin.describe_cluster())["cluster_id"] == EMBEDDED_CLUSTER_ID
        group.leader_leaves = not self.embedded
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            group_id=settings.app_id,
            **({} if self.client_id is None else {"client_id": self.client_id}),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            partition_assignment_strategy=(RangePartitionAssignor,),  # co-partitioned
            session_timeout_ms=int(settings.session_timeout_s * 1000),
            rebalance_timeout_ms=int(settings.rebalance_timeout_s * 1000),
            heartbeat_interval_ms=int(settings.heartbeat_interval_s * 1000),
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_wait_ms=settings.fetch_wait_ms,
            **security,
        )
        for client in (self.producer, self.reader, self.consumer):
            await client.start()
        self.consumer.subscribe([self.topics.commands, self.topics.legs], listener=_Listener(self))
        # Batches allocate many short-lived objects; collecting the young generation less
        # often, and never rescanning what existed at start-up, saves about a third of the
        # time a batch takes to decide.
        gc.freeze()
        gc.set_threshold(50_000, 20, 50)
        watcher = asyncio.create_task(self.progress.watch(self.consumer))
        timer = asyncio.create_task(self._expire_holds())
        try:
            while not stopping.is_set():
                batch = await self.consumer.getmany(
                    timeout_ms=200, max_records=settings.batch_size_max
                )
                if batch:
                    with pause_while_writing(self.consumer, batch, self.embedded):
                        async with self.lock:
                            await self._write_batch_or_stop(batch)
        finally:
            watcher.cancel()
            timer.cancel()
            if self.snapshotting is not None:  # left unfinished, so never named
                self.snapshotting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self.snapshotting
            await self.consumer.stop()  # leaves the group: the partitions move at once
            await self.reader.stop()
            await self.producer.stop()
            if self.admin is not None:
                await self.admin.close()
            for log in self.logs.values():
                log.store.close()

    async def acquire(self, assigned: set[TopicPartition]) -> None:
        """Restore and claim each newly assigned partition before deciding anything of it."""
        self.progress.assigned(assigned)
        async with self.lock:
            numbers = sorted({tp.partition for tp in assigned})
            for number in numbers:
                if number not in self.logs:
                    self.logs[number] = await self._restore(number)
                    self.overlays[number] = _Overlay(self.logs[number].store)
                    self.deadlines.track_stored(number, self.logs[number].store.items("outcomes"))
                    self.freshness.claimed(number, self.logs[number].store.head.seq)
                    await self.faults.passed("claimed")
            assert self.consumer is not None
            for tp in assigned:
                self.progress.acknowledged(tp, await self.consumer.committed(tp) or 0)
            logger.info("writing partitions %s", numbers or "none (more workers than partitions)")
            if not self.ready.is_set():
                self.ready.set()
                logger.info("Worker ready")

    async def release(self, revoked: set[TopicPartition]) -> None:
        """Give partitions up between batches (the lock waits for the batch in progress)."""
        async with self.lock:
            for number in sorted({tp.partition for tp in revoked}):
                log = self.logs.pop(number, None)
                self.overlays.pop(number, None)
                self.deadlines.forget(number)
                self.freshness.released(number)
                RESTORE_LEFT.remove(str(number))
                if log is not None:
                    log.store.close()
            for tp in revoked:
                self.progress.forget(tp)
            if revoked:
                logger.info("gave up partitions %s", sorted({tp.partition for tp in revoked}))

    async def _restore(self, number: int) -> PartitionLog:
        assert self.reader is not None
        path = Path(self.settings.data_dir) / f"partition-{number}"
        store = PartitionStore(path, self.identity)
        log = PartitionLog(
            self.topics.state,
            number,
            store,
            self.writer_id,
            self.reader,
            self._append,
            self.topics.outcomes,
        )
        started = time.perf_counter()
        await log.restore(_restore_progress(number))
        RESTORE_SECONDS.observe(time.perf_counter() - started)
        return log

    # -- one batch ------------------------------------------------------------------------

    async def _write_batch_or_stop(
        self, batch: Mapping[TopicPartition, list[ConsumerRecord[Any, Any]]]
    ) -> None:
        try:
            await self._write_batch(batch)
        except Exception:
            stop_worker(EXIT_BUG, "unexpected error while writing a batch; nothing acknowledged")

    async def _write_batch(
        self, batch: Mapping[TopicPartition, list[ConsumerRecord[Any, Any]]]
    ) -> None:
        started = time.perf_counter()
        owned = {tp: records for tp, records in batch.items() if tp.partition in self.logs}
        numbers = {tp.partition for tp in owned}
        seq_before = sum(self.overlays[number].head.seq for number in numbers)
        decided: dict[int, list[Piece]] = {}
        for number, records in _by_partition(owned).items():
            try:
                decided[number] = self._decide_partition(number, records)
            except Exception:
                span = ", ".join(f"{r.topic}@{r.offset}" for r in records[:3])
                stop_worker(
                    EXIT_BUG,
                    f"bug while deciding partition {number} (records {span}...); stopping "
                    "without acknowledging the batch, so a fixed worker decides it again",
                )
        await self.faults.passed("decided")
        await self._commit(decided)
        await self.faults.passed("applied")
        outbox = Outbox()
        for pieces in decided.values():
            for piece in pieces:
                outbox.extend(piece.outbox)
        await self._send_outputs(outbox)
        await self.faults.passed("outputs-sent")
        await self._acknowledge(owned)
        self._snapshot_where_due(sorted(decided))
        BATCH_SECONDS.observe(time.perf_counter() - started)
        _count_results(outbox)
        # Every new journal event takes the next seq of its partition (`core`, `stamp`).
        JOURNAL_EVENTS.inc(sum(self.overlays[number].head.seq for number in numbers) - seq_before)
        DEAD_LETTERS.inc(len(outbox.dead_letters))

    def _decide_partition(
        self, number: int, records: list[ConsumerRecord[Any, Any]]
    ) -> list[Piece]:
        """Decide a partition's records in pieces, each small enough for one state record;
        later pieces see what earlier ones changed."""
        n = self.settings.partitions

        def is_here(account: str) -> bool:
            return partition_of(account, n) == number

        inputs: list[Incoming] = []
        letters = Outbox()
        newest = max(record.timestamp for record in records)
        self.latest_ms[number] = max(self.latest_ms.get(number, 0), newest)
        for record in records:
            read = read_record(_record(record, self.topics.legs), is_here)
            inputs.extend(read.inputs)
            if read.dead_letter is not None:
                letters.dead_letters.append(read.dead_letter)
                letters.results.extend(read.dead_letter.replies)
        BATCH_SIZE.observe(len(inputs))
        overlay = self.overlays[number]
        overlay.trim(ACCOUNTS_KEPT_MAX // len(self.overlays))
        pieces: list[Piece] = []
        start, size = 0, COMMIT_INPUTS_MAX
        deciding_s = 0.0
        while start < len(inputs):
            chunk = inputs[start : start + size]
            deciding = time.perf_counter()
            decision = overlay.decide(chunk, is_here, self.rules)
            deciding_s += time.perf_counter() - deciding
            changes = _serialized(decision)
            if commit_bytes_max(changes) > STATE_RECORD_BYTES_MAX:
                if len(chunk) == 1:
                    raise LedgerError(f"one input changes more than {STATE_RECORD_BYTES_MAX} bytes")
                size = len(chunk) // 2  # too big for one record: decide less at once
                continue
            overlay.take(decision)
            self.deadlines.track(number, decision.outcomes.items())
            self.freshness.wrote(number, decision.journal)
            pieces.append(Piece(changes, _outbox(number, decision)))
            start += len(chunk)
        DECIDE_SECONDS.observe(deciding_s)
        pieces.append(Piece(Changes({}, {}), letters))  # sent after the decisions, not committed
        return pieces

    async def _expire_holds(self) -> None:
        """The hold timer (agents/expiry.py): send `expire_hold` for every pending hold of
        the partitions written here whose deadline has passed."""
        while True:
            await asyncio.sleep(self.settings.expiry_interval_s)
            now_ms = int(time.time() * 1000)
            for number, deadline, hold_id, account in self.deadlines.due(now_ms):
                overlay = self.overlays.get(number)
                held = None if overlay is None else overlay.outcome(f"cmd:{hold_id}")
                if held is None or pending_deadline(held) != deadline:
                    continue  # resolved meanwhile, or the partition moved
                assert self.producer is not None
                try:
                    await self.producer.send_and_wait(
                        self.topics.commands,
                        orjson.dumps(expire_command(hold_id, account)),
                        key=account.encode(),
                        partition=number,
                        timestamp_ms=max(now_ms, deadline),
                    )
                except KafkaError as error:
                    logger.warning(
                        "could not send expire_hold for %s (%s); will retry", hold_id, error
                    )
                    self.deadlines.track(number, [("", held)])

    async def _commit(self, decided: dict[int, list[Piece]]) -> None:
        """Steps 3 and 4: every partition's pieces, in order; partitions side by side."""

        async def commit_all(log: PartitionLog, pieces: list[Piece]) -> None:
            for piece in pieces:
                if piece.changes.accounts or piece.changes.outcomes:
                    committing = time.perf_counter()
                    await log.commit(piece.changes)
                    COMMIT_SECONDS.observe(time.perf_counter() - committing)
                    COMMITS.inc()
                    await self.faults.passed("between-commits")

        try:
            await asyncio.gather(*(commit_all(self.logs[p], todo) for p, todo in decided.items()))
        except Fenced as error:
            stop_worker(EXIT_FENCED, f"{error}; stopping without sending this batch's outputs")
        await self.faults.passed("committed")

    def _snapshot_where_due(self, numbers: list[int]) -> None:
        """Step 7: unless a snapshot is under way, start one of the partition whose state
        log has grown the most past its due size since its last snapshot. It runs beside
        the batches (`_snapshot`)."""
        if self.snapshotting is not None and not self.snapshotting.done():
            return
        due = [n for n in numbers if self.logs[n].snapshot_due(self.settings.snapshot_bytes)]
        if not due:
            return
        number = max(due, key=lambda n: self.logs[n].since_snapshot_bytes)
        acknowledged = {(tp.topic, tp.partition): at for tp, at in self.progress.acked.items()}
        before_ms = self.latest_ms[number] - self.settings.outcome_window_s * 1000
        compact = partial(_compacted, before_ms=before_ms, acknowledged=acknowledged)
        self.snapshotting = asyncio.create_task(self._snapshot(number, self.logs[number], compact))

    async def _snapshot(
        self, number: int, log: PartitionLog, compact: Callable[[str, bytes], bytes | None]
    ) -> None:
        """Snapshot partition `number`, then delete its log before the snapshot before this
        one. The snapshot holds the batch lock for one part at a time (a record of about a
        MiB, or a part of the outcomes archived), and batches commit between its parts: it
        holds a batch up for one part, not for the whole partition. A snapshot whose
        partition moves away meanwhile is left unfinished, so never named: restores use
        the one before."""
        held = False

        async def between_parts(part: Part) -> None:
            nonlocal held
            await self.faults.passed(f"snapshot-part-{part}")
            self.lock.release()
            held = False
            await self.lock.acquire()  # a batch waiting for the lock takes it first
            held = True
            if self.logs.get(number) is not log:
                raise _Moved

        await self.lock.acquire()
        held = True
        try:
            if self.logs.get(number) is not log:
                return
            previous = log.store.snapshot
            started = time.perf_counter()
            figures = await log.snapshot(compact, self._archive, between_parts)
            SNAPSHOTS.inc()
            logger.info("partition %d: %s; %.2f s", number, figures, time.perf_counter() - started)
            if previous is not None:
                await self._trim(number, previous.base)
        except _Moved:
            logger.info("partition %d moved away: its snapshot is left unfinished", number)
        except Fenced as error:
            stop_worker(EXIT_FENCED, f"{error}; stopped while writing a snapshot")
        except Exception:
            stop_worker(EXIT_BUG, f"unexpected error while writing a snapshot of {number}")
        finally:
            if held:
                self.lock.release()

    async def _archive(self, number: int, compact: dict[str, bytes]) -> None:
        """Store compact outcomes in partition `number` of the outcomes topic, acked."""
        topic = self.topics.outcomes
        records = [OutRecord(topic, number, key.encode(), value) for key, value in compact.items()]
        await self._send_or_stop(records, "archive compact outcomes")

    async def _trim(self, number: int, before: int) -> None:
        """Delete the state log of partition `number` before offset `before`, where the broker
        allows it; a broker that does not is named once and the log kept. The embedded broker
        is not asked: its DeleteRecords panics one of its threads."""
        if self.trim_refused:
            return
        try:
            if self.embedded:
                raise KafkaError("the embedded broker cannot delete records")
            assert self.admin is not None
            tp = TopicPartition(self.topics.state, number)
            await self.admin.delete_records({tp: RecordsToDelete(before)})
        except Exception as error:
            self.trim_refused = True
            logger.warning(
                "the broker did not delete state records (%r); the state log keeps every "
                "record, and restores still start at the latest snapshot. Not asking again.",
                error,
            )
            return
        logger.info("partition %d: state log before offset %d deleted", number, before)

    async def _append(self, partition: int, value: bytes) -> int:
        """Append one record to a state partition; the offset it landed at."""
        producer = self.producer
        assert producer is not None

        async def attempt() -> int:
            delivery = await producer.send(self.topics.state, value, partition=partition)
            self.faults.reached("commit-sent")
            metadata = await delivery
            STATE_BYTES.inc(len(value))
            return int(metadata.offset)

        try:
            return await retried(
                attempt,
                failure=f"appending to state partition {partition} failed",
                attempts_max=self.settings.send_attempts_max,
                errors=(Exception,),
            )
        except Exception as error:
            stop_worker(
                EXIT_BROKER_GONE,
                f"could not append to the state log after {self.settings.send_attempts_max} "
                f"attempts ({error!r}); stopping without acknowledging the batch",
            )

    async def _send_outputs(self, outbox: Outbox) -> None:
        """Step 5. Re-sending is safe: journal events collapse by entry id, results by
        command id, and legs are deduplicated by the writer that receives them."""
        records = list(outbox.records(self.topics, self.settings.partitions))
        await self._send_or_stop(
            records, "send outputs", on_first_ack=lambda: self.faults.reached("outputs-partly-sent")
        )

    async def _send_or_stop(
        self,
        records: list[OutRecord],
        what: str,
        on_first_ack: Callable[[], None] | None = None,
    ) -> None:
        """Send `records` and wait for every ack, retrying with backoff; stop the worker,
        acknowledging nothing, when Kafka keeps refusing them."""
        producer = self.producer
        assert producer is not None
        if not records:
            return
        attempts_max = self.settings.send_attempts_max

        async def attempt() -> dict[str, int]:
            return await send_records(producer, records, on_first_ack=on_first_ack)

        try:
            sizes = await retried(
                attempt,
                failure=f"could not {what}",
                attempts_max=attempts_max,
                errors=(Exception,),
            )
        except Exception as error:
            stop_worker(
                EXIT_BROKER_GONE,
                f"could not {what} after {attempts_max} attempts ({error!r}); stopping "
                "without acknowledging the batch",
            )
        prefix = len(self.settings.topic_prefix)
        for topic, size in sizes.items():
            WRITTEN_BYTES.labels(topic[prefix:]).inc(size)

    async def _acknowledge(
        self, batch: Mapping[TopicPartition, list[ConsumerRecord[Any, Any]]]
    ) -> None:
        """Step 6. A failed offset commit (a rebalance under way) only means the next owner
        reads these records again and answers them from their outcomes."""
        consumer = self.consumer
        assert consumer is not None
        offsets = {tp: records[-1].offset + 1 for tp, records in batch.items() if records}
        if not offsets:
            return
        try:
            await consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in offsets.items()})
        except Exception as error:
            logger.warning("could not acknowledge input offsets (%s); they will be re-read", error)
            return
        for tp, offset in offsets.items():
            self.progress.acknowledged(tp, offset)


class _Listener(ConsumerRebalanceListener):
    """Partitions move only between batches; a failure here stops the worker, since aiokafka
    would log it and go on fetching partitions that were never restored."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        try:
            await self.writer.release(set(revoked))
        except Exception:
            stop_worker(EXIT_BUG, "failed to give partitions up")

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        try:
            await self.writer.acquire(set(assigned))
        except Exception:
            stop_worker(EXIT_BROKER_GONE, "failed to restore the assigned partitions")


class _Overlay:
    """A partition's state as the writer last decided it: read from the store once per key,
    then kept as the structs `decide` returned, within a batch (where the store does not have
    its earlier pieces yet) and across batches (`trim`). While the writer owns the partition
    no one else changes it. The one change made around the overlay, a snapshot's compaction,
    touches only answered outcomes, which `trim` drops before the next batch reads any."""

    def __init__(self, store: PartitionStore) -> None:
        self.store = store
        self.accounts: dict[str, AccountState | None] = {}
        self.outcomes: dict[str, Outcome | None] = {}
        self.head = store.head

    def decide(
        self, inputs: Sequence[Incoming], is_here: Callable[[str], bool], rules: Rules
    ) -> Decision:
        return decide(_Get(self._account), _Get(self.outcome), inputs, is_here, self.head, rules)

    def take(self, decision: Decision) -> None:
        self.accounts.update(decision.accounts)
        self.outcomes.update(decision.outcomes)
        self.head = decision.head

    def trim(self, accounts_max: int) -> None:
        """Between batches, when all it holds is stored: keep the outcomes of transfers that
        wait for their legs (the others are answered, and seldom asked for again), and
        start afresh past a bound."""
        if len(self.accounts) > accounts_max:
            self.accounts.clear()
        waiting: dict[str, Outcome | None] = {
            k: o for k, o in self.outcomes.items() if o is not None and o.result is None
        }
        self.outcomes = waiting if len(waiting) <= OUTCOMES_KEPT_MAX else {}

    def _account(self, name: str) -> AccountState | None:
        if name not in self.accounts:
            raw = self.store.account(name)
            self.accounts[name] = None if raw is None else from_json(raw, AccountState)
        return self.accounts[name]

    def outcome(self, key: str) -> Outcome | None:
        if key not in self.outcomes:
            self.outcomes[key] = stored_outcome(self.store, key)
        return self.outcomes[key]


def stored_outcome(store: PartitionStore, key: str) -> Outcome | None:
    """The outcome under `key` as the store has it (committed), whole or compact."""
    stored = store.outcome(key)
    if stored is None:
        return None
    if stored.compact:
        return outcome_from_compact(key, stored.value)
    return from_json(stored.value, Outcome)


V = TypeVar("V")


class _Get(Generic[V]):
    """A store read as `decide` reads its state: `get(key)`, None when absent."""

    def __init__(self, read: Callable[[str], V | None]) -> None:
        self.get = read


def _compacted(
    key: str, whole: bytes, before_ms: int, acknowledged: Mapping[tuple[str, int], int]
) -> bytes | None:
    """`core.compacted` of a stored whole outcome, for `PartitionLog.snapshot`."""
    return compacted(key, from_json(whole, Outcome), before_ms, acknowledged)


@contextlib.contextmanager
def pause_while_writing(
    consumer: AIOKafkaConsumer,
    batch: Mapping[TopicPartition, list[ConsumerRecord[Any, Any]]],
    embedded: bool,
) -> Iterator[None]:
    """On the embedded broker, when the ledger is nearly idle (a batch of a few records),
    pause the writer's partitions while `batch` is written (the block), then resume those
    still assigned.

    A fetch sent while the batch is written would be on the broker before the legs the
    batch sends to this writer's own partitions, and the embedded broker does not answer a
    waiting fetch when data arrives: it would see them only at its next look, half its wait
    or more later (`LEDGER_FETCH_WAIT_MS`). Fetching again once they are sent reads them at
    once, so a transfer across partitions is answered a few ms after one within. Under
    load the next fetch is worth more sent early, and Apache Kafka answers a waiting fetch
    as soon as data arrives: both go on fetching meanwhile.
    """
    if not embedded or sum(map(len, batch.values())) > NEARLY_IDLE_RECORDS_MAX:
        yield
        return
    paused: frozenset[TopicPartition] = consumer.assignment()
    consumer.pause(*paused)  # nothing is buffered: `getmany` took all it had
    try:
        yield
    finally:  # a partition revoked meanwhile is no longer this consumer's to resume
        consumer.resume(*(paused & consumer.assignment()))


def _serialized(decision: Decision) -> Changes:
    return Changes(
        {name: to_json(state) for name, state in decision.accounts.items()},
        {key: to_json(outcome) for key, outcome in decision.outcomes.items()},
        decision.head,
    )


def _outbox(number: int, decision: Decision) -> Outbox:
    return Outbox(
        journal=[(number, event) for event in decision.journal],
        results=list(decision.results),
        legs=list(decision.legs),
        dead_letters=[_refused_letter(item, reason) for item, reason in decision.refused],
        receipts=[(number, receipt) for receipt in decision.receipts],
        forwards=list(decision.forwards),
    )


def _by_partition(
    batch: Mapping[TopicPartition, list[ConsumerRecord[Any, Any]]],
) -> dict[int, list[ConsumerRecord[Any, Any]]]:
    groups: dict[int, list[ConsumerRecord[Any, Any]]] = defaultdict(list)
    for tp, records in sorted(batch.items(), key=lambda item: (item[0].partition, item[0].topic)):
        groups[tp.partition].extend(records)
    return groups


def _record(record: ConsumerRecord[Any, Any], legs_topic: str) -> Record:
    return Record(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timestamp_ms=record.timestamp,
        key=record.key,
        value=record.value,
        is_leg=record.topic == legs_topic,
    )


def _refused_letter(item: Incoming, reason: str) -> DeadLetter:
    """A leg `decide` refused (forged, or not matching its transfer), as a dead letter."""
    topic, partition, offset, _ = [*item.origin.split("/"), "", "", ""][:4]
    record = Record(
        topic=topic,
        partition=int(partition or -1),
        offset=int(offset or -1),
        timestamp_ms=item.timestamp_ms,
        key=None,
        value=to_json(item.message),
        is_leg=True,
    )
    return DeadLetter(record, reason)


def _count_results(outbox: Outbox) -> None:
    """Count a batch's results, once per label set."""
    counted = collections.Counter(
        (
            reply.result.type if reply.result.type in COMMAND_TYPES else "unknown",
            reply.result.status,
            reply.result.code or "",
        )
        for reply in outbox.results
    )
    for (kind, status, code), count in counted.items():
        RESULTS.labels(kind, status, code).inc(count)


def _restore_progress(number: int) -> RestoreProgress:
    """How partition `number`'s restore shows in the metrics, as it reads the state log."""
    left = RESTORE_LEFT.labels(str(number))

    def progress(records: int, remaining: int) -> None:
        RESTORED_RECORDS.inc(records)
        left.set(remaining)

    return progress


def stop_worker(code: int, message: str) -> NoReturn:
    """Exit at once, acknowledging nothing: the batch is read again by whoever comes next."""
    logger.critical(message, exc_info=True)
    logging.shutdown()
    os._exit(code)
