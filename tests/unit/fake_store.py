"""A hand-written in-memory store for one partition's writer: prefetch, decide, write back.

It does what the writer does around the pure core, without Kafka or RocksDB: it asks the core
which keys a batch reads, maps the keys absent from storage to None, calls `decide` once with
the partition's journal head and writes `decision.accounts`, `decision.outcomes` and
`decision.head` back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from ledger_stream.core import (
    Decision,
    Incoming,
    accounts_to_prefetch,
    decide,
    outcomes_to_prefetch,
)
from ledger_stream.messages import AccountState, Command, JournalEvent, JournalHead, Leg, Outcome


@dataclass
class PartitionStore:
    """The tables of one partition's writer."""

    is_local: Callable[[str], bool]
    accounts: dict[str, AccountState] = field(default_factory=dict)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    head: JournalHead = field(default_factory=JournalHead)

    def prefetch(
        self, messages: Iterable[Command | Leg]
    ) -> tuple[dict[str, AccountState | None], dict[str, Outcome | None]]:
        accounts: dict[str, AccountState | None] = {}
        outcomes: dict[str, Outcome | None] = {}
        for message in messages:
            for name in accounts_to_prefetch(message, self.is_local):
                accounts[name] = self.accounts.get(name)
            for key in outcomes_to_prefetch(message):
                outcomes[key] = self.outcomes.get(key)
        return accounts, outcomes

    def run(self, messages: Sequence[Command | Leg], timestamp_ms: int = 1_000) -> Decision:
        """Decide one batch and write what it changed, as the writer does."""
        accounts, outcomes = self.prefetch(messages)
        batch = [Incoming(message, timestamp_ms) for message in messages]
        decision = decide(accounts, outcomes, batch, self.is_local, self.head)
        self.accounts.update(decision.accounts)
        self.outcomes.update(decision.outcomes)
        self.head = decision.head
        return decision


def event_sum(event: JournalEvent) -> int:
    """Debits minus credits of one journal event: zero when it balances."""
    return sum(posting.debit - posting.credit for posting in event.postings)


def postings_of(event: JournalEvent) -> list[tuple[str, int, int]]:
    """(account, debit, credit) of each posting, for comparing with a table row."""
    return [(posting.account, posting.debit, posting.credit) for posting in event.postings]
