"""Is every partition of this worker moving? Input acknowledged so far, per partition, and a
watch that names a partition with input waiting and no progress for `stall_timeout_s`, in a
log line and in the `ledger_partition_stalled` metric."""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import Gauge

logger = logging.getLogger(__name__)

STALLED = Gauge(
    "ledger_partition_stalled",
    "1 while a partition has input waiting and makes no progress",
    ["topic", "partition"],
)
LAG = Gauge(
    "ledger_input_lag_records", "Input records not yet acknowledged", ["topic", "partition"]
)
OWNED = Gauge(
    "ledger_worker_partitions",
    "Input partitions this worker is assigned (none from the start of a rebalance to its end)",
)
WATCH_INTERVAL_S = 1.0


class Progress:
    def __init__(self, stall_timeout_s: float) -> None:
        self.stall_timeout_s = stall_timeout_s
        self.acked: dict[TopicPartition, int] = {}  # next input offset to acknowledge
        self.moved_at: dict[TopicPartition, float] = {}
        self.warned_at: dict[TopicPartition, float] = {}
        self.unassigned_since: float | None = time.monotonic()
        self.unassigned_warned_at = float("-inf")
        # As the rebalance listener says: the consumer's own assignment keeps the partitions
        # revoked at the start of a rebalance until the next assignment arrives.
        self.owned: set[TopicPartition] = set()

    def assigned(self, tps: set[TopicPartition]) -> None:
        self.owned |= tps

    def acknowledged(self, tp: TopicPartition, next_offset: int) -> None:
        self.acked[tp] = next_offset
        self.moved_at[tp] = time.monotonic()

    def forget(self, tp: TopicPartition) -> None:
        """Stop watching a partition given up, and stop exporting its series: its new owner
        exports them (a last value left here would be drawn beside the owner's for good)."""
        self.owned.discard(tp)
        for table in (self.acked, self.moved_at, self.warned_at):
            table.pop(tp, None)
        for gauge in (STALLED, LAG):
            gauge.remove(tp.topic, str(tp.partition))

    async def watch(self, consumer: AIOKafkaConsumer) -> None:
        """Runs until cancelled, looking once a second."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            assigned = consumer.assignment()
            self._look_at_assignment(time.monotonic())
            for tp, acked in list(self.acked.items()):
                highwater = consumer.highwater(tp) if tp in assigned else None
                if highwater is not None:
                    self._look(tp, highwater - acked, time.monotonic())

    def _look(self, tp: TopicPartition, waiting: int, now: float) -> None:
        LAG.labels(tp.topic, str(tp.partition)).set(max(0, waiting))
        if waiting <= 0:
            self.moved_at[tp] = now
        idle_s = now - self.moved_at.get(tp, now)
        stalled = waiting > 0 and idle_s >= self.stall_timeout_s
        STALLED.labels(tp.topic, str(tp.partition)).set(1 if stalled else 0)
        if stalled and now - self.warned_at.get(tp, float("-inf")) >= self.stall_timeout_s:
            self.warned_at[tp] = now
            logger.warning(
                "partition %s-%d stalled: %d records waiting, no progress for %.0f s",
                tp.topic,
                tp.partition,
                waiting,
                idle_s,
            )

    def _look_at_assignment(self, now: float) -> None:
        """A worker with no partitions for long is idle by design (more workers than
        partitions) or waiting on a rebalance that does not finish: say so, either way."""
        OWNED.set(len(self.owned))
        if self.owned:
            self.unassigned_since = None
            return
        if self.unassigned_since is None:
            self.unassigned_since = now
        idle_s = now - self.unassigned_since
        if (
            idle_s >= self.stall_timeout_s
            and now - self.unassigned_warned_at >= self.stall_timeout_s
        ):
            self.unassigned_warned_at = now
            logger.warning(
                "no partitions assigned for %.0f s: more workers than partitions, or the "
                "consumer group cannot finish a rebalance (ledger_worker_partitions is 0)",
                idle_s,
            )
