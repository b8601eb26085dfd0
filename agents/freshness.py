"""Read-your-writes: how far the read models of a partition must have folded the journal
before a read of an account is answered.

The writer notes, as it decides, the journal `seq` of the last event that touched each
account; when it claims a partition, the head of the chain it restored (events a previous
owner may have answered but the read models here have not folded). A read of an account
waits until its partition's read models have folded at least the greater of the two. So a
read made after a command's result was returned shows that command, and a read of an
account nobody is writing waits for nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

from ledger_stream.messages import JournalEvent
from ledger_stream.readmodel import accounts_of

# Accounts noted per partition before the ones already folded are dropped.
TOUCHED_KEPT_MAX = 10_000


class Freshness:
    def __init__(self) -> None:
        self.touched: dict[int, dict[str, int]] = {}
        self.floor: dict[int, int] = {}

    def claimed(self, partition: int, head_seq: int) -> None:
        self.floor[partition] = head_seq
        self.touched[partition] = {}

    def released(self, partition: int) -> None:
        self.floor.pop(partition, None)
        self.touched.pop(partition, None)

    def wrote(self, partition: int, events: Iterable[JournalEvent]) -> None:
        touched = self.touched.setdefault(partition, {})
        for event in events:
            assert event.seq is not None
            for account in accounts_of(event):  # a repeat re-sends older events: keep the max
                touched[account] = max(event.seq, touched.get(account, 0))

    def needed(self, partition: int, account: str) -> int:
        """The seq the read models of `partition` must have folded for a read of `account`."""
        touched = self.touched.get(partition, {}).get(account, 0)
        return max(self.floor.get(partition, 0), touched)

    def folded(self, partition: int, seq: int) -> None:
        """Forget what the read models have folded, once there is much of it."""
        touched = self.touched.get(partition)
        if touched is not None and len(touched) > TOUCHED_KEPT_MAX:
            self.touched[partition] = {a: s for a, s in touched.items() if s > seq}
