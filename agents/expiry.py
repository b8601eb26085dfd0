"""The hold timer: holds with a deadline on the partitions this worker writes, soonest first.

The writer decides an expiry like any other command, by the record time of an `expire_hold`.
This timer only sends that command once the deadline has passed on the worker's clock, with
the record's timestamp set to no earlier than the deadline, so the writer's check passes on
any broker that keeps the producer's timestamps (the default, `CreateTime`). Its command id is
the same for every send of one hold (`expire_command_id`): a second send, from this worker or
from the next owner of the partition, is a repeat and moves nothing.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ledger_stream.messages import IDENTIFIER_CHARS_MAX, Outcome, from_json


def expire_command_id(hold_id: str) -> str:
    """The command id of the expiry of `hold_id` (a digest when the id is too long)."""
    command_id = f"expire:{hold_id}"
    if len(command_id) > IDENTIFIER_CHARS_MAX:
        command_id = f"expire:{hashlib.blake2b(hold_id.encode(), digest_size=16).hexdigest()}"
    return command_id


def expire_command(hold_id: str, account: str) -> dict[str, Any]:
    return {
        "type": "expire_hold",
        "command_id": expire_command_id(hold_id),
        "account": account,
        "hold_id": hold_id,
    }


def pending_deadline(outcome: Outcome) -> int | None:
    """The deadline of the pending hold an outcome holds, if any."""
    hold = outcome.hold
    if hold is None or hold.status != "pending":
        return None
    return hold.deadline_ms


@dataclass
class Deadlines:
    """Per partition, a heap of (deadline in record time, hold id, account)."""

    heaps: dict[int, list[tuple[int, str, str]]] = field(default_factory=dict)

    def track(self, partition: int, outcomes: Iterable[tuple[str, Outcome]]) -> None:
        heap = self.heaps.setdefault(partition, [])
        for _, outcome in outcomes:
            deadline = pending_deadline(outcome)
            if deadline is not None and outcome.result is not None and outcome.hold is not None:
                heapq.heappush(heap, (deadline, outcome.result.command_id, outcome.hold.source))

    def track_stored(self, partition: int, whole: Iterable[tuple[str, bytes]]) -> None:
        """The pending holds among a store's whole outcomes (only those can be pending)."""
        self.heaps.setdefault(partition, [])
        self.track(
            partition,
            ((key, from_json(raw, Outcome)) for key, raw in whole if b'"deadline_ms"' in raw),
        )

    def forget(self, partition: int) -> None:
        self.heaps.pop(partition, None)

    def due(self, now_ms: int) -> list[tuple[int, int, str, str]]:
        """Every (partition, deadline, hold id, account) whose deadline is past, taken out."""
        found = []
        for partition, heap in self.heaps.items():
            while heap and heap[0][0] <= now_ms:
                deadline, hold_id, account = heapq.heappop(heap)
                found.append((partition, deadline, hold_id, account))
        return found
