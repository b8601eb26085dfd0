"""Reading the journal topic back and folding it: balances, the trial balance, checks.

This is how analysts, the demo and the auditor see the books: every journal event,
deduplicated by entry id (re-sent events collapse, as they do under compaction), folded into
balances.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from ledger_stream.kafka.reading import read_topic
from ledger_stream.messages import JournalEvent, from_json


async def read_journal(
    bootstrap_servers: str, topic: str, security: Mapping[str, Any] | None = None
) -> list[JournalEvent]:
    """Every journal event from the log start to the true end of each partition, once each
    (`security`: a secured cluster's `connection_options`).

    Entry ids are unique within a journal partition (a re-sent event goes to the partition
    it went to first), so events are deduplicated by (partition, entry id); the last copy
    read is kept, as compaction would keep it.
    """
    events: dict[tuple[int, str], JournalEvent] = {}
    # read_topic is an async generator (typed as an iterator): close it, and its consumer,
    # even when a record cannot be read.
    reading = read_topic(bootstrap_servers, topic, security=security)
    async with aclosing(reading) as batches:
        async for records in batches:
            for record in records:
                if record.value is not None:
                    event = from_json(record.value, JournalEvent)
                    events[(record.partition, event.entry_id)] = event
    return list(events.values())


def _zeros() -> defaultdict[tuple[str, str], int]:
    return defaultdict(int)


@dataclass
class Books:
    """The fold of a journal. Amounts are keyed by (account, currency)."""

    balances: dict[tuple[str, str], int] = field(default_factory=_zeros)
    events: int = 0
    unbalanced: list[str] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    debits: dict[tuple[str, str], int] = field(default_factory=_zeros)
    credits: dict[tuple[str, str], int] = field(default_factory=_zeros)
    # Reserved by holds not yet resolved (hold_placed less what its resolution released).
    debits_pending: dict[tuple[str, str], int] = field(default_factory=_zeros)
    credits_pending: dict[tuple[str, str], int] = field(default_factory=_zeros)
    # Each account's overdraft limit as its events set it, and the events after which its
    # balance was below it: (account, currency, entry id, balance, floor).
    floors: dict[str, int] = field(default_factory=dict)
    past_floor: list[tuple[str, str, str, int, int]] = field(default_factory=list)

    def balance(self, account: str, currency: str) -> int:
        """Credits less debits: what the account holds (negative for @world once funded)."""
        return self.balances.get((account, currency), 0)

    def totals(self) -> dict[str, int]:
        """Sum of every balance per currency; zero when the books balance."""
        sums: dict[str, int] = defaultdict(int)
        for (_, currency), amount in self.balances.items():
            sums[currency] += amount
        return dict(sums)


def fold(events: Iterable[JournalEvent]) -> Books:
    """Fold events into balances, in the order given. `Books.past_floor` means something
    only when each account's events come in their journal order (by `seq`)."""
    books = Books()
    for event in events:
        books.events += 1
        books.kinds[event.kind] += 1
        if sum(p.debit for p in event.postings) != sum(p.credit for p in event.postings):
            books.unbalanced.append(event.entry_id)
        for posting in event.postings:
            key = (posting.account, event.currency)
            books.balances[key] += posting.credit - posting.debit
            books.debits[key] += posting.debit
            books.credits[key] += posting.credit
        for sign, postings in ((1, event.pending), (-1, event.released)):
            for posting in postings or ():
                key = (posting.account, event.currency)
                books.debits_pending[key] += sign * posting.debit
                books.credits_pending[key] += sign * posting.credit
        if event.overdraft_limit is not None:  # account_opened, limits_set
            books.floors[event.account] = event.overdraft_limit
        for posting in event.postings:
            key = (posting.account, event.currency)
            balance = books.balances[key]
            floor = -books.floors.get(posting.account, 0)
            if not posting.account.startswith("@") and balance < floor:
                books.past_floor.append(
                    (posting.account, event.currency, event.entry_id, balance, floor)
                )
    return books
