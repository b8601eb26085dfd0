"""A hand-written in-memory store for one partition's writer: decide, write back.

It does what the writer does around the pure core, without Kafka or RocksDB: it calls
`decide` once with its tables (which `decide` only reads) and the partition's journal head,
and writes `decision.accounts`, `decision.outcomes` and `decision.head` back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ledger_stream.core import Decision, Incoming, Rules, decide
from ledger_stream.messages import AccountState, Command, JournalEvent, JournalHead, Leg, Outcome


@dataclass
class PartitionStore:
    """The tables of one partition's writer."""

    is_local: Callable[[str], bool]
    accounts: dict[str, AccountState] = field(default_factory=dict)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    head: JournalHead = field(default_factory=JournalHead)
    rules: Rules = field(default_factory=Rules)

    def run(self, messages: Sequence[Command | Leg], timestamp_ms: int = 1_000) -> Decision:
        """Decide one batch and write what it changed, as the writer does."""
        batch = [Incoming(message, timestamp_ms) for message in messages]
        decision = decide(self.accounts, self.outcomes, batch, self.is_local, self.head, self.rules)
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
