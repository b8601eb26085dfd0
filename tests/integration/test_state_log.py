"""The state log on the embedded broker, driven through `PartitionLog` itself: claims and
commits land where their writer expects, a writer that lost its partition is fenced, and
recovery rebuilds a store from the valid records only (void, unreadable and duplicated
records change nothing; local state that is not a prefix of the log is wiped first).
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from ledger_stream.kafka.reading import read_topic, reader
from ledger_stream.messages import JournalHead
from ledger_stream.settings import Settings
from ledger_stream.state.log import Fenced, Part, PartitionLog, encode
from ledger_stream.state.store import Changes, PartitionStore, Position
from ledger_stream.topics import TopicNames, ensure_topics

PARTITION = 1
IDENTITY = "state-log-test"  # one identity for every ledger here, so only the log decides
SEQS_MAX = 10  # commits of one test are numbered 1 .. SEQS_MAX - 1

# Records no writer could have written, each unreadable in its own way.
UNREADABLE = [b"\x00\xff not json", b"", b"[]", b'"a string"', b'{"kind":"commit"}']

Held = tuple[dict[str, bytes], dict[str, bytes], JournalHead]


class Appender:
    """Appends to a state topic through a started producer (acks="all"). With `lose_next_ack`
    set, the next record lands twice and the second offset is returned, as when a send is
    retried after its first ack was lost; `before_next` runs once before the next append."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, outcomes_topic: str) -> None:
        self.producer = producer
        self.topic = topic
        self.outcomes_topic = outcomes_topic
        self.lose_next_ack = False
        self.before_next: Callable[[], Awaitable[None]] | None = None

    async def __call__(self, partition: int, value: bytes) -> int:
        if self.before_next is not None:
            before, self.before_next = self.before_next, None
            await before()
        landed = await self._send(partition, value)
        if self.lose_next_ack:
            self.lose_next_ack = False
            landed = await self._send(partition, value)
        return landed

    async def archive(self, partition: int, compact: dict[str, bytes]) -> None:
        """Stores compact outcomes in the outcomes topic, as the writer does."""
        for key, value in compact.items():
            await self.producer.send_and_wait(
                self.outcomes_topic, value, key=key.encode(), partition=partition
            )

    async def _send(self, partition: int, value: bytes) -> int:
        metadata = await self.producer.send_and_wait(self.topic, value, partition=partition)
        return int(metadata.offset)


@asynccontextmanager
async def state_writer(
    settings: Settings, store_dir: Path, writer: str, identity: str = IDENTITY
) -> AsyncIterator[tuple[PartitionLog, Appender]]:
    """A writer of `PARTITION` of the ledger's state log, with its own store, reader and
    producer, all closed or stopped on the way out."""
    names = TopicNames.from_settings(settings)
    topic = names.state
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=0
    )
    consumer = reader(settings.bootstrap_servers)
    store = PartitionStore(store_dir, identity)
    try:
        await producer.start()
        try:
            await consumer.start()
            try:
                appender = Appender(producer, topic, names.outcomes)
                log = PartitionLog(
                    topic, PARTITION, store, writer, consumer, appender, names.outcomes
                )
                yield log, appender
            finally:
                await consumer.stop()
        finally:
            await producer.stop()
    finally:
        store.close()


async def new_ledger(settings: Settings) -> Settings:
    """Another ledger on the same broker: a new prefix, so a new, empty state topic."""
    other = settings.model_copy(update={"topic_prefix": f"t{uuid.uuid4().hex[:12]}."})
    await ensure_topics(other)
    return other


def commit_of(seq: int, *accounts: str) -> Changes:
    """A commit that sets `accounts`, records the outcome of command `seq` and moves the
    journal head to `seq`."""
    account = b'{"currency":"USD","seq":%d}' % seq
    outcome = b'{"fingerprint":"f%d"}' % seq
    return Changes(
        {name: account for name in accounts},
        {f"cmd:{seq}": outcome},
        JournalHead(seq=seq, hash=f"h{seq}"),
    )


def held(store: PartitionStore) -> Held:
    """What a store holds: its accounts, the outcomes of commands 1 .. SEQS_MAX - 1, its head."""
    outcomes = {}
    for seq in range(1, SEQS_MAX):
        stored = store.outcome(f"cmd:{seq}")
        if stored is not None:
            outcomes[f"cmd:{seq}"] = stored.value
    return store.accounts(), outcomes, store.head


def expected(*commits: Changes) -> Held:
    """What a store holds after applying `commits` in order."""
    accounts: dict[str, bytes] = {}
    outcomes: dict[str, bytes] = {}
    head = JournalHead()
    for commit in commits:
        accounts.update(commit.accounts)
        outcomes.update(commit.outcomes)
        head = commit.head or head
    return accounts, outcomes, head


async def state_records(settings: Settings) -> list[tuple[int, str, int, str]]:
    """(offset, kind, expect, writer) of each record of `PARTITION` of the state log."""
    topic = TopicNames.from_settings(settings).state
    found = []
    async for records in read_topic(settings.bootstrap_servers, topic, [PARTITION]):
        for record in records:
            data = orjson.loads(record.value or b"")
            found.append((record.offset, data["kind"], data["expect"], data["writer"]))
    return found


async def restored(settings: Settings, store_dir: Path) -> tuple[Held, Position]:
    """What a new writer with an empty store holds after restoring (and claiming)."""
    async with state_writer(settings, store_dir, "writer-restored") as (log, _):
        await log.restore()
        return held(log.store), log.store.position


async def test_restore_on_an_empty_log_claims_at_0_and_commits_land_one_after_another(
    ledger: Settings, tmp_path: Path
) -> None:
    store_dir = tmp_path / "store"
    commits = [commit_of(1, "alice"), commit_of(2, "bob"), commit_of(3, "alice")]
    async with state_writer(ledger, store_dir, "writer-a") as (log, _):
        await log.restore()
        assert log.store.position.next_offset == 1
        assert held(log.store) == expected()
        for landed, commit in enumerate(commits, start=1):
            await log.commit(commit)
            assert log.store.position.next_offset == landed + 1
            assert held(log.store) == expected(*commits[:landed])
    assert await state_records(ledger) == [
        (0, "claim", 0, "writer-a"),
        (1, "commit", 1, "writer-a"),
        (2, "commit", 2, "writer-a"),
        (3, "commit", 3, "writer-a"),
    ]

    shutil.rmtree(store_dir)
    state, position = await restored(ledger, store_dir)
    assert state == expected(*commits)
    assert state[2] == JournalHead(seq=3, hash="h3")
    assert position.next_offset == 5  # after its own claim at 4


async def test_a_writer_whose_partition_was_claimed_is_fenced_and_its_commit_is_void(
    ledger: Settings, tmp_path: Path
) -> None:
    first, fenced, later = commit_of(1, "alice"), commit_of(2, "mallory"), commit_of(3, "carol")
    async with (
        state_writer(ledger, tmp_path / "a", "writer-a") as (a, _),
        state_writer(ledger, tmp_path / "b", "writer-b") as (b, _),
    ):
        await a.restore()
        await a.commit(first)
        await b.restore()
        assert b.store.position.next_offset == 3
        assert held(b.store) == expected(first)

        with pytest.raises(Fenced):
            await a.commit(fenced)
        assert a.store.account("mallory") is None

        await b.commit(later)
        assert b.store.position.next_offset == 6
        assert held(b.store) == expected(first, later)
    assert await state_records(ledger) == [
        (0, "claim", 0, "writer-a"),
        (1, "commit", 1, "writer-a"),
        (2, "claim", 2, "writer-b"),
        (3, "commit", 2, "writer-a"),  # void: B's claim came in between
        (4, "commit", 3, "writer-b"),  # void: A's void record came in between
        (5, "commit", 5, "writer-b"),
    ]

    state, _ = await restored(ledger, tmp_path / "c")
    assert state == expected(first, later)


async def test_a_claim_that_lands_behind_the_old_owners_last_commit_claims_again_after_it(
    ledger: Settings, tmp_path: Path
) -> None:
    last, fenced, later = commit_of(1, "alice"), commit_of(2, "mallory"), commit_of(3, "bob")
    async with (
        state_writer(ledger, tmp_path / "a", "writer-a") as (a, _),
        state_writer(ledger, tmp_path / "b", "writer-b") as (b, append_b),
    ):
        await a.restore()
        # A commits after B has read the log to its end and before B's claim lands.
        append_b.before_next = lambda: a.commit(last)
        await b.restore()
        assert b.store.position.next_offset == 4
        assert held(b.store) == expected(last)

        with pytest.raises(Fenced):
            await a.commit(fenced)
        await b.commit(later)
        assert held(b.store) == expected(last, later)
    assert await state_records(ledger) == [
        (0, "claim", 0, "writer-a"),
        (1, "commit", 1, "writer-a"),
        (2, "claim", 1, "writer-b"),  # void: A's commit came in between
        (3, "claim", 3, "writer-b"),
        (4, "commit", 2, "writer-a"),  # void: B's claim came in between
        (5, "commit", 4, "writer-b"),  # void: A's void record came in between
        (6, "commit", 6, "writer-b"),
    ]

    state, _ = await restored(ledger, tmp_path / "c")
    assert state == expected(last, later)


async def test_a_commit_late_only_behind_a_void_record_is_committed_again_and_holds(
    ledger: Settings, tmp_path: Path
) -> None:
    commit, stray = commit_of(1, "alice"), commit_of(9, "mallory")
    async with state_writer(ledger, tmp_path / "a", "writer-a") as (log, append):
        await log.restore()
        assert await append(PARTITION, encode("commit", 7, "writer-x", stray)) == 1
        await log.commit(commit)
        assert log.store.position.next_offset == 4
        assert held(log.store) == expected(commit)
    assert await state_records(ledger) == [
        (0, "claim", 0, "writer-a"),
        (1, "commit", 7, "writer-x"),  # void: expected to land elsewhere
        (2, "commit", 1, "writer-a"),  # void: the record above came in between
        (3, "commit", 3, "writer-a"),
    ]

    state, position = await restored(ledger, tmp_path / "b")
    assert state == expected(commit)
    assert position.next_offset == 5


async def test_unreadable_records_are_skipped_by_recovery_not_fatal(
    ledger: Settings, tmp_path: Path
) -> None:
    first, second = commit_of(1, "alice"), commit_of(2, "bob")
    claim_at = len(UNREADABLE)
    async with state_writer(ledger, tmp_path / "a", "writer-a") as (log, append):
        for value in UNREADABLE:
            await append(PARTITION, value)
        await log.restore()
        assert log.store.position.next_offset == claim_at + 1
        await log.commit(first)
        await append(PARTITION, UNREADABLE[0])

    async with state_writer(ledger, tmp_path / "b", "writer-b") as (log, _):
        await log.restore()
        assert held(log.store) == expected(first)
        assert log.store.position.next_offset == claim_at + 4  # past the garbage, its claim
        await log.commit(second)
        assert log.store.position.next_offset == claim_at + 5
        assert held(log.store) == expected(first, second)


async def test_a_store_past_the_end_of_a_new_log_is_wiped_and_rebuilt(
    ledger: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store_dir = tmp_path / "store"
    async with state_writer(ledger, store_dir, "writer-a") as (log, _):
        await log.restore()
        await log.commit(commit_of(1, "alice"))
        await log.commit(commit_of(2, "bob"))

    fresh = await new_ledger(ledger)
    with caplog.at_level(logging.WARNING, logger="ledger_stream.state"):
        async with state_writer(fresh, store_dir, "writer-a") as (log, _):
            await log.restore()
            assert held(log.store) == expected()
            assert log.store.position.next_offset == 1  # claimed at 0 of the new log
    assert "it has applied up to 3 but the log ends at 0" in caplog.text
    assert await state_records(fresh) == [(0, "claim", 0, "writer-a")]


async def test_a_store_whose_last_record_differs_from_the_log_is_wiped_and_rebuilt(
    ledger: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store_dir = tmp_path / "store"
    async with state_writer(ledger, store_dir, "writer-a") as (log, _):
        await log.restore()
        await log.commit(commit_of(1, "alice"))  # applied up to offset 1

    # Another log at least as long, with another record at offset 1.
    other = await new_ledger(ledger)
    theirs = [commit_of(2, "bob"), commit_of(3, "carol")]
    async with state_writer(other, tmp_path / "b", "writer-b") as (log, _):
        await log.restore()
        for commit in theirs:
            await log.commit(commit)

    with caplog.at_level(logging.WARNING, logger="ledger_stream.state"):
        async with state_writer(other, store_dir, "writer-a") as (log, _):
            await log.restore()
            assert held(log.store) == expected(*theirs)  # no alice
            assert log.store.position.next_offset == 4
    assert "the record at offset 1 is not the one it applied" in caplog.text


async def test_a_store_tagged_with_another_identity_is_wiped_when_opened(
    ledger: Settings, tmp_path: Path
) -> None:
    store_dir = tmp_path / "store"
    commit = commit_of(1, "alice")
    async with state_writer(ledger, store_dir, "writer-a") as (log, _):
        await log.restore()
        await log.commit(commit)

    same = PartitionStore(store_dir, IDENTITY)
    try:
        assert held(same) == expected(commit)
        assert same.position.next_offset == 2
    finally:
        same.close()

    other = PartitionStore(store_dir, identity="other")
    try:
        assert held(other) == expected()
        assert other.position == Position()
    finally:
        other.close()

    async with state_writer(ledger, store_dir, "writer-b", identity="other") as (log, _):
        await log.restore()
        assert held(log.store) == expected(commit)
        assert log.store.position.next_offset == 3


async def test_a_commit_whose_ack_was_lost_is_recognised_as_landed_and_applied_once(
    ledger: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = commit_of(1, "alice"), commit_of(2, "bob")
    async with state_writer(ledger, tmp_path / "a", "writer-a") as (log, append):
        await log.restore()
        applied: list[Changes] = []
        apply = log.store.apply

        def counting_apply(changes: Changes, position: Position) -> None:
            if changes.accounts or changes.outcomes or changes.head is not None:
                applied.append(changes)
            apply(changes, position)

        monkeypatch.setattr(log.store, "apply", counting_apply)
        append.lose_next_ack = True
        await log.commit(first)  # lands at 1, and again at 2: the offset it is told
        assert log.store.position.next_offset == 3
        assert applied == [first]
        assert held(log.store) == expected(first)

        await log.commit(second)
        assert log.store.position.next_offset == 4
        assert held(log.store) == expected(first, second)
    assert await state_records(ledger) == [
        (0, "claim", 0, "writer-a"),
        (1, "commit", 1, "writer-a"),  # the first copy: valid, and ours
        (2, "commit", 1, "writer-a"),  # the retried copy: void
        (3, "commit", 3, "writer-a"),
    ]

    state, _ = await restored(ledger, tmp_path / "b")
    assert state == expected(first, second)


# Snapshots: the whole state from one offset on, so an empty store need not read from 0.


async def between_parts(part: Part) -> None:
    return None


def compact_odd(key: str, value: bytes) -> bytes | None:
    """A compaction rule for these tests: the outcomes of odd commands become compact."""
    seq = int(orjson.loads(value)["fingerprint"][1:])
    return b'{"fingerprint":"c%d"}' % seq if seq % 2 else None


class Crash(Exception):
    """The writer dies between two records of a snapshot."""


async def test_an_empty_store_restores_from_the_latest_snapshot_with_its_compacted_outcomes(
    ledger: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store_dir = tmp_path / "store"
    async with state_writer(ledger, store_dir, "writer-a") as (log, appender):
        await log.restore()
        for commit in (commit_of(1, "alice"), commit_of(2, "bob"), commit_of(3, "carol")):
            await log.commit(commit)
        figures = await log.snapshot(compact_odd, appender.archive, between_parts)
        await log.commit(commit_of(4, "alice"))
        live = held(log.store)
    assert (figures.base, figures.accounts, figures.outcomes, figures.archived) == (4, 3, 1, 2)
    # The outcomes of commands 1 and 3 are compact in the live store too.
    assert live[1] == {
        "cmd:1": b'{"fingerprint":"c1"}',
        "cmd:2": b'{"fingerprint":"f2"}',
        "cmd:3": b'{"fingerprint":"c3"}',
        "cmd:4": b'{"fingerprint":"f4"}',
    }
    kinds = [(offset, kind) for offset, kind, _, _ in await state_records(ledger)]
    assert kinds[4:] == [(4, "snapshot"), (5, "snapshot"), (6, "commit")]

    shutil.rmtree(store_dir)
    caplog.set_level(logging.INFO, logger="ledger_stream.state.log")
    state, position = await restored(ledger, store_dir)
    assert state == live
    assert "restoring from state offset 4 (a snapshot)" in caplog.text
    assert position.next_offset == 8  # after its own claim at 7


async def test_commits_between_a_snapshots_records_are_kept_by_a_restore_from_it(
    ledger: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer commits batches between a snapshot's records. Each record holds its keys
    as they are when it is written, so the snapshot and the commits between, read in log
    order, give the live state: a key changed behind the snapshot's progress (alice), one
    changed ahead of it (carol, whose record must not hold its value from before the
    commit), and keys added behind (aaron) and ahead (dave)."""
    monkeypatch.setattr("ledger_stream.state.log.SNAPSHOT_RECORD_BYTES", 1)  # a key a record
    store_dir = tmp_path / "store"
    before = [commit_of(1, "alice"), commit_of(2, "bob"), commit_of(3, "carol")]
    meanwhile = [commit_of(4, "alice", "carol", "aaron", "dave"), commit_of(5, "bob")]
    async with state_writer(ledger, store_dir, "writer-a") as (log, appender):
        await log.restore()
        for commit in before:
            await log.commit(commit)
        to_commit = iter(meanwhile)

        async def commit_a_batch(part: Part) -> None:
            for commit in to_commit:
                await log.commit(commit)
                return

        figures = await log.snapshot(lambda key, value: None, appender.archive, commit_a_batch)
        live = held(log.store)
    assert live == expected(*before, *meanwhile)
    kinds = [kind for _, kind, _, _ in await state_records(ledger)][figures.base :]
    assert kinds[:4] == ["snapshot", "commit", "snapshot", "commit"]
    assert figures.accounts == 4  # alice, then bob, carol and dave: aaron was behind it

    shutil.rmtree(store_dir)
    state, _ = await restored(ledger, store_dir)
    assert state == live


async def test_a_snapshot_archives_a_part_at_a_time_and_makes_a_part_compact_once_stored(
    ledger: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot does not hold a partition's outcomes in memory: it archives them about
    `SNAPSHOT_RECORD_BYTES` at a time, and a part is compact locally only once stored."""
    monkeypatch.setattr("ledger_stream.state.log.SNAPSHOT_RECORD_BYTES", 1)  # an outcome a part
    store_dir = tmp_path / "store"
    commits = [commit_of(seq, "alice") for seq in range(1, 6)]
    parts: list[list[str]] = []
    async with state_writer(ledger, store_dir, "writer-a") as (log, appender):

        async def archive_then_crash(partition: int, compact: dict[str, bytes]) -> None:
            parts.append(sorted(compact))
            if len(parts) == 2:
                raise Crash  # before the second part is stored
            await appender.archive(partition, compact)

        await log.restore()
        for commit in commits:
            await log.commit(commit)
        with pytest.raises(Crash):
            await log.snapshot(compact_odd, archive_then_crash, between_parts)
        assert parts == [["cmd:1"], ["cmd:3"]]
        assert held(log.store)[1] == {
            "cmd:1": b'{"fingerprint":"c1"}',  # stored: compact
            **{f"cmd:{seq}": b'{"fingerprint":"f%d"}' % seq for seq in range(2, 6)},
        }
        ended: list[Part] = []

        async def part_ended(part: Part) -> None:
            ended.append(part)

        figures = await log.snapshot(compact_odd, appender.archive, part_ended)
        live = held(log.store)
    assert (figures.outcomes, figures.archived) == (2, 2)  # cmd:1 was compact already
    # Each part told apart (the writer's crash points): cmd:3 and cmd:5 archived, then a
    # record for alice and one for each whole outcome (cmd:2, cmd:4; the compact ones are
    # in the archive).
    assert ended == ["archived"] * 2 + ["written"] * 3
    assert live[1] == {
        f"cmd:{seq}": b'{"fingerprint":"%s%d"}' % (b"c" if seq % 2 else b"f", seq)
        for seq in range(1, 6)
    }
    shutil.rmtree(store_dir)
    state, _ = await restored(ledger, store_dir)
    assert state == live


async def test_a_snapshot_cut_short_is_ignored_and_a_restore_starts_at_the_one_before(
    ledger: Settings,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("ledger_stream.state.log.SNAPSHOT_RECORD_BYTES", 1)  # a key a record
    store_dir = tmp_path / "store"
    commits = [commit_of(1, "alice"), commit_of(2, "bob"), commit_of(3, "carol")]

    async def crash(part: Part) -> None:
        raise Crash

    async with state_writer(ledger, store_dir, "writer-a") as (log, appender):
        await log.restore()
        await log.commit(commits[0])
        first = await log.snapshot(lambda key, value: None, appender.archive, between_parts)
        await log.commit(commits[1])
        with pytest.raises(Crash):
            await log.snapshot(lambda key, value: None, appender.archive, crash)
        await log.commit(commits[2])  # a writer that went on would still commit here
    assert first.base == 2
    assert first.records == 3  # alice, cmd:1, then the last record

    shutil.rmtree(store_dir)
    caplog.set_level(logging.INFO, logger="ledger_stream.state.log")
    state, _ = await restored(ledger, store_dir)
    assert state == expected(*commits)
    assert "restoring from state offset 2 (a snapshot)" in caplog.text


async def test_a_snapshot_of_a_writer_claimed_meanwhile_is_void_and_fences_it(
    ledger: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ledger_stream.state.log.SNAPSHOT_RECORD_BYTES", 1)
    async with state_writer(ledger, tmp_path / "a", "writer-a") as (old, appender):
        await old.restore()
        await old.commit(commit_of(1, "alice"))

        async def new_owner_claims() -> None:
            async with state_writer(ledger, tmp_path / "b", "writer-b") as (new, _):
                await new.restore()

        appender.before_next = new_owner_claims
        with pytest.raises(Fenced):
            await old.snapshot(lambda key, value: None, appender.archive, between_parts)
    records = await state_records(ledger)
    assert [(kind, offset == expect) for offset, kind, expect, _ in records[2:]] == [
        ("claim", True),
        ("snapshot", False),
    ]
    state, _ = await restored(ledger, tmp_path / "c")
    assert state == expected(commit_of(1, "alice"))
