"""The state log: how a writer commits a partition's state atomically, how a new owner
restores it, and how a writer that lost its partition is kept from changing it.

A commit is one record (`StateRecord`) on the state topic's partition, so it lands whole or
not at all on any Kafka-compatible broker, with no broker transactions. It names the offset
it expects to land at: the end of the partition as its writer knows it. Offsets serve as
versions:
- a record that landed anywhere but its `expect` is void, for its writer and for recovery;
- a new owner reads the partition to its true end and appends a `claim` there; from then on
  every record of the old owner lands past its own `expect`, so it is void, and the old
  owner, reading back what came in between, finds the claim and stops (`Fenced`);
- a writer whose commit landed late only because of void records in between commits again
  at the new end: void records change nothing, so its decision still holds.
The state topic is never compacted: compaction knows nothing of void records and would keep
a void value over a valid one.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from ledger_stream.errors import LedgerError
from ledger_stream.kafka.reading import read_range, true_ends
from ledger_stream.messages import JournalHead
from ledger_stream.state.store import Changes, PartitionStore, Position, digest

logger = logging.getLogger(__name__)

APPEND_ATTEMPTS_MAX = 20  # tries to land a claim or a commit at the end it read
APPLY_RECORDS_MAX = 1000  # records applied per local write batch while restoring

# Appends one record to a state partition and returns the offset it landed at.
Append = Callable[[int, bytes], Awaitable[int]]


class Fenced(LedgerError):
    """Another writer claimed the partition: this one must stop without sending outputs."""


# Bytes of a commit record besides its keys and values: kind, expect, writer, head, braces.
_RECORD_OVERHEAD_BYTES_MAX = 1024


def commit_bytes_max(changes: Changes) -> int:
    """An upper bound of the size `encode` gives `changes`, without encoding them: keys are
    identifiers (nothing to escape), values are JSON already."""
    items = (*changes.accounts.items(), *changes.outcomes.items())
    return _RECORD_OVERHEAD_BYTES_MAX + sum(len(key) + len(value) + 4 for key, value in items)


def encode(kind: str, expect: int, writer: str, changes: Changes | None = None) -> bytes:
    """A `StateRecord` as JSON, built from the already serialized account and outcome values."""
    parts = [b'{"kind":', orjson.dumps(kind), b',"expect":', str(expect).encode()]
    parts += [b',"writer":', orjson.dumps(writer)]
    if changes is not None:
        if changes.head is not None:
            parts += [b',"head":', changes.head.model_dump_json().encode()]
        for name, values in (("accounts", changes.accounts), ("outcomes", changes.outcomes)):
            items = b",".join(orjson.dumps(key) + b":" + value for key, value in values.items())
            parts += [b',"', name.encode(), b'":{', items, b"}"]
    parts.append(b"}")
    return b"".join(parts)


@dataclass
class _Read:
    """What catching up over a stretch of the log found."""

    changes: Changes
    others: int = 0  # valid records of other writers
    ours: int = 0  # valid records of this writer
    void: int = 0


class PartitionLog:
    """One partition's state log as its writer sees it: the local store, and the protocol
    that keeps the store, the log and the other writers in step."""

    def __init__(
        self,
        topic: str,
        partition: int,
        store: PartitionStore,
        writer: str,
        reader: AIOKafkaConsumer,
        append: Append,
    ) -> None:
        """`reader` may serve the logs of several partitions (reads take turns)."""
        self.tp = TopicPartition(topic, partition)
        self.partition = partition
        self.store = store
        self.writer = writer
        self.reader = reader
        self.append = append

    async def restore(self) -> None:
        """Bring the local store to the true end of the log, then claim the partition."""
        end = (await true_ends(self.reader, [self.tp]))[self.tp]
        start = (await self.reader.beginning_offsets([self.tp]))[self.tp]
        await self._check_local(start, end)
        caught_up = await self._catch_up(self.store.position.next_offset, end)
        logger.info(
            "partition %d: state restored to offset %d (%d void records skipped)",
            self.partition,
            end,
            caught_up.void,
        )
        for _ in range(APPEND_ATTEMPTS_MAX):
            expect = self.store.position.next_offset
            value = encode("claim", expect, self.writer)
            landed = await self.append(self.partition, value)
            if landed == expect:
                self.store.apply(Changes({}, {}), Position(landed + 1, digest(value)))
                logger.info("partition %d: claimed at state offset %d", self.partition, landed)
                return
            # Someone wrote while we read (the old owner finishing a batch): read on.
            await self._catch_up(expect, landed + 1)
        raise LedgerError(
            f"could not claim partition {self.partition} of {self.tp.topic} in "
            f"{APPEND_ATTEMPTS_MAX} attempts: other writers keep appending to it"
        )

    async def commit(self, changes: Changes) -> None:
        """Append `changes` where this writer's log ends and apply them locally, or raise
        `Fenced` when another writer has claimed the partition since."""
        for _ in range(APPEND_ATTEMPTS_MAX):
            expect = self.store.position.next_offset
            value = encode("commit", expect, self.writer, changes)
            landed = await self.append(self.partition, value)
            if landed == expect:
                self.store.apply(changes, Position(landed + 1, digest(value)))
                return
            read = await self._catch_up(expect, landed + 1)
            if read.others:
                raise Fenced(
                    f"partition {self.partition} was claimed by another writer; this "
                    f"writer's commit at state offset {landed} is void"
                )
            if read.ours:
                return  # an earlier attempt landed where it should (its ack was lost)
            logger.warning(
                "partition %d: commit landed at %d after %d void record(s); committing again",
                self.partition,
                landed,
                read.void,
            )
        raise Fenced(
            f"partition {self.partition}: no commit landed at the end in "
            f"{APPEND_ATTEMPTS_MAX} attempts; giving the partition up"
        )

    async def _check_local(self, start: int, end: int) -> None:
        """Wipe the local store when it is not a prefix of this log."""
        position = self.store.position
        if position.next_offset == 0:
            return
        if position.next_offset > end:
            self.store.wipe(
                f"it has applied up to {position.next_offset} but the log ends at {end}"
            )
            return
        if position.next_offset - 1 < start:
            self.store.wipe(f"the log now starts at {start}, after what it has applied")
            return
        last = position.next_offset - 1
        values = [
            record.value or b""
            async for records in read_range(self.reader, {self.tp: last}, {self.tp: last + 1})
            for record in records
        ]
        if not values or digest(values[0]) != position.last_digest:
            self.store.wipe(f"the record at offset {last} is not the one it applied")

    async def _catch_up(self, start: int, end: int) -> _Read:
        """Apply the valid records in [start, end) to the local store, in order."""
        read = _Read(Changes({}, {}))
        position = self.store.position
        pending = 0
        async for records in read_range(self.reader, {self.tp: start}, {self.tp: end}):
            for record in records:
                value = record.value or b""
                self._read_one(record.offset, value, read)
                position = Position(record.offset + 1, digest(value))
                pending += 1
                if pending >= APPLY_RECORDS_MAX:
                    self.store.apply(read.changes, position)
                    read.changes, pending = Changes({}, {}), 0
        self.store.apply(read.changes, position)
        return read

    def _read_one(self, offset: int, value: bytes, read: _Read) -> None:
        try:
            data = orjson.loads(value)
            kind, expect, writer = data["kind"], data["expect"], data["writer"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            logger.warning(
                "partition %d: unreadable state record at %d skipped", self.partition, offset
            )
            read.void += 1
            return
        if expect != offset:
            read.void += 1
            return
        if writer == self.writer:
            read.ours += 1
        else:
            read.others += 1
        if kind != "commit":
            return
        try:
            accounts = dict(data.get("accounts", {}))
            outcomes = dict(data.get("outcomes", {}))
            head = data.get("head")
            head = None if head is None else JournalHead.model_validate(head)
        except (TypeError, ValueError) as error:
            # A record at its own `expect` is a commit someone made: dropping it could lose
            # money, so stop and say where it is rather than skip it.
            raise LedgerError(
                f"state record at offset {offset} of {self.tp.topic}-{self.partition} is a "
                f"valid commit whose body cannot be read ({error}); it was not written by "
                "this version of ledger_stream"
            ) from error
        changes = read.changes
        for name, account in accounts.items():
            changes.accounts[name] = orjson.dumps(account)
        for key, outcome in outcomes.items():
            changes.outcomes[key] = orjson.dumps(outcome)
        if head is not None:
            changes.head = head
