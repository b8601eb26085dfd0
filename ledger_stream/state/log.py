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
a void value over a valid one. Instead the owner writes a snapshot now and then: the whole
state as of one offset, in `snapshot` records fenced like commits, the last of them marking
it complete. Every record names the latest complete snapshot its writer knew, so a restore
into an empty store reads from there rather than from offset 0, and the log before the
snapshot that came before it may be deleted.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Literal, TypeAlias

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from ledger_stream.errors import LedgerError
from ledger_stream.kafka.reading import read_range, true_ends
from ledger_stream.messages import JournalHead, from_builtins, to_json
from ledger_stream.state.store import Changes, PartitionStore, Position, SnapshotMark, digest

logger = logging.getLogger(__name__)

APPEND_ATTEMPTS_MAX = 20  # tries to land a claim or a commit at the end it read
APPLY_RECORDS_MAX = 1000  # records applied per local write batch while restoring
SNAPSHOT_RECORD_BYTES = 1024 * 1024  # state carried by one snapshot record
SNAPSHOT_SCAN_MAX = 1000  # records read back from the end to find the latest snapshot

# A part of a snapshot: outcomes archived and made compact, or a record of it written.
Part: TypeAlias = Literal["archived", "written"]

# Appends one record to a state partition and returns the offset it landed at.
Append = Callable[[int, bytes], Awaitable[int]]
# Stores compact outcomes (by key) in a partition of the outcomes topic; returns once acked.
Archive = Callable[[int, dict[str, bytes]], Awaitable[None]]
# Told, as a restore reads the log, how many records it has just read and how many remain.
RestoreProgress = Callable[[int, int], None]


class Fenced(LedgerError):
    """Another writer claimed the partition: this one must stop without sending outputs."""


class LogTrimmed(Fenced):
    """The log's start was deleted past where this writer was reading: another writer owns
    the partition and has snapshotted it since."""


# Bytes of a commit record besides its keys and values: kind, expect, writer, head, braces.
_RECORD_OVERHEAD_BYTES_MAX = 1024


def commit_bytes_max(changes: Changes) -> int:
    """An upper bound of the size `encode` gives `changes`, without encoding them: keys are
    identifiers (nothing to escape), values are JSON already."""
    items = (*changes.accounts.items(), *changes.outcomes.items())
    return _RECORD_OVERHEAD_BYTES_MAX + sum(len(key) + len(value) + 4 for key, value in items)


def encode(
    kind: str,
    expect: int,
    writer: str,
    changes: Changes | None = None,
    marks: Mapping[str, int | bool] | None = None,
) -> bytes:
    """A `StateRecord` as JSON, built from the already serialized account and outcome values;
    `marks` are its snapshot fields (`snapshot`, `base`, `last`)."""
    parts = [b'{"kind":', orjson.dumps(kind), b',"expect":', str(expect).encode()]
    parts += [b',"writer":', orjson.dumps(writer)]
    for name, mark in (marks or {}).items():
        parts += [b',"', name.encode(), b'":', orjson.dumps(mark)]
    if changes is not None:
        if changes.head is not None:
            parts += [b',"head":', to_json(changes.head)]
        for name, values in (("accounts", changes.accounts), ("outcomes", changes.outcomes)):
            items = b",".join(orjson.dumps(key) + b":" + value for key, value in values.items())
            parts += [b',"', name.encode(), b'":{', items, b"}"]
    parts.append(b"}")
    return b"".join(parts)


@dataclass
class SnapshotFigures:
    """What one snapshot holds, for the log line and the sizing figures in the README."""

    base: int = 0
    records: int = 0
    size_bytes: int = 0
    accounts: int = 0
    account_bytes: int = 0
    outcomes: int = 0  # whole, inside their window
    outcome_bytes: int = 0
    archived: int = 0  # made compact and stored in the outcomes topic now
    archived_bytes: int = 0

    def __str__(self) -> str:
        def each(size: int, count: int) -> str:
            return f"{size / count:.0f} B each" if count else "none"

        return (
            f"snapshot at state offset {self.base}: {self.records} records, "
            f"{self.size_bytes:,} bytes; {self.accounts:,} accounts "
            f"({each(self.account_bytes, self.accounts)}), {self.outcomes:,} whole outcomes "
            f"({each(self.outcome_bytes, self.outcomes)}); {self.archived:,} outcomes made "
            f"compact and archived ({each(self.archived_bytes, self.archived)})"
        )


@dataclass
class _Read:
    """What catching up over a stretch of the log found."""

    changes: Changes
    others: int = 0  # valid records of other writers
    ours: int = 0  # valid records of this writer
    ours_at: int = -1  # offset of the last of them
    void: int = 0
    snapshot_bytes: dict[int, int] = field(default_factory=dict)  # by base, valid records


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
        outcomes_topic: str,
    ) -> None:
        """`reader` may serve the logs of several partitions (reads take turns);
        `outcomes_topic` holds the compact outcomes its snapshots archived."""
        self.tp = TopicPartition(topic, partition)
        self.archive_tp = TopicPartition(outcomes_topic, partition)
        self.partition = partition
        self.store = store
        self.writer = writer
        self.reader = reader
        self.append = append
        self.since_snapshot_bytes = 0  # state log read or written since the latest snapshot

    async def restore(self, progress: RestoreProgress | None = None) -> None:
        """Bring the local store to the true end of the log, then claim the partition. An empty
        store starts at the latest complete snapshot. `progress` hears how far the read is,
        every `APPLY_RECORDS_MAX` records."""
        end = (await true_ends(self.reader, [self.tp]))[self.tp]
        start = (await self.reader.beginning_offsets([self.tp]))[self.tp]
        await self._check_local(start, end)
        begin = self.store.position.next_offset
        if begin == 0 and end > 0:
            begin = await self._snapshot_start(start, end)
            if progress is not None:
                progress(0, end - begin)  # before the archive, which may take a while too
            archived = await self._restore_archive()
            logger.info(
                "partition %d: restoring from state offset %d (%s), after %d compact outcomes",
                self.partition,
                begin,
                "a snapshot" if begin > start else "the log start",
                archived,
            )
        caught_up = await self._catch_up(begin, end, progress)
        logger.info(
            "partition %d: state restored to offset %d (%d void records skipped)",
            self.partition,
            end,
            caught_up.void,
        )
        for _ in range(APPEND_ATTEMPTS_MAX):
            expect = self.store.position.next_offset
            value = encode("claim", expect, self.writer, marks=self._marks())
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
        marks = self._marks()

        def at(expect: int) -> bytes:
            return encode("commit", expect, self.writer, changes, marks)

        await self._land(at, changes)

    def snapshot_due(self, bytes_min: int) -> bool:
        """Whether the log has grown, since the latest snapshot, by at least `bytes_min` and
        by the snapshot's own size (so snapshots take at most half of what is written)."""
        mark = self.store.snapshot
        return self.since_snapshot_bytes >= max(bytes_min, mark.size_bytes if mark else 0)

    async def snapshot(
        self,
        compact: Callable[[str, bytes], bytes | None],
        archive: Archive,
        between_parts: Callable[[Part], Awaitable[None]],
    ) -> SnapshotFigures:
        """First hand the outcomes that `compact(key, outcome)` makes compact (it gives
        their compact form, or None to keep one whole) to `archive`, which returns once they
        are stored, and replace them locally with their compact form; then write the
        accounts and the whole outcomes to the log, in records of about
        `SNAPSHOT_RECORD_BYTES`, and an empty `last` record that completes the snapshot.
        Both steps go about `SNAPSHOT_RECORD_BYTES` at a time, so what the snapshot holds in
        memory does not grow with the partition, and `between_parts` runs after each part,
        told which it was ("archived" or "written"): the writer commits batches there. Each
        record holds its keys as they are when it is written (`PartitionStore.items`), so
        the snapshot's records and the commits between them, applied in log order from the
        first one (the base), give the state as of the log's end, whatever those commits
        changed."""
        previous = self.store.snapshot
        figures = SnapshotFigures()

        async def make_compact(archived: dict[str, bytes]) -> None:
            # In the archive first, so a compact outcome is never only local. The position
            # does not move: a crash that loses this local write loses nothing.
            await archive(self.partition, archived)
            self.store.apply(Changes({}, {}, compact=archived), self.store.position)

        archived: dict[str, bytes] = {}
        pending = 0
        for key, value in self.store.items("outcomes"):
            smaller = compact(key, value)
            if smaller is None:
                continue
            archived[key] = smaller
            figures.archived += 1
            figures.archived_bytes += len(smaller)
            pending += len(key) + len(smaller)
            if pending >= SNAPSHOT_RECORD_BYTES:
                await make_compact(archived)
                await between_parts("archived")
                archived, pending = {}, 0
        if archived:
            await make_compact(archived)
            await between_parts("archived")
        base: int | None = None

        async def write(changes: Changes, local: Changes | None = None, last: bool = False) -> None:
            nonlocal base

            def at(expect: int) -> bytes:
                marks: dict[str, int | bool] = {"base": expect if base is None else base}
                if last:
                    marks["last"] = True
                if previous is not None:
                    marks["snapshot"] = previous.base
                return encode("snapshot", expect, self.writer, changes, marks)

            landed, size = await self._land(at, local or Changes({}, {}))
            base = landed if base is None else base
            figures.records += 1
            figures.size_bytes += size

        changes, pending = Changes({}, {}, self.store.head), 0
        for table, key, value in chain(
            (("accounts", key, value) for key, value in self.store.items("accounts")),
            (("outcomes", key, value) for key, value in self.store.items("outcomes")),
        ):
            getattr(changes, table)[key] = value
            if table == "accounts":
                figures.accounts += 1
                figures.account_bytes += len(value)
            else:
                figures.outcomes += 1
                figures.outcome_bytes += len(value)
            pending += len(key) + len(value) + 4
            if pending >= SNAPSHOT_RECORD_BYTES:
                await write(changes)
                await between_parts("written")
                changes, pending = Changes({}, {}), 0
        if changes.accounts or changes.outcomes or changes.head is not None:
            await write(changes)
            await between_parts("written")
        assert base is not None
        figures.base = base
        done = Changes({}, {}, snapshot=SnapshotMark(base, figures.size_bytes))
        await write(Changes({}, {}), done, last=True)
        self.since_snapshot_bytes = 0
        return figures

    def _marks(self) -> dict[str, int | bool]:
        mark = self.store.snapshot
        return {} if mark is None else {"snapshot": mark.base}

    async def _land(self, value_at: Callable[[int], bytes], changes: Changes) -> tuple[int, int]:
        """Append the record `value_at(expect)` where this writer's log ends, and apply
        `changes` locally with it: the offset it landed at and its size. Raise `Fenced` when
        another writer has claimed the partition since."""
        for _ in range(APPEND_ATTEMPTS_MAX):
            expect = self.store.position.next_offset
            value = value_at(expect)
            landed = await self.append(self.partition, value)
            if landed == expect:
                self.store.apply(changes, Position(landed + 1, digest(value)))
                self.since_snapshot_bytes += len(value)
                return landed, len(value)
            read = await self._catch_up(expect, landed + 1)
            if read.others:
                raise Fenced(
                    f"partition {self.partition} was claimed by another writer; this "
                    f"writer's record at state offset {landed} is void"
                )
            if read.ours:
                # An earlier attempt landed where it should (its ack was lost); reading it
                # back applied it.
                return read.ours_at, len(value)
            logger.warning(
                "partition %d: record landed at %d after %d void record(s); writing it again",
                self.partition,
                landed,
                read.void,
            )
        raise Fenced(
            f"partition {self.partition}: no record landed at the end in "
            f"{APPEND_ATTEMPTS_MAX} attempts; giving the partition up"
        )

    async def _snapshot_start(self, start: int, end: int) -> int:
        """Where an empty store starts reading: the base of the latest complete snapshot, as
        the last valid record names it, or the log start when there is none."""
        for offset in range(end - 1, max(start, end - SNAPSHOT_SCAN_MAX) - 1, -1):
            data = _parsed(await self._read_at(offset))
            if data is None or data.get("expect") != offset:
                continue  # void
            base = data["base"] if data.get("last") else data.get("snapshot")
            if base is None or base < start:
                break
            return int(base)
        if start > 0:
            raise LedgerError(
                f"{self.tp.topic}-{self.partition} starts at offset {start} (records before it "
                "were deleted) and names no complete snapshot from there on: its state cannot "
                "be restored. Restore the topic from a backup."
            )
        return start

    async def _restore_archive(self) -> int:
        """Put every compact outcome of the partition's archive into an empty store. The
        values never change, so any copy of a key is as good as the last."""
        tp = self.archive_tp
        end = (await true_ends(self.reader, [tp]))[tp]
        start = (await self.reader.beginning_offsets([tp]))[tp]
        count, position = 0, self.store.position
        async for records in read_range(self.reader, {tp: start}, {tp: end}):
            compact = {r.key.decode(): r.value for r in records if r.key and r.value}
            self.store.apply(Changes({}, {}, compact=compact), position)
            count += len(compact)
        return count

    async def _read_at(self, offset: int) -> bytes | None:
        """The value of the record at `offset`, or None when there is none."""
        async for records in read_range(self.reader, {self.tp: offset}, {self.tp: offset + 1}):
            for record in records:
                return record.value or b""
        return None

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
        value = await self._read_at(last)
        if value is None or digest(value) != position.last_digest:
            self.store.wipe(f"the record at offset {last} is not the one it applied")

    async def _catch_up(
        self, start: int, end: int, progress: RestoreProgress | None = None
    ) -> _Read:
        """Apply the valid records in [start, end) to the local store, in order, telling
        `progress` after each local write. The state log has no gaps (never compacted, no
        transactions), so a gap means its start was deleted while this reader was behind it
        (by the owner, after a snapshot): raise `LogTrimmed` rather than go on from the new
        start, which would miss what was only in the deleted records and in the outcomes
        topic."""
        read = _Read(Changes({}, {}))
        position = self.store.position
        pending = 0
        expected = start
        if progress is not None:
            progress(0, end - start)
        async for records in read_range(self.reader, {self.tp: start}, {self.tp: end}):
            for record in records:
                if record.offset != expected:
                    self.store.apply(read.changes, position)
                    raise LogTrimmed(
                        f"{self.tp.topic}-{self.partition}: read offset {record.offset} where "
                        f"{expected} was due: the records before were deleted after a snapshot "
                        "by another owner; restore again (an empty store restores from the "
                        "latest snapshot)"
                    )
                expected += 1
                value = record.value or b""
                self._read_one(record.offset, value, read)
                position = Position(record.offset + 1, digest(value))
                pending += 1
                if pending >= APPLY_RECORDS_MAX:
                    self.store.apply(read.changes, position)
                    if progress is not None:
                        progress(pending, end - expected)
                    read.changes, pending = Changes({}, {}), 0
        self.store.apply(read.changes, position)
        if progress is not None:
            progress(pending, end - expected)
        return read

    def _read_one(self, offset: int, value: bytes, read: _Read) -> None:
        self.since_snapshot_bytes += len(value)
        data = _parsed(value)
        if data is None:
            logger.warning(
                "partition %d: unreadable state record at %d skipped", self.partition, offset
            )
            read.void += 1
            return
        if data["expect"] != offset:
            read.void += 1
            return
        if data["writer"] == self.writer:
            read.ours += 1
            read.ours_at = offset
        else:
            read.others += 1
        kind = data["kind"]
        if kind not in ("commit", "snapshot"):
            return
        try:
            accounts = dict(data.get("accounts", {}))
            outcomes = dict(data.get("outcomes", {}))
            head = data.get("head")
            head = None if head is None else from_builtins(head, JournalHead)
            base = int(data["base"]) if kind == "snapshot" else None
        except (TypeError, ValueError, KeyError) as error:
            # A record at its own `expect` is a commit someone made: dropping it could lose
            # money, so stop and say where it is rather than skip it.
            raise LedgerError(
                f"state record at offset {offset} of {self.tp.topic}-{self.partition} is a "
                f"valid {kind} whose body cannot be read ({error}); it was not written by "
                "this version of ledger_stream"
            ) from error
        changes = read.changes
        for name, account in accounts.items():
            changes.accounts[name] = orjson.dumps(account)
        for key, outcome in outcomes.items():
            changes.outcomes[key] = orjson.dumps(outcome)
        if head is not None:
            changes.head = head
        if base is not None:
            # A snapshot's record holds its keys as they were when it was written: applied
            # in log order, with the commits between, it changes nothing a later record
            # does not set again, but outcomes compacted meanwhile (whole wins over compact).
            size = read.snapshot_bytes.get(base, 0) + len(value)
            read.snapshot_bytes[base] = size
            if data.get("last"):
                changes.snapshot = SnapshotMark(base, size)
                self.since_snapshot_bytes = 0


def _parsed(value: bytes | None) -> dict[str, Any] | None:
    """A state record's fields, or None when it is not one."""
    try:
        data = orjson.loads(value or b"")
        if isinstance(data, dict) and {"kind", "expect", "writer"} <= data.keys():
            return data
    except orjson.JSONDecodeError:
        pass
    return None
