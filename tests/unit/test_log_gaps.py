"""The state log has no gaps, so a reader that meets one (the log's start deleted after a
snapshot while it was behind) stops rather than go on from the new start. Deleting records
cannot be done on the embedded broker (it has no DeleteRecords), so the records a reader
gets are given here, and the store is a real one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from ledger_stream.state import log as state_log
from ledger_stream.state.log import LogTrimmed, PartitionLog, encode
from ledger_stream.state.store import Changes, PartitionStore

WRITER = "writer-a"


def record(offset: int) -> ConsumerRecord[Any, Any]:
    changes = Changes({f"acct-{offset}": b'{"currency":"USD"}'}, {})
    value = encode("commit", offset, WRITER, changes)
    return ConsumerRecord("state", 0, offset, 0, 0, None, value, None, 0, len(value), [])


def reading(offsets: list[int]) -> Any:
    async def read_range(
        consumer: object, starts: Mapping[TopicPartition, int], ends: Mapping[TopicPartition, int]
    ) -> AsyncIterator[list[ConsumerRecord[Any, Any]]]:
        yield [record(offset) for offset in offsets]

    return read_range


async def unused_append(partition: int, value: bytes) -> int:
    raise AssertionError("nothing is appended here")


@pytest.fixture
def log(tmp_path: Path) -> PartitionLog:
    store = PartitionStore(tmp_path / "store", "gaps")
    return PartitionLog("state", 0, store, WRITER, None, unused_append, "outcomes")


async def test_records_without_a_gap_are_applied(
    log: PartitionLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state_log, "read_range", reading([0, 1, 2]))
    await log._catch_up(0, 3)
    assert sorted(log.store.accounts()) == ["acct-0", "acct-1", "acct-2"]
    assert log.store.position.next_offset == 3


async def test_a_gap_stops_the_reader_with_what_came_before_it_applied(
    log: PartitionLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state_log, "read_range", reading([0, 1, 7, 8]))
    with pytest.raises(LogTrimmed, match="read offset 7 where 2 was due"):
        await log._catch_up(0, 9)
    assert sorted(log.store.accounts()) == ["acct-0", "acct-1"]
    assert log.store.position.next_offset == 2  # a prefix of the log, as ever


async def test_a_log_that_starts_later_than_asked_is_a_gap_too(
    log: PartitionLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state_log, "read_range", reading([5, 6]))
    with pytest.raises(LogTrimmed):
        await log._catch_up(0, 7)
    assert log.store.accounts() == {}
