"""Reading the journal topic back and folding it: balances, the trial balance, checks.

This is how analysts and the demo see the books: every journal event, deduplicated by
entry id (re-sent events collapse, as they do under compaction), folded into balances.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition

from ledger_stream.kafka.transport import true_end_offsets
from ledger_stream.messages import JournalEvent

READ_TIMEOUT_MS = 1000


async def read_journal(bootstrap_servers: str, topic: str) -> list[JournalEvent]:
    """Every journal event from offset 0 to the true end of each partition, once each.

    Entry ids are unique within a journal partition (a re-sent event goes to the partition
    it went to first), so events are deduplicated by (partition, entry id).
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        await consumer.topics()
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        ends = await true_end_offsets(bootstrap_servers, partitions)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        events: dict[tuple[int, str], JournalEvent] = {}
        remaining = {tp for tp in partitions if ends[tp] > 0}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=READ_TIMEOUT_MS)
            for records in batches.values():
                for record in records:
                    if record.value is not None:
                        event = JournalEvent.model_validate_json(record.value)
                        events[(record.partition, event.entry_id)] = event
            remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp]}
        return list(events.values())
    finally:
        await consumer.stop()


@dataclass
class Books:
    """The fold of a journal."""

    balances: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    events: int = 0
    unbalanced: list[str] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=lambda: defaultdict(int))

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
    books = Books()
    for event in events:
        books.events += 1
        books.kinds[event.kind] += 1
        if sum(p.debit for p in event.postings) != sum(p.credit for p in event.postings):
            books.unbalanced.append(event.entry_id)
        for posting in event.postings:
            books.balances[(posting.account, event.currency)] += posting.credit - posting.debit
    return books
