"""What a decided batch sends: journal events, results, legs, dead letters, receipts and
commands sent on to another writer (`Decision.forwards`), as records.

Every record stays well under a broker's message size limit: legs for one partition travel in
records of at most `LEGS_PER_RECORD_MAX`, and a dead letter of an oversize record carries its
first `DEAD_LETTER_VALUE_BYTES_MAX` bytes, marked truncated.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

from ledger_stream.core import Incoming, Reply
from ledger_stream.intake import DeadLetter
from ledger_stream.kafka.records import OutRecord
from ledger_stream.messages import JournalEvent, Leg, Receipt, routed_by, to_json
from ledger_stream.partitioning import partition_of
from ledger_stream.topics import TopicNames

LEGS_PER_RECORD_MAX = 500  # a leg is a few hundred bytes: records stay near 150 KiB
DEAD_LETTER_VALUE_BYTES_MAX = 512 * 1024


@dataclass
class Outbox:
    """Everything a batch sends once its state is committed, in the order it was decided."""

    journal: list[tuple[int, JournalEvent]] = field(default_factory=list)
    results: list[Reply] = field(default_factory=list)
    legs: list[Leg] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    receipts: list[tuple[int, Receipt]] = field(default_factory=list)
    forwards: list[Incoming] = field(default_factory=list)

    def extend(self, more: Outbox) -> None:
        self.journal += more.journal
        self.results += more.results
        self.legs += more.legs
        self.dead_letters += more.dead_letters
        self.receipts += more.receipts
        self.forwards += more.forwards

    def records(self, topics: TopicNames, partitions: int) -> Iterator[OutRecord]:
        for partition, event in self.journal:
            yield OutRecord(topics.journal, partition, event.entry_id.encode(), to_json(event))
        for reply in self.results:
            command_id = reply.result.command_id
            target = reply.partition
            if target is None or target >= partitions:  # unnamed or nonexistent: by key
                target = partition_of(command_id, partitions)
            yield OutRecord(topics.results, target, command_id.encode(), to_json(reply.result))
        by_partition: dict[int, list[Leg]] = defaultdict(list)
        for leg in self.legs:
            by_partition[partition_of(leg.account, partitions)].append(leg)
        for partition, legs in by_partition.items():
            for start in range(0, len(legs), LEGS_PER_RECORD_MAX):
                chunk = legs[start : start + LEGS_PER_RECORD_MAX]
                value = to_json(chunk)
                yield OutRecord(topics.legs, partition, chunk[0].account.encode(), value)
        for letter in self.dead_letters:
            yield dead_letter_record(topics.deadletter, letter)
        for partition, receipt in self.receipts:
            key = receipt.invoice_id.encode()
            yield OutRecord(topics.receipts, partition, key, to_json(receipt))
        for forward in self.forwards:
            command = forward.message
            assert not isinstance(command, Leg), "only commands are sent on"
            route = routed_by(command)
            yield OutRecord(
                topics.commands,
                partition_of(route, partitions),
                route.encode(),
                command.model_dump_json(exclude_none=True).encode(),
                timestamp_ms=forward.timestamp_ms,
            )


def dead_letter_record(topic: str, letter: DeadLetter) -> OutRecord:
    """The original key and bytes, with headers naming the source and the error."""
    value, headers = letter.record.value, letter.headers
    if value is not None and len(value) > DEAD_LETTER_VALUE_BYTES_MAX:
        headers = [*headers, ("truncated_from_bytes", str(len(value)).encode())]
        value = value[:DEAD_LETTER_VALUE_BYTES_MAX]
    key = letter.record.key
    if key is not None and len(key) > DEAD_LETTER_VALUE_BYTES_MAX:
        key = key[:DEAD_LETTER_VALUE_BYTES_MAX]
    return OutRecord(topic, 0, key, value, headers)
