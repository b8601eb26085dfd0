"""Read-your-writes: the seq a read of an account waits for, in a table of fixed size."""

from __future__ import annotations

from agents.freshness import SLOTS, Freshness
from ledger_stream.messages import JournalEvent, Posting


def _deposit(account: str, seq: int) -> JournalEvent:
    return JournalEvent(
        entry_id=f"d-{seq}:0",
        kind="deposit",
        command_id=f"d-{seq}",
        account=account,
        currency="EUR",
        timestamp_ms=0,
        postings=[Posting("@world", debit=1), Posting(account, credit=1)],
        seq=seq,
    )


def test_a_read_waits_for_the_last_event_of_its_account_or_the_claims_floor() -> None:
    seen = Freshness()
    seen.claimed(3, head_seq=10)
    seen.wrote(3, [_deposit("alice", 11), _deposit("bob", 12), _deposit("alice", 13)])
    assert seen.needed(3, "alice") == 13
    assert seen.needed(3, "bob") in (12, 13)  # 13 only if bob shares alice's slot
    assert seen.needed(3, "nobody-wrote-this") >= 10
    seen.wrote(3, [_deposit("alice", 11)])  # a repeat re-sends an older event
    assert seen.needed(3, "alice") == 13
    seen.released(3)
    assert seen.needed(3, "alice") == 0


def test_however_many_accounts_are_written_each_read_waits_for_at_least_its_own_last() -> None:
    """Four times as many accounts as slots: none is ever asked for less than its own last
    event, and the table does not grow."""
    seen = Freshness()
    seen.claimed(0, head_seq=0)
    events = [_deposit(f"account-{i}", seq) for seq, i in enumerate(range(4 * SLOTS), start=1)]
    for start in range(0, len(events), 1000):
        seen.wrote(0, events[start : start + 1000])
    assert all(seen.needed(0, event.account) >= event.seq for event in events)
    assert len(seen.last[0]) == SLOTS
    waits = sorted(seen.needed(0, event.account) for event in events)
    assert waits[len(waits) // 2] < len(events)  # not all pushed to the last event written
