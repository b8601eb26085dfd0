"""Every RocksDB store of a process keeps within one memory budget, however many it opens."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger_stream.state import store as store_module
from ledger_stream.state.readstore import ReadStore
from ledger_stream.state.store import Changes, PartitionStore, Position, memory

BUDGET = 16 * 1024 * 1024


def test_the_writers_and_the_read_stores_share_one_cache_of_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "_memory", None)  # this test's budget, not the process's
    budget = memory(BUDGET)
    writers = [PartitionStore(tmp_path / f"partition-{n}", "ledger") for n in range(3)]
    readers = [ReadStore(tmp_path / "read" / f"partition-{n}", "ledger") for n in range(3)]
    try:
        value = b"x" * 1000
        for n, writer in enumerate(writers):  # 8 MB each: 24 MB in all, past the budget
            accounts = {f"{n}-{i}": value for i in range(8000)}
            writer.apply(Changes(accounts, {}), Position(1, "d"))
            writer.db.flush()
        for n, writer in enumerate(writers):
            for i in range(8000):
                assert writer.account(f"{n}-{i}") == value
        for db in [store.db for store in writers + readers]:
            assert db.property_int_value("rocksdb.block-cache-capacity") == BUDGET
        assert 0 < budget.cache.get_usage() <= BUDGET
    finally:
        for closable in writers + readers:
            closable.close()


def test_the_first_budget_named_holds_until_another_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(store_module, "_memory", None)
    assert memory().budget_bytes == store_module.MEMORY_BYTES_DEFAULT
    named = memory(BUDGET)
    assert memory() is named and memory(BUDGET) is named
    assert memory(2 * BUDGET).budget_bytes == 2 * BUDGET


def test_index_and_filter_blocks_are_held_in_the_budget_not_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bloom filter holds about 10 bits for each key stored: outside the cache (RocksDB's
    default) a store's memory grows with every command id it has answered."""
    monkeypatch.setattr(store_module, "_memory", None)
    memory(BUDGET)
    store = PartitionStore(tmp_path / "partition-0", "ledger")
    try:
        for part in range(6):  # 300,000 compact outcomes, a bloom filter of about 370 KB
            compact = {f"command-{part}-{i}": b"{}" for i in range(50_000)}
            store.apply(Changes({}, {}, compact=compact), Position(part + 1, "d"))
        store.db.flush()
        assert store.outcome("command-5-49999") == (b"{}", True)
        assert store.outcome("command-never-seen") is None
        outside = store.db.property_int_value("rocksdb.estimate-table-readers-mem")
        assert outside is not None and outside < 64 * 1024
    finally:
        store.close()
