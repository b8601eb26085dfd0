"""`PartitionStore.items` gives each value as the store holds it when reached, so a snapshot
whose records are written between batches never writes a value older than the store's."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger_stream.state import store as store_module
from ledger_stream.state.store import Changes, PartitionStore, Position


def test_items_read_on_from_the_store_as_written_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "ITEMS_READ_AT_ONCE", 3)  # several reads of the table
    store = PartitionStore(tmp_path / "partition-0", "ledger")
    try:
        store.apply(Changes({f"a{i:02}": b"%d" % i for i in range(10)}, {"o": b"x"}), Position())
        seen = []
        for name, value in store.items("accounts"):
            seen.append((name, value))
            if name == "a03":  # a batch commits: behind, ahead, and new on both sides
                changes = {"a00": b"new", "a05": b"new", "a031": b"added", "a": b"added"}
                store.apply(Changes(changes, {}), Position())
        assert seen == [
            *((f"a{i:02}", b"%d" % i) for i in range(4)),
            ("a031", b"added"),
            ("a04", b"4"),
            ("a05", b"new"),
            *((f"a{i:02}", b"%d" % i) for i in range(6, 10)),
        ]
        assert list(store.items("outcomes")) == [("o", b"x")]
    finally:
        store.close()
