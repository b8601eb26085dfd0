"""The writer's decoded accounts between batches: bounded, and read again from the store
once dropped."""

from __future__ import annotations

from pathlib import Path

from agents.writer import _Overlay
from ledger_stream.messages import AccountState, to_json
from ledger_stream.state.store import Changes, PartitionStore, Position


def test_past_its_share_of_the_bound_a_partition_drops_its_accounts_and_reads_them_again(
    tmp_path: Path,
) -> None:
    store = PartitionStore(tmp_path / "partition-0", "ledger")
    try:
        stored = {f"account-{i}": AccountState(currency="EUR", credits_posted=i) for i in range(12)}
        store.apply(Changes({k: to_json(v) for k, v in stored.items()}, {}), Position(1, "d"))
        overlay = _Overlay(store)
        for name in stored:
            overlay._account(name)
        overlay.trim(12)
        assert len(overlay.accounts) == 12  # within the bound: kept
        overlay.trim(11)
        assert overlay.accounts == {}
        assert overlay._account("account-7") == stored["account-7"]
    finally:
        store.close()
