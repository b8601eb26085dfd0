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
